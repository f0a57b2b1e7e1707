"""The scaling experiment: balanced subsets -> pre-train -> fine-tune per point, Tables IV/V, Figures."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus_fixture import make_corpus
from mlflow.tracking import MlflowClient

from cluster.experiment_cli import config_from_args, register
from pipeline.corpus.manifest import CorpusError, load_manifest
from pipeline.corpus.read import read_corpus, read_metadata_table
from pipeline.disfa import DisfaConfig
from pipeline.synth.disfa_world import generate_disfa
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.augment import AugmentConfig
from training.finetune import prepared_folds
from training.finetune_config import FinetuneConfig
from training.init_weights import resolve_init, trained_model
from training.linear_probe import probe_cross_validation
from training.model import ModelConfig
from training.pretrain_config import PretrainConfig
from tune.scaling import run_scaling
from tune.scaling_config import ScalingStudyConfig
from tune.scaling_plan import plan_points

PNG = b"\x89PNG\r\n\x1a\n"
IMAGES, PEOPLE = 64, 8
#: make_corpus(320 images, 40 people): people 0, 5, ..., 35 are validation (4 women, 4 men);
#: the other 32 (16 women, 16 men, 8 images each) are the 256 training images.
TRAIN_IMAGES, TRAIN_PEOPLE, VAL_IMAGES = 256, 32, 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), images=320, identities=40)


@pytest.fixture(scope="module")
def disfa(tmp_path_factory) -> DisfaConfig:
    root = tmp_path_factory.mktemp("disfa")
    world = generate_disfa(str(root / "world"), subjects=6, frames=30, seed=11)
    return DisfaConfig(root=world.out, cache=str(root / "cache"))


def small_config(
    corpus_uri: str, disfa: DisfaConfig, folder: Path, **overrides
) -> ScalingStudyConfig:
    """Thin nets, one epoch of two steps, one fold: the shape of the experiment, not its figures."""
    values = dict(
        corpus=corpus_uri,
        disfa=disfa,
        images=[str(IMAGES)],
        identities=[str(PEOPLE)],
        pretrain=PretrainConfig(
            workers=1,
            cpus_per_worker=0.5,
            batch_size=16,
            lr=0.001,
            model=ModelConfig(width=0.125),
            augment=AugmentConfig(strength=0.5),
            max_epochs=1,
            patience=0,
            batches_per_epoch=2,
            val_batches=2,
            cache_data=True,
            shuffle_buffer=32,
            prefetch_batches=1,
        ),
        finetune=FinetuneConfig(
            val_subjects=1,
            only_folds=[1],
            max_epochs=1,
            batches_per_epoch=2,
            batch_size=16,
            cpus_per_worker=0.5,
            shuffle_buffer=32,
            prefetch_batches=1,
            plots=False,
        ),
        concurrent=2,
        output=str(folder / "out"),
        run_name="exp",
        mlflow_uri=f"sqlite:///{folder / 'mlflow.db'}",
    )
    values.update(overrides)
    return ScalingStudyConfig(**values)


@pytest.fixture(scope="module")
def experiment(ray_local, corpus, disfa, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scaling")
    config = small_config(corpus.uri, disfa, folder)
    return run_scaling(config), config


def point(result, key: str):
    return next(p for p in result.points if p.key == key)


@pytest.mark.slow
def test_each_point_pretrained_on_the_requested_balanced_subset(experiment, corpus):
    result, _ = experiment
    manifest = load_manifest(corpus.uri)
    genders = {r["identity"]: r["gender"] for r in read_metadata_table(corpus.uri).to_pylist()}
    client = MlflowClient(result.tracking_uri)
    for key, axis, size in (
        ("images-64", "images", IMAGES),
        ("identities-8", "identities", PEOPLE),
    ):
        p = point(result, key)
        entry = manifest.subsets[p.subset]
        assert entry.spec[axis] == size and entry.version == 1
        rows = pq.read_table(Path(corpus.uri) / entry.file).to_pylist()
        train = [r for r in rows if r["split"] == "train"]
        people = {r["identity"] for r in train}
        if axis == "images":
            assert len(train) == IMAGES == p.images
            women = sum(genders[r["identity"]] == "female" for r in train)
        else:
            assert len(people) == PEOPLE == p.people
            assert len(train) == 8 * PEOPLE == p.images  # every image of each chosen person
            women = sum(genders[who] == "female" for who in people)
        assert women * 2 == (len(train) if axis == "images" else len(people))
        # Validation is the corpus's whole val split at every point.
        assert sum(r["split"] == "val" for r in rows) == VAL_IMAGES == p.val_images
        # What the pre-training run was given, and what that subset reads back as.
        run = client.get_run(p.pretrain_run_id)
        assert run.data.params["subset"] == p.subset
        assert run.data.tags["corpus.subset"] == p.subset
        assert run.data.tags["facs.scaling.parent_run_id"] == result.mlflow_run_id
        assert read_corpus(corpus.uri, subset=p.subset, split="train").count() == p.images


@pytest.mark.slow
def test_a_parent_run_with_one_finished_child_per_point(experiment):
    result, _ = experiment
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["points"] == "images-64,identities-8"
    children = [
        r
        for r in client.search_runs([parent.info.experiment_id], max_results=50)
        if r.data.tags.get("mlflow.parentRunId") == result.mlflow_run_id
    ]
    assert sorted(r.data.params["point"] for r in children) == ["identities-8", "images-64"]
    for run in children:
        p = point(result, run.data.params["point"])
        assert run.info.status == "FINISHED" and run.info.run_id == p.mlflow_run_id
        assert int(run.data.params["train_images"]) == p.images
        assert int(run.data.params["train_people"]) == p.people
        assert run.data.tags["pretrain_run_id"] == p.pretrain_run_id
        assert run.data.tags["finetune_run_id"] == p.finetune_run_id
        assert run.data.metrics["test_f1_mean_paper8"] == pytest.approx(p.mean("f1"))
        assert 0.0 <= run.data.metrics["test_roc_auc_mean"] <= 1.0
    curve = client.get_metric_history(result.mlflow_run_id, "images_f1_mean_paper8")
    assert [(m.step, m.value) for m in curve] == [
        (IMAGES, pytest.approx(point(result, "images-64").mean("f1")))
    ]
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "report")}
    assert {
        "report/table4.md",
        "report/table4.csv",
        "report/table5.md",
        "report/table5.csv",
        "report/figure3_images.png",
        "report/figure4_people.png",
        "report/scaling.json",
    } <= artifacts


@pytest.mark.slow
def test_every_point_shares_the_protocol_but_its_subset(experiment):
    result, _ = experiment
    client = MlflowClient(result.tracking_uri)
    a, b = result.points

    def differing(run_a: str, run_b: str) -> set[str]:
        pa_, pb_ = client.get_run(run_a).data.params, client.get_run(run_b).data.params
        assert set(pa_) == set(pb_)
        return {k for k in pa_ if pa_[k] != pb_[k]}

    # The pixel mean is measured on each subset's own training rows.
    assert differing(a.pretrain_run_id, b.pretrain_run_id) <= {"subset", "run_name", "pixel_mean"}
    assert "subset" in differing(a.pretrain_run_id, b.pretrain_run_id)
    assert differing(a.finetune_run_id, b.finetune_run_id) <= {
        "pretrained",
        "run_name",
        "init_source",
    }


@pytest.mark.slow
def test_tables_iv_and_v_and_both_figures_are_written(experiment):
    result, _ = experiment
    report = Path(result.report_uri)
    for number, label, key in (("4", "64 images", "images-64"), ("5", "8 people", "identities-8")):
        markdown = (report / f"table{number}.md").read_text()
        lines = {line.split("|")[1].strip(): line for line in markdown.splitlines() if "|" in line}
        assert "53.6" in lines["OpenFace 2.0 (paper)"] and "56.9" in lines["LP-Net (paper)"]
        assert label in lines
        with open(report / f"table{number}.csv", newline="") as handle:
            rows = {row[0]: row[1:] for row in csv.reader(handle)}
        ours = point(result, key)
        assert float(rows[label][-2]) == pytest.approx(100 * ours.mean("f1"))  # Avg (8 AUs)
        assert float(rows[label][-1]) == pytest.approx(100 * ours.mean("f1", paper8=False))
        assert float(rows[label][0]) == pytest.approx(100 * ours.per_au["AU01"]["f1"])
        assert (
            float(rows["LP-Net (paper)"][0]) == 29.9 and float(rows["LP-Net (paper)"][-2]) == 56.9
        )
    for name in ("figure3_images.png", "figure4_people.png"):
        data = (report / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
    summary = json.loads((report / "scaling.json").read_text())
    by_key = {p["key"]: p for p in summary["points"]}
    assert by_key["images-64"]["images"] == IMAGES and by_key["identities-8"]["people"] == PEOPLE
    assert summary["axes"] == {"images": ["images-64"], "identities": ["identities-8"]}
    assert set(by_key["images-64"]["per_au_f1"]) >= {"AU01", "AU26"}
    assert (
        by_key["images-64"]["mlflow_run_ids"]["pretrain"]
        == point(result, "images-64").pretrain_run_id
    )


@pytest.mark.slow
def test_probe_points_are_scored_by_the_linear_probe_of_their_own_checkpoint(
    ray_local, corpus, disfa, tmp_path
):
    config = small_config(
        corpus.uri, disfa, tmp_path, identities=[], point_eval="probe", concurrent=1
    )
    result = run_scaling(config)
    (only,) = result.points
    assert only.finetune_run_id == "" and only.finetune_report == ""
    frames, folds = prepared_folds(replace(config.finetune, disfa=config.disfa))
    again = probe_cross_validation(
        trained_model(resolve_init(only.pretrain_checkpoint)), frames, folds
    )
    assert only.mean("f1") == pytest.approx(again.mean("f1", PAPER_COMPARISON_AUS))
    assert only.mean("roc_auc") == pytest.approx(again.mean("roc_auc", PAPER_COMPARISON_AUS))
    run = MlflowClient(result.tracking_uri).get_run(only.mlflow_run_id)
    assert run.data.tags["facs.scaling.point_eval"] == "probe"
    assert "finetune_run_id" not in run.data.tags
    table = (Path(result.report_uri) / "table4.md").read_text()
    assert "linear probe of the frozen pre-trained features" in table


# -- Before any training ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("axis", "size", "limit"), [("images", 300, TRAIN_IMAGES), ("identities", 34, TRAIN_PEOPLE)]
)
def test_a_size_larger_than_the_corpus_is_refused_before_any_work(
    corpus, tmp_path, axis, size, limit
):
    disfa = DisfaConfig(root=str(tmp_path / "no-disfa-needed"))
    config = small_config(corpus.uri, disfa, tmp_path, **{axis: ["all", str(size)]})
    subsets_before = set(load_manifest(corpus.uri).subsets)
    with pytest.raises(CorpusError, match=f"--{axis} {size} .* at most {limit}"):
        run_scaling(config)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "mlflow.db").exists()
    assert set(load_manifest(corpus.uri).subsets) == subsets_before


def test_all_is_the_whole_corpus_shared_by_both_tables(corpus, tmp_path):
    config = small_config(
        corpus.uri, DisfaConfig(), tmp_path, images=["all", "64", "64"], identities=["ALL", "8"]
    )
    points = {p.key: p for p in plan_points(config, version=1)}
    assert sorted(points) == ["all", "identities-8", "images-64"]
    whole = points["all"]
    assert whole.axes == ("images", "identities") and whole.subset is None
    assert (whole.images, whole.people, whole.val_images) == (
        TRAIN_IMAGES,
        TRAIN_PEOPLE,
        VAL_IMAGES,
    )


def test_the_cli_reads_sizes_disfa_and_nested_settings(tmp_path):
    base = tmp_path / "finetune.yaml"
    base.write_text("lr: 0.0003\nmax_epochs: 7\n")
    parser = argparse.ArgumentParser(prog="facs")
    register(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(
        [
            "experiment", "scaling", "--corpus", "s3://b/corpus", "--disfa", "/data/disfa",
            "--images", "1000,2000,all", "--identities", "12,all",
            "--pretrain-model-width", "0.25", "--finetune-yaml", str(base),
            "--finetune-max-epochs", "9", "--concurrent", "2", "--point-eval", "probe",
        ]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.image_sizes() == [1000, 2000, None]
    assert config.identity_sizes() == [12, None]
    assert config.disfa.root == "/data/disfa"
    assert config.pretrain.model.width == 0.25
    assert (config.finetune.lr, config.finetune.max_epochs) == (0.0003, 9)  # flag beats YAML
    assert config.concurrent == 2 and config.point_eval == "probe"
    with pytest.raises(ValueError, match="images"):
        ScalingStudyConfig(images=["1000", "lots"])
