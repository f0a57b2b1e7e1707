"""Typed configuration of `facs tune`: the search space, the searcher and scheduler, the base fine-tune."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.options import at_least, at_least_each, option, raise_failed
from pipeline.run_options import DEFAULT_TRACKING, mlflow_uri_field, stage_output_field
from training.finetune_config import FinetuneConfig

#: Positive-class weightings a trial can use (BCE ``pos_weight`` per AU).
POS_WEIGHTINGS: tuple[str, ...] = ("none", "inverse_frequency", "capped")
#: Decision-threshold policies: every AU at 0.5 (the paper), or per-AU tuned on validation.
THRESHOLD_POLICIES: tuple[str, ...] = ("fixed", "tuned")
#: ``max_pos_weight`` of "inverse_frequency": high enough never to bind on DISFA's rarest AU.
UNCAPPED_POS_WEIGHT = 1e4


@dataclass
class SearchSpace:
    """What a trial may vary; a list of one value fixes that dimension."""

    lr_min: float = option(1e-5, "learning rate, low end (log-uniform)")
    lr_max: float = option(1e-3, "learning rate, high end (log-uniform)")
    batch_sizes: list[int] = option(
        factory=lambda: [16, 32, 64], help="per-worker batch sizes to try"
    )
    weight_decays: list[float] = option(
        factory=lambda: [0.0, 1e-5, 1e-4, 1e-3], help="Adam L2 weight decays to try"
    )
    dropouts: list[float] = option(
        factory=lambda: [0.0, 0.25, 0.5], help="fully connected dropout rates to try"
    )
    freeze_blocks: list[int] = option(
        factory=lambda: [0, 1, 2, 3, 4], help="numbers of frozen conv blocks (0-4) to try"
    )
    augment_strengths: list[float] = option(
        factory=lambda: [0.0, 0.5, 1.0, 1.5],
        help="augmentation strengths (multiplier on the paper's magnitudes) to try",
    )
    pos_weightings: list[str] = option(
        factory=lambda: list(POS_WEIGHTINGS),
        help="positive-class weightings to try: none, inverse_frequency, capped",
    )
    pos_weight_cap: float = option(10.0, "the cap of the 'capped' weighting")
    patiences: list[int] = option(
        factory=lambda: [3, 5, 10], help="early-stopping patiences (epochs) to try"
    )
    threshold_policies: list[str] = option(
        factory=lambda: list(THRESHOLD_POLICIES),
        help="threshold policies to try: fixed (0.5, the paper), tuned (per AU)",
    )

    def __post_init__(self) -> None:
        choices = {
            name: getattr(self, name)
            for name in (
                "batch_sizes",
                "weight_decays",
                "dropouts",
                "freeze_blocks",
                "augment_strengths",
                "pos_weightings",
                "patiences",
                "threshold_policies",
            )
        }
        checks = [
            (
                0 < self.lr_min <= self.lr_max,
                f"0 < lr_min <= lr_max, got {self.lr_min}, {self.lr_max}",
            ),
            *((bool(v), f"at least one value in {k}") for k, v in choices.items()),
            (all(b >= 1 for b in self.batch_sizes), f"batch_sizes >= 1, got {self.batch_sizes}"),
            (all(0 <= d < 1 for d in self.dropouts), f"dropouts in [0, 1), got {self.dropouts}"),
            (
                all(0 <= k <= 4 for k in self.freeze_blocks),
                f"freeze_blocks in 0..4, got {self.freeze_blocks}",
            ),
            (
                set(self.pos_weightings) <= set(POS_WEIGHTINGS),
                f"pos_weightings among {POS_WEIGHTINGS}, got {self.pos_weightings}",
            ),
            at_least("pos_weight_cap", self.pos_weight_cap, 1),
            (all(p >= 0 for p in self.patiences), f"patiences >= 0, got {self.patiences}"),
            (
                set(self.threshold_policies) <= set(THRESHOLD_POLICIES),
                f"threshold_policies among {THRESHOLD_POLICIES}, got {self.threshold_policies}",
            ),
        ]
        raise_failed(checks, "SearchSpace")

    def categorical(self) -> dict[str, list[Any]]:
        """Each categorical dimension's choices, by the trial parameter's name."""
        return {
            "batch_size": list(self.batch_sizes),
            "weight_decay": list(self.weight_decays),
            "dropout": list(self.dropouts),
            "freeze_blocks": list(self.freeze_blocks),
            "augment_strength": list(self.augment_strengths),
            "pos_weighting": list(self.pos_weightings),
            "patience": list(self.patiences),
            "threshold_policy": list(self.threshold_policies),
        }


@dataclass
class SweepConfig:
    """One sweep: Optuna TPE proposes fine-tuning configs, ASHA stops weak ones per epoch."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    space: SearchSpace = field(default_factory=SearchSpace)

    num_samples: int = option(20, "trials (configs) to evaluate")
    max_concurrent: int = option(1, "trials running at the same time")
    gpus_per_trial: float = option(0.0, "GPUs per trial (fractional allowed); 0 = CPU")
    cpus_per_trial: float = option(1.0, "CPUs per trial's worker")
    grace_period: int = option(2, "ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: int = option(3, "ASHA: keep the best 1/reduction_factor at each rung")
    include_defaults: bool = option(
        True,
        "evaluate the base fine-tuning config (--config, else the defaults) as the first "
        "trial, so the sweep's best can be compared with it on validation",
    )
    seed: int = option(0, "seed of the TPE searcher")
    final_evaluation: bool = option(
        True,
        "after the sweep, once: cross-validate the chosen config on each fold's test "
        "subjects, report test F1 per fold and pooled, register the model",
    )

    storage_path: str | None = stage_output_field("where sweeps are kept (local or s3://)", "tune")
    name: str | None = option(None, "the sweep's folder name; none = tune-<UTC timestamp>")
    resume: bool = option(
        False, "continue the interrupted sweep --name (finished trials are not rerun)"
    )
    interrupt_after_trials: int | None = option(
        None,
        "stop the sweep (as Ctrl+C would) once this many trials have finished, to "
        "continue later with --resume; none = run to the end",
    )

    mlflow_uri: str | None = mlflow_uri_field(
        fallback=f"the fine-tuning config's, else {DEFAULT_TRACKING}"
    )
    experiment: str = option("facs-tune", "MLflow experiment")

    def __post_init__(self) -> None:
        checks = [
            *at_least_each(self, num_samples=1, max_concurrent=1, gpus_per_trial=0),
            (self.cpus_per_trial > 0, f"cpus_per_trial > 0, got {self.cpus_per_trial}"),
            *at_least_each(self, grace_period=1, reduction_factor=2),
            (not self.resume or bool(self.name), "--name of the sweep to continue with --resume"),
            at_least("interrupt_after_trials", self.interrupt_after_trials, 1, optional=True),
        ]
        raise_failed(checks, "SweepConfig")

    def default_point(self) -> dict[str, Any]:
        """The base fine-tuning config as a point of the search space (its trial is the baseline)."""
        base = self.finetune
        if not base.class_weighting:
            weighting = "none"
        elif base.max_pos_weight >= UNCAPPED_POS_WEIGHT:
            weighting = "inverse_frequency"
        else:
            weighting = "capped"
        dropout = base.dropout if base.dropout is not None else base.model.dropout_fc
        point = {
            "lr": base.lr,
            "batch_size": base.batch_size,
            "weight_decay": base.weight_decay,
            "dropout": dropout,
            "freeze_blocks": base.freeze_blocks,
            "augment_strength": base.augment.strength if base.augment.enabled else 0.0,
            "pos_weighting": weighting,
            "patience": base.patience,
            "threshold_policy": base.threshold_policy,
        }
        outside = [
            f"{name}={point[name]!r} not in {choices}"
            for name, choices in self.space.categorical().items()
            if point[name] not in choices
        ]
        if not self.space.lr_min <= base.lr <= self.space.lr_max:
            outside.append(f"lr={base.lr} outside [{self.space.lr_min}, {self.space.lr_max}]")
        if outside:
            raise ValueError(
                "SweepConfig.include_defaults: the base fine-tuning config is outside the search "
                f"space ({'; '.join(outside)}); widen the space or use --no-include-defaults"
            )
        return point


def apply_params(base: FinetuneConfig, params: dict[str, Any], cap: float) -> FinetuneConfig:
    """The fine-tuning config of one trial: ``base`` with the trial's parameters set."""
    weighting = params["pos_weighting"]
    strength = float(params["augment_strength"])
    augment = dataclasses.replace(base.augment, strength=strength, enabled=strength > 0)
    return dataclasses.replace(
        base,
        lr=float(params["lr"]),
        batch_size=int(params["batch_size"]),
        weight_decay=float(params["weight_decay"]),
        dropout=float(params["dropout"]),
        freeze_blocks=int(params["freeze_blocks"]),
        augment=augment,
        class_weighting=weighting != "none",
        max_pos_weight=UNCAPPED_POS_WEIGHT if weighting == "inverse_frequency" else cap,
        patience=int(params["patience"]),
        threshold_policy=params["threshold_policy"],
    )
