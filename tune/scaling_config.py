"""Typed configuration of `facs experiment scaling`: which subset sizes, and the one shared protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.disfa import DisfaConfig
from pipeline.options import at_least, option, raise_failed
from pipeline.run_options import mlflow_uri_field, stage_output_field
from training.finetune_config import FinetuneConfig
from training.pretrain_config import PretrainConfig

#: A size that stands for the whole corpus version (every labelled training row).
ALL = "all"
#: The paper's Table IV and V sizes.
PAPER_IMAGES = ["1000", "2000", "10000", ALL]
PAPER_IDENTITIES = ["12", "200", "600", "1000", ALL]


def parse_sizes(values: list[str] | list[int], what: str) -> list[int | None]:
    """``["1000", "all"]`` -> ``[1000, None]`` (None = the whole corpus), duplicates dropped."""
    sizes: list[int | None] = []
    for value in values:
        text = str(value).strip().lower()
        if text == ALL:
            size = None
        else:
            try:
                size = int(text)
            except ValueError:
                size = 0
            if size < 1:
                raise ValueError(
                    f"ScalingStudyConfig.{what}: expected positive whole numbers or {ALL!r}, "
                    f"got {value!r}"
                )
        if size not in sizes:
            sizes.append(size)
    return sizes


@dataclass
class ScalingStudyConfig:
    """One scaling experiment: subsets of the corpus by images and by people, each pre-trained and
    fine-tuned with the same ``pretrain`` and ``finetune`` settings (only the subset differs)."""

    corpus: str = option("", "corpus root (local folder or s3:// URI)")
    corpus_version: int | None = option(
        None, "corpus version the subsets are drawn from; none = latest"
    )
    disfa: DisfaConfig = field(default_factory=DisfaConfig)
    images: list[str] = option(
        factory=lambda: list(PAPER_IMAGES),
        help="numbers of pre-training images (Table IV, Figure 3); 'all' = every labelled "
        "training image of the version",
    )
    identities: list[str] = option(
        factory=lambda: list(PAPER_IDENTITIES),
        help="numbers of distinct people pre-trained on (Table V, Figure 4); 'all' = every person",
    )
    identity_images: int | None = option(
        None,
        "image budget of every point on the people axis: its N people share it "
        "evenly (6000: 30 x 200, 120 x 50, 600 x 10 images), so only the number of people "
        "varies; none = all images of each person (then the image count varies too)",
    )
    balance: Literal["gender", "region"] = option(
        "gender", "subsets balance gender (the paper), or gender x region"
    )
    subset_seed: int = option(0, "seed of the subsets: the same seed draws the same rows")
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    pretrain_yaml: str = option(
        "",
        "a `facs pretrain --config` YAML as the pre-training settings (the pretrain "
        "section and --pretrain-* flags override it)",
    )
    finetune_yaml: str = option(
        "",
        "a `facs finetune --config` YAML (e.g. a sweep's best config) as the "
        "fine-tuning settings (the finetune section and --finetune-* flags override it)",
    )
    point_eval: Literal["finetune", "probe"] = option(
        "finetune",
        "how each point's pre-trained weights are scored: 'finetune' (the paper: the "
        "full cross-validated fine-tune) or 'probe' (declared cheaper: a linear probe of the "
        "frozen features on the same folds, seconds instead of three fine-tunes)",
    )
    concurrent: int = option(
        1,
        "points (pre-train + fine-tune) run at the same time, each with its own Ray "
        "trainers; Ray queues those that do not fit. 1 on a laptop",
    )
    output: str | None = stage_output_field(
        "folder or s3:// prefix for the runs and the report (tables, figures)", "scaling"
    )
    run_name: str | None = option(None, "the experiment's folder and run name; none = timestamped")
    mlflow_uri: str | None = mlflow_uri_field(" for every run")
    experiment: str = option("facs-scaling", "MLflow experiment of the parent and point runs")
    register_models: bool = option(
        False,
        "also register each point's pre-trained and fine-tuned models (off: the "
        "registry keeps only models meant for use)",
    )

    def __post_init__(self) -> None:
        self.images = [str(v) for v in self.images]
        self.identities = [str(v) for v in self.identities]
        parse_sizes(self.images, "images")
        parse_sizes(self.identities, "identities")
        checks = [
            (bool(self.images or self.identities), "some --images or --identities sizes"),
            at_least("corpus_version", self.corpus_version, 1, optional=True),
            (
                self.point_eval in ("finetune", "probe"),
                f"point_eval 'finetune' or 'probe', got {self.point_eval!r}",
            ),
            at_least("concurrent", self.concurrent, 1),
            at_least("identity_images", self.identity_images, 1, optional=True),
        ]
        raise_failed(checks, "ScalingStudyConfig")
        if self.identity_images is not None:
            if None in self.identity_sizes():
                raise ValueError(
                    f"ScalingStudyConfig.identities: {ALL!r} has no fixed image budget; with "
                    "--identity-images give numbers of people"
                )
            too_many = [n for n in self.identity_sizes() if n and n > self.identity_images]
            if too_many:
                raise ValueError(
                    f"ScalingStudyConfig.identities: {too_many} people cannot share "
                    f"{self.identity_images} images (at least one each)"
                )

    def image_sizes(self) -> list[int | None]:
        return parse_sizes(self.images, "images")

    def identity_sizes(self) -> list[int | None]:
        return parse_sizes(self.identities, "identities")
