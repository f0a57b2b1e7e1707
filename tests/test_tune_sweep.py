"""`facs tune` on a tiny synthetic DISFA: an interrupted then resumed sweep, nested MLflow runs,
no test subject in any trial, and a chosen config that `facs finetune --config` loads."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from cluster.tune_cli import register
from pipeline.disfa import DisfaConfig, make_folds, prepare_disfa
from pipeline.options import load_config, overrides_from_args
from pipeline.synth.disfa_world import generate_disfa
from training.augment import AugmentConfig
from training.checkpoints import TrainingState, save_checkpoint
from training.finetune_config import FinetuneConfig
from training.model import ModelConfig, build_model
from tune.sweep import run_sweep
from tune.sweep_config import UNCAPPED_POS_WEIGHT, SearchSpace, SweepConfig, apply_params
from tune.sweep_final import BEST_CONFIG_FILE
from tune.sweep_trial import crossfit_tuned_f1

WIDTH = 0.125
SUBJECTS, FRAMES = 6, 30
TRIALS = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[DisfaConfig, str]:
    """A synthetic DISFA and a 17-AU network saved as the pre-trained checkpoint."""
    root = tmp_path_factory.mktemp("tune-world")
    disfa_world = generate_disfa(str(root / "world"), subjects=SUBJECTS, frames=FRAMES, seed=11)
    torch.manual_seed(5)
    model = build_model(ModelConfig(width=WIDTH))
    save_checkpoint(
        root / "pretrained",
        TrainingState(
            epoch=1,
            model_state=model.state_dict(),
            model_config=asdict(model.config),
            pixel_mean=0.4,
        ),
    )
    return DisfaConfig(root=disfa_world.out, cache=str(root / "cache")), str(root / "pretrained")


def tiny_sweep(disfa: DisfaConfig, pretrained: str, folder: Path, **overrides) -> SweepConfig:
    finetune = FinetuneConfig(
        disfa=disfa,
        pretrained=pretrained,
        val_subjects=1,
        model=ModelConfig(width=WIDTH),
        augment=AugmentConfig(strength=1.0),
        max_epochs=2,
        batches_per_epoch=2,
        batch_size=16,
        cpus_per_worker=0.5,
        shuffle_buffer=32,
        prefetch_batches=1,
        mlflow_uri=f"sqlite:///{folder / 'mlflow.db'}",
        plots=False,
        concurrent_folds=0,  # the final cross-validation's folds start together
    )
    space = SearchSpace(
        lr_min=1e-5,
        lr_max=1e-3,
        batch_sizes=[16],
        weight_decays=[0.0, 1e-4],
        dropouts=[0.25, 0.5],
        freeze_blocks=[0, 2],
        augment_strengths=[0.5, 1.0],
        pos_weightings=["none", "capped"],
        patiences=[10],
        threshold_policies=["fixed", "tuned"],
    )
    values = dict(
        finetune=finetune,
        space=space,
        num_samples=TRIALS,
        max_concurrent=1,
        cpus_per_trial=0.5,
        grace_period=1,
        reduction_factor=2,
        storage_path=str(folder / "sweeps"),
        name="sweep",
        experiment="facs-tune-test",
    )
    values.update(overrides)
    return SweepConfig(**values)


def trial_runs(client: MlflowClient, parent_id: str) -> list:
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=200)
    return [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent_id
        and r.data.tags.get("facs.stage") == "tune-trial"
    ]


def trial_results(sweep_dir: Path) -> dict[str, bytes]:
    """Each trial folder's result.json, keyed by trial id, as Tune wrote it."""
    out = {}
    for path in sweep_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            out[lines[0]["trial_id"]] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def sweep(ray_local, world, tmp_path_factory):
    """A sweep interrupted after its first trial finished, then resumed to the end."""
    disfa, pretrained = world
    folder = tmp_path_factory.mktemp("tune")
    groups_before = set(ray.util.placement_group_table())
    config = tiny_sweep(disfa, pretrained, folder, interrupt_after_trials=1)
    first = run_sweep(config)
    client = MlflowClient(first.tracking_uri)
    between = {
        "parent_status": client.get_run(first.parent_run_id).info.status,
        "finished": sorted(
            r.data.tags["facs.trial_id"]
            for r in trial_runs(client, first.parent_run_id)
            if r.info.status == "FINISHED"
        ),
        "results": trial_results(Path(first.path)),
    }
    second = run_sweep(dataclasses.replace(config, resume=True))
    between["groups_before"] = groups_before
    return first, between, second, config, prepare_disfa(disfa)


def held_placement_groups(ignore: set[str], wait_s: float = 60.0) -> dict[str, dict]:
    """Placement groups made since ``ignore`` was taken that are still reserved after a wait
    (Ray Train frees a killed run's group from a watcher that polls once a second)."""
    deadline = time.monotonic() + wait_s
    while True:
        held = {
            pg_id: info
            for pg_id, info in ray.util.placement_group_table().items()
            if pg_id not in ignore and info["state"] != "REMOVED"
        }
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(1.0)


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep):
    first, between, second, config, _ = sweep
    assert first.interrupted and not second.interrupted
    assert between["parent_status"] == "KILLED"
    assert len(between["finished"]) == 1  # interrupted right after the first trial finished
    assert second.parent_run_id == first.parent_run_id
    assert len({t.trial_id for t in second.trials}) == TRIALS
    client = MlflowClient(second.tracking_uri)
    runs = trial_runs(client, second.parent_run_id)
    for trial_id in between["finished"]:
        mine = [r for r in runs if r.data.tags["facs.trial_id"] == trial_id]
        assert len(mine) == 1, f"finished trial {trial_id} ran again"
        # Its Tune results were not appended to by the resumed sweep.
        assert trial_results(Path(second.path))[trial_id] == between["results"][trial_id]
    assert {r.data.tags["facs.trial_id"] for r in runs} == {t.trial_id for t in second.trials}


def test_trials_stopped_by_the_sweep_free_their_ray_train_resources(sweep):
    """The interruption kills a running trial and ASHA stops trials at its rungs: Ray Train must
    free each killed run's placement group, or the next trial waits for it forever."""
    first, between, second, _, _ = sweep
    assert first.interrupted and not second.interrupted
    assert held_placement_groups(between["groups_before"]) == {}


def test_sweep_logs_a_parent_run_with_a_nested_run_per_trial(sweep):
    _, _, result, config, _ = sweep
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert 0.0 <= parent.data.metrics["best_val_f1"] <= 1.0
    finished = [r for r in trial_runs(client, result.parent_run_id) if r.info.status == "FINISHED"]
    assert len(finished) == TRIALS
    for run in finished:
        assert {"lr", "batch_size", "freeze_blocks", "threshold_policy"} <= set(run.data.params)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_f1"))
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2
        # The trial's workers sample their node into the trial's own run, named by node.
        assert "system/node0/cpu_utilization_percentage" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert BEST_CONFIG_FILE in artifacts
    # The base config's point was trial 1, so the comparison on validation exists.
    assert result.defaults is not None
    assert result.defaults.params["lr"] == pytest.approx(config.finetune.lr)
    assert result.beats_defaults is not None


def test_no_trial_ever_touched_a_test_subject(sweep):
    _, _, result, config, frames = sweep
    folds = make_folds(frames.subjects(), scheme="paper", val_subjects_per_fold=1)
    for trial in result.trials:
        assert sorted(trial.subjects) == [f"fold{f.index}" for f in folds]
        for fold in folds:
            seen = trial.subjects[f"fold{fold.index}"]
            assert seen["train"] == sorted(fold.train_subjects), trial.trial_id
            assert seen["val"] == sorted(fold.val_subjects), trial.trial_id
            assert not set(fold.test_subjects) & (set(seen["train"]) | set(seen["val"]))


def test_the_chosen_config_loads_as_a_finetune_config_and_is_tested_once(sweep):
    _, _, result, config, _ = sweep
    chosen = load_config(FinetuneConfig, result.best_config_uri, {})
    expected = apply_params(config.finetune, result.best.params, config.space.pos_weight_cap)
    assert chosen == expected
    assert result.best.val_f1 == max(t.val_f1 for t in result.trials)
    # The final cross-validation: test F1 per fold and pooled, both threshold policies.
    for key in ("test_f1_mean", "test_f1_mean_tuned", "test_pooled_f1_mean"):
        assert 0.0 <= result.test[key] <= 1.0
    assert {f"test_fold{k}_f1_mean" for k in (1, 2, 3)} <= set(result.test)
    client = MlflowClient(result.tracking_uri)
    version = client.get_model_version(result.registered_model, result.registered_version)
    final_parent = client.get_run(version.run_id)
    assert final_parent.data.tags["mlflow.parentRunId"] == result.parent_run_id


# -- Without Ray ------------------------------------------------------------------------------


def test_tuned_thresholds_are_scored_on_the_other_validation_subject():
    # AU scores: subject A's positives score 0.8, subject B's 0.3; negatives 0.1 everywhere.
    labels = np.array([[1], [0], [1], [0]] * 1, dtype=np.uint8).repeat(12, axis=1)
    probs = np.array([[0.8], [0.1], [0.3], [0.1]], dtype=np.float32).repeat(12, axis=1)
    subjects, frames = np.array(["A", "A", "B", "B"]), np.array([1, 2, 1, 2])
    # Tuned on B (threshold between 0.1 and 0.3) A is right; tuned on A (between 0.1 and 0.8,
    # i.e. 0.45) B's positive is missed: TP 1, FN 1 -> F1 = 2/3. In-sample would give 1.0.
    assert crossfit_tuned_f1(labels, probs, subjects, frames) == pytest.approx(2 / 3)
    # One validation subject: its video's two halves (frames 1-2, 3-4) play A and B.
    one = np.array(["A"] * 4)
    assert crossfit_tuned_f1(labels, probs, one, np.array([1, 2, 3, 4])) == pytest.approx(2 / 3)


def test_positive_weighting_choices_map_onto_the_finetune_config():
    base = FinetuneConfig()
    point = SweepConfig().default_point()
    none = apply_params(base, {**point, "pos_weighting": "none"}, cap=7.0)
    capped = apply_params(base, {**point, "pos_weighting": "capped"}, cap=7.0)
    inverse = apply_params(base, {**point, "pos_weighting": "inverse_frequency"}, cap=7.0)
    assert not none.class_weighting
    assert capped.class_weighting and capped.max_pos_weight == 7.0
    assert inverse.class_weighting and inverse.max_pos_weight == UNCAPPED_POS_WEIGHT
    off = apply_params(base, {**point, "augment_strength": 0.0}, cap=7.0)
    assert not off.augment.enabled


def test_defaults_outside_the_space_are_refused_by_name():
    config = SweepConfig(space=SearchSpace(batch_sizes=[64]))
    with pytest.raises(ValueError, match="batch_size=32"):
        config.default_point()


def test_facs_tune_reads_yaml_and_flags(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(
        [
            "tune",
            "--config",
            str(Path(__file__).parents[1] / "configs" / "tune_default.yaml"),
            "--num-samples",
            "4",
            "--gpus-per-trial",
            "0.5",
            "--space-freeze-blocks",
            "0,2",
            "--resume",
            "--name",
            "old",
        ]
    )
    config = load_config(args.config_class, args.config, overrides_from_args(args))
    assert isinstance(config, SweepConfig)
    assert config.num_samples == 4 and config.gpus_per_trial == 0.5 and config.resume
    assert config.space.freeze_blocks == [0, 2]
    assert config.space.threshold_policies == ["fixed", "tuned"]  # from the YAML
    assert config.finetune.max_epochs == 30
