"""The worker engine's verbs on a plain CPU process: losses, hooks, stopping, subject codes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from pipeline.vocabulary import FACE_SIZE
from training.augment import FaceAugment
from training.augment_config import AugmentConfig
from training.checkpoints import TrainingState
from training.data import FaceBatchCollate
from training.engine import (
    Autocast,
    EarlyStopping,
    SubjectsSeen,
    WorkerEnv,
    evaluate,
    train_epoch,
)
from training.model import build_model
from training.model_config import ModelConfig

CPU = torch.device("cpu")
ENV = WorkerEnv(rank=0, world=1, device=CPU, autocast=Autocast(CPU, False), channels_last=False)
AUS = ("AU01", "AU02", "AU04")


def batches(count: int, size: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "faces": torch.randint(
                0, 256, (size, FACE_SIZE, FACE_SIZE), dtype=torch.uint8, generator=generator
            ),
            "labels": torch.randint(0, 2, (size, len(AUS)), dtype=torch.uint8, generator=generator),
            "subjects": torch.full((size,), k % 3, dtype=torch.int64),
            "frames": torch.arange(k * size, (k + 1) * size, dtype=torch.int64),
        }
        for k in range(count)
    ]


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(width=0.0625, num_outputs=len(AUS)))


def test_train_epoch_sums_each_steps_loss_and_calls_both_hooks():
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, step_losses = [], []
    stats = train_epoch(
        model,
        optimizer,
        FaceAugment(AugmentConfig()),
        batches(4, size=6),
        nn.BCEWithLogitsLoss(),
        ENV,
        pixel_mean=0.5,
        on_batch=lambda batch: seen.append(int(batch["frames"][0])),
        on_step=lambda s, loss: step_losses.append((s.steps, float(loss.detach()))),
    )
    assert (stats.steps, stats.samples) == (4, 24)
    assert seen == [0, 6, 12, 18]
    assert [steps for steps, _ in step_losses] == [1, 2, 3, 4]
    assert stats.loss_sum == pytest.approx(sum(6 * loss for _, loss in step_losses), rel=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_evaluate_matches_an_independent_bce_and_keeps_the_asked_columns():
    model = small_model().eval()
    data = batches(3, size=5, seed=1)
    output = evaluate(model, data, ENV, pixel_mean=0.4, width=len(AUS), keep=("frames",))
    with torch.no_grad():
        logits = torch.cat([model((b["faces"].float() / 255.0 - 0.4).unsqueeze(1)) for b in data])
    targets = torch.cat([b["labels"] for b in data]).float()
    expected = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="mean")
    assert output.count == 15
    assert output.mean_loss == pytest.approx(float(expected), rel=1e-5)
    np.testing.assert_allclose(output.probs, torch.sigmoid(logits).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(output.columns["frames"], np.arange(15))
    assert set(output.columns) == {"frames"}
    empty = evaluate(model, [], ENV, pixel_mean=0.4, width=len(AUS), keep=("frames",))
    assert empty.count == 0 and empty.probs.shape == (0, 3) and math.isnan(empty.mean_loss)


@pytest.mark.parametrize("lower_is_better", [True, False])
def test_early_stopping_counts_patience_from_the_last_real_improvement(lower_is_better):
    sign = 1 if lower_is_better else -1
    stopping = EarlyStopping(patience=2, min_delta=0.1, lower_is_better=lower_is_better)
    values = [sign * 1.0, sign * 0.95, sign * 0.5, sign * 0.45, sign * 0.44]
    improved = [stopping.update(epoch, value) for epoch, value in enumerate(values, start=1)]
    assert improved == [True, False, True, False, False]
    assert stopping.best_epoch == 3 and stopping.best_value == sign * 0.5
    assert stopping.stopped
    state = TrainingState(
        0, {}, {}, 0.5, best_score=stopping.best_score, best_epoch=3, epochs_without_improvement=1
    )
    resumed = EarlyStopping(2, 0.1, lower_is_better).restore(state)
    assert (resumed.best_value, resumed.waiting, resumed.stopped) == (sign * 0.5, 1, False)
    assert EarlyStopping(patience=0).update(1, 1.0) and not EarlyStopping(0).stopped


def test_subjects_seen_marks_codes_on_the_device_including_unknown_subjects():
    seen = SubjectsSeen(4, CPU, codes=[2])
    seen.mark(torch.tensor([0, 0, 3]))
    seen.mark(torch.tensor([-1]))
    assert seen.codes() == [-1, 0, 2, 3]


def test_collate_with_subjects_codes_them_and_carries_frames():
    table = pa.table(
        {
            "face": pa.array([bytes(FACE_SIZE * FACE_SIZE)] * 3, pa.binary()),
            "subject": ["SN002", "SN999", "SN001"],
            "frame": pa.array([5, 6, 7], pa.int32()),
            **{au: pa.array([1, 0, 1], pa.int8()) for au in AUS},
        }
    )
    batch = FaceBatchCollate(AUS, subjects=("SN001", "SN002"))(table)
    assert batch["subjects"].tolist() == [1, -1, 0]
    assert batch["frames"].tolist() == [5, 6, 7]
    assert batch["labels"].shape == (3, 3) and batch["labels"][:, 0].tolist() == [1, 0, 1]
    assert set(FaceBatchCollate(AUS)(table)) == {"faces", "labels"}
