"""Test-only fault injection: a training worker exits once, as a lost node would, so that tests
can check that Ray Train recovers the run from its last checkpoint.

Kept out of the configs (and so out of the runs' MLflow params): the driver reads
``FACS_<JOB>_FAIL_AT_EPOCH`` (0 = never) and ``FACS_<JOB>_FAIL_RANK`` (default 1) and hands the
plan to its workers; a marker file in the run's storage makes the failure happen on the first
attempt only.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import ray.train

from pipeline.storage import Location

log = logging.getLogger(__name__)

#: The file a failing worker writes just before it exits (in the run's folder).
FAULT_MARKER = "fault-injected"


def fail_env(job: str) -> tuple[str, str]:
    """The two variables of ``job`` (``PRETRAIN``, ``FINETUNE``): epoch and rank."""
    return f"FACS_{job}_FAIL_AT_EPOCH", f"FACS_{job}_FAIL_RANK"


@dataclass(frozen=True)
class FaultPlan:
    """Worker ``rank`` exits at the start of epoch ``epoch`` (0 = never), once."""

    epoch: int = 0
    rank: int = 1
    marker: str = ""

    @classmethod
    def from_env(cls, job: str, workers: int) -> FaultPlan:
        """The plan the environment asks for; a rank the run does not have is refused."""
        epoch_env, rank_env = fail_env(job)
        epoch = int(os.environ.get(epoch_env, "0") or 0)
        rank = int(os.environ.get(rank_env, "1") or 1)
        if epoch and not 0 <= rank < workers:
            raise ValueError(f"{rank_env}: expected a worker rank in [0, {workers}), got {rank}")
        return cls(epoch, rank)

    def at(self, run_dir: Location) -> FaultPlan:
        """The plan with its marker in ``run_dir`` (no marker: no failure)."""
        return FaultPlan(
            self.epoch, self.rank, run_dir.join(FAULT_MARKER).uri if self.epoch else ""
        )

    def maybe_fail(self, epoch: int, rank: int) -> None:
        """Kill this worker's process if the plan names this epoch and rank and has not fired.

        It first waits until Ray Train has committed the previous epoch's checkpoint: the
        controller registers a checkpoint only once it has collected every worker's report (it
        polls them every few seconds), so a worker that dies sooner than that loses the
        checkpoint too, and recovery would restart one epoch earlier than a test expects.
        """
        if self.epoch != epoch or rank != self.rank or not self.marker:
            return
        marker = Location.of(self.marker)
        if marker.exists():
            return
        try:
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120
            )
        except Exception as error:  # an alpha API: fall back to outlasting the controller's polls
            log.warning("fault injection: cannot wait for the checkpoint commit (%s)", error)
            time.sleep(10)
        marker.write_bytes(f"worker {rank} exited during epoch {epoch}\n".encode())
        log.warning("fault injection: worker %d exits during epoch %d", rank, epoch)
        os._exit(1)
