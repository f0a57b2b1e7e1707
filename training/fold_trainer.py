"""One fold's training on one worker: its network, optimizer, loss, early stopping and batches.

The fine-tuning worker (``training.finetune_worker``) trains one fold with it; a sweep trial
(``tune.sweep_trial``) trains all its folds with it in lock-step, so a sweep scores configurations
with the code that the cross-validation then runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from pipeline.disfa import Fold
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.augment import FaceAugment
from training.checkpoints import TrainingState, unwrapped_state_dict
from training.data import BatchOptions, device_batches
from training.engine import (
    EarlyStopping,
    EpochStats,
    EvalOutput,
    SubjectsSeen,
    WorkerEnv,
    adam,
    all_reduce,
    evaluate,
    train_epoch,
)
from training.finetune_config import FinetuneConfig
from training.finetune_data import LABEL_COLUMNS, disfa_collate
from training.init_weights import InitWeights, initial_model
from training.metrics import au_metrics
from training.model import ModelConfig, freeze_classifier, freeze_conv_blocks

#: The columns an evaluation keeps besides labels and probabilities.
KEPT_COLUMNS = ("subjects", "frames")


def subject_of_code(subjects: Sequence[str], code: int) -> str:
    """The subject of a batch code; ``?`` for a subject missing from the list (code -1)."""
    return subjects[code] if 0 <= code < len(subjects) else "?"


def set_fc_dropout(model: nn.Module, rate: float | None) -> None:
    """Set the fully connected layers' dropout (a fine-tuning choice; ``None`` keeps the net's)."""
    if rate is None:
        return
    for module in model.classifier.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
    model.config.dropout_fc = rate


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (on a CPU device ``.cpu()`` alone would alias them)."""
    return {key: value.clone() for key, value in unwrapped_state_dict(model).items()}


def merge_codes(parts: Sequence[dict[str, list[int]]]) -> dict[str, list[int]]:
    """The union, split by split, of the subject codes every worker saw."""
    merged: dict[str, set[int]] = {}
    for codes in parts:
        for split, values in codes.items():
            merged.setdefault(split, set()).update(values)
    return {split: sorted(values) for split, values in merged.items()}


class FoldTrainer:
    """One fold's network, optimizer, loss and early stopping on one worker."""

    def __init__(
        self,
        config: FinetuneConfig,
        fold: Fold,
        start: tuple[InitWeights, ModelConfig],
        figures: tuple[float, list[float] | None],
        subjects: Sequence[str],
        env: WorkerEnv,
        state: TrainingState | None = None,
        seen: dict[str, list[int]] | None = None,
    ) -> None:
        """``start``: the weights and the scratch architecture; ``figures``: the fold's pixel
        mean and per-AU positive weights; ``state``/``seen``: a checkpoint to resume from."""
        self.config, self.fold, self.env, self.subjects = config, fold, env, tuple(subjects)
        init, scratch_model = start
        self.pixel_mean, pos_weight = figures
        # The same seed for every arm (and in a sweep): the new head and a scratch net start alike.
        torch.manual_seed(config.seed * 1000 + fold.index)
        core = initial_model(
            init,
            scratch_model,
            len(LABEL_COLUMNS),
            head_rows_for=LABEL_COLUMNS if config.head_init == "pretrained_rows" else None,
        )
        freeze_conv_blocks(core, config.freeze_blocks)
        freeze_classifier(core, config.freeze_classifier)
        set_fc_dropout(core, config.dropout)
        if state is not None:
            core.load_state_dict(state.model_state)
        self.core = core
        self.model = env.prepare(core)
        self.optimizer = adam(self.model, config)
        if state is not None and state.optimizer_state is not None:
            self.optimizer.load_state_dict(state.optimizer_state)
        weights = (
            None
            if pos_weight is None
            else torch.tensor(pos_weight, dtype=torch.float32, device=env.device)
        )
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=weights)
        self.stopping = EarlyStopping(
            config.patience, config.min_delta, config.lower_is_better
        ).restore(state)
        seen = seen or {}
        self.seen_train = SubjectsSeen(len(self.subjects), env.device, seen.get("train", []))
        self.seen_val: set[int] = set(seen.get("val", []))
        self.epoch_samples = 0.0

    def batches(
        self, shard: ray.data.DataIterator, training: bool, epoch: int = 0, whole: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches of ``epoch`` (shuffled, capped by ``batches_per_epoch``) or
        evaluation batches (in order, capped by ``val_batches`` unless ``whole``)."""
        config = self.config
        options = BatchOptions(
            batch_size=config.batch_size if training else config.batch_size * 2,
            shuffle_buffer=config.shuffle_buffer if training else 0,
            prefetch_batches=config.prefetch_batches,
            drop_last=training,
            seed=self.env.shuffle_seed(config.seed, epoch) if training else None,
        )
        limit = config.batches_per_epoch if training else config.val_batches
        collate = disfa_collate(self.subjects)
        return device_batches(shard, options, self.env.device, None if whole else limit, collate)

    def train_epoch(
        self,
        shard: ray.data.DataIterator,
        augment: FaceAugment,
        epoch: int,
        on_step: Callable[[EpochStats, torch.Tensor], None] | None = None,
    ) -> EpochStats:
        stats = train_epoch(
            self.model,
            self.optimizer,
            augment,
            self.batches(shard, True, epoch),
            self.loss_fn,
            self.env,
            pixel_mean=self.pixel_mean,
            on_batch=lambda batch: self.seen_train.mark(batch["subjects"]),
            on_step=on_step,
        )
        if stats.steps == 0:
            raise RuntimeError(
                f"fold {self.fold.index}, worker {self.env.rank}: no training batch of "
                f"{self.config.batch_size} frames in its shard; use a smaller batch size or "
                "fewer workers"
            )
        return stats

    def evaluate(self, shard: ray.data.DataIterator, whole: bool = False) -> EvalOutput:
        """The current weights on a split (``whole``: no ``val_batches`` cap, as for test)."""
        return evaluate(
            self.core,
            self.batches(shard, False, whole=whole),
            self.env,
            pixel_mean=self.pixel_mean,
            width=len(LABEL_COLUMNS),
            keep=KEPT_COLUMNS,
        )

    def validate(
        self, shard: ray.data.DataIterator, stats: EpochStats, epoch: int
    ) -> tuple[EvalOutput, dict[str, Any], bool]:
        """Validation, the epoch's metrics and whether the monitor improved.

        Rank 0 validates on every validation frame (the split is not sharded: no frame is
        dropped to even out shards); the others take its verdict through the all-reduce.
        """
        config, env = self.config, self.env
        empty = EvalOutput.empty(len(LABEL_COLUMNS), KEPT_COLUMNS)
        val = self.evaluate(shard) if env.rank == 0 else empty
        self.seen_val.update(int(c) for c in np.unique(val.columns["subjects"]))
        metrics: dict[str, Any] = {"epoch": epoch}
        if env.rank == 0:
            if not val.count:
                raise RuntimeError(
                    f"fold {self.fold.index}: the validation subjects "
                    f"{list(self.fold.val_subjects)} gave no frames; early stopping needs them"
                )
            metrics["val_loss"] = val.mean_loss
            au = au_metrics(val.labels, val.probs, LABEL_COLUMNS, config.threshold)
            metrics.update(au.as_flat_dict("val", subsets={"paper": PAPER_COMPARISON_AUS}))
        # Every worker must take the same decision: rank 0's monitor value, summed with zeros.
        value = float(metrics.get(config.monitor, 0.0)) if env.rank == 0 else 0.0
        value = 0.0 if math.isnan(value) else value
        train_sum, train_n, monitor = all_reduce([stats.loss_sum, stats.samples, value], env.device)
        improved = self.stopping.update(epoch, monitor)
        self.epoch_samples = train_n  # over all workers: what the sweep weighs fold losses by
        metrics.update(
            train_loss=train_sum / train_n,
            monitor=monitor,
            best_monitor=self.stopping.best_value,
            best_epoch=self.stopping.best_epoch,
            epochs_without_improvement=self.stopping.waiting,
            stopped_early=self.stopping.stopped,
            samples_per_s=train_n / max(stats.seconds, 1e-9),
        )
        return val, metrics, improved

    def seen_codes(self) -> dict[str, list[int]]:
        """The subject codes this worker's batches held so far, by split."""
        return {"train": self.seen_train.codes(), "val": sorted(self.seen_val)}

    def training_state(self, epoch: int, best: dict | None = None) -> TrainingState:
        """A checkpoint's state: the current weights and optimizer, or ``best`` weights alone."""
        return TrainingState(
            epoch=epoch,
            model_state=best if best is not None else unwrapped_state_dict(self.core),
            model_config=asdict(self.core.config),
            pixel_mean=self.pixel_mean,
            optimizer_state=None if best is not None else self.optimizer.state_dict(),
            best_score=self.stopping.best_score,
            best_epoch=self.stopping.best_epoch,
            epochs_without_improvement=self.stopping.waiting,
        )
