"""The demo's surroundings: its work dir and paths, its progress lines, Ray and the CPUs each
trainer gets, and the recipe file that swaps the product's training defaults for another's."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

import pyarrow.fs as pafs

from pipeline.storage import Location, is_s3
from tune.demo_config import DemoConfig, DemoScale

#: The marker that makes a work dir the demo's own (only then are its data folders replaced).
MARKER = "facs-demo.json"
#: Folders of a work dir that each demo replaces; the MLflow store beside them is kept.
DATA_FOLDERS = ("celeb", "disfa", "corpus", "runs", "disfa-cache")
SUMMARY = "demo-summary.json"
TABLE3 = "table3.md"
STAGES = 6


# ---------------------------------------------------------------------------------------------
# Where things go


@dataclass(frozen=True)
class DemoPaths:
    """The URIs of everything the demo writes (local paths or ``s3://``)."""

    workdir: str
    celeb: str
    disfa: str
    corpus: str
    pretrain_runs: str
    finetune_runs: str
    disfa_cache: str

    @classmethod
    def under(cls, workdir: str) -> DemoPaths:
        root = Location.of(workdir)
        return cls(
            workdir=root.uri,
            celeb=root.join("celeb").uri,
            disfa=root.join("disfa").uri,
            corpus=root.join("corpus").uri,
            pretrain_runs=root.join("runs", "pretrain").uri,
            finetune_runs=root.join("runs", "finetune").uri,
            disfa_cache=root.join("disfa-cache").uri,
        )


def tracking_uri_for(config: DemoConfig) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store in a local folder."""
    from training.tracking import resolve_tracking_uri

    folder = config.local_dir or ("./facs-demo-mlflow" if is_s3(config.workdir) else config.workdir)
    return resolve_tracking_uri(config.mlflow_uri, default_dir=folder)


def _entries(root: Location) -> list[str]:
    selector = pafs.FileSelector(root.path, recursive=False, allow_not_found=True)
    return sorted(info.base_name for info in root.fs.get_file_info(selector))


def prepare_workdir(config: DemoConfig) -> Location:
    """Claim the work dir: new or empty, or an earlier demo's (whose data folders are replaced).

    A non-empty folder without the demo's marker is refused rather than written into.
    """
    root = Location.of(config.workdir)
    entries = _entries(root)
    if entries and MARKER not in entries:
        raise ValueError(
            f"--workdir {root.uri} is not empty and was not made by `facs demo` (no {MARKER}); "
            "expected a new or empty folder, or an earlier demo's"
        )
    for name in DATA_FOLDERS:
        root.join(name).delete_dir()
    root.join(MARKER).write_text_atomic(
        json.dumps(
            {
                "made_by": "facs demo",
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "scale": config.scale,
            },
            indent=2,
        )
    )
    return root


def validation_people(seed: int, people: int) -> int:
    """How many of the celeb world's people fall in the corpus's validation split (5% by hash).

    Pre-training needs at least one; known before any image is drawn, since identities are
    the world's seeded MIDs.
    """
    from pipeline.corpus.split import split_of
    from pipeline.synth.people import fake_mid

    return sum(split_of(fake_mid(seed, index)) == "val" for index in range(people))


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """``[demo 3/6 +1:02] corpus build ...`` lines: the stage, and the time since the start."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.start = time.perf_counter()
        self.index = 0
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> str:
        minutes, seconds = divmod(int(time.perf_counter() - self.start), 60)
        return f"{minutes}:{seconds:02d}"

    def say(self, text: str) -> None:
        print(f"[demo {self.index}/{STAGES} +{self.elapsed()}] {text}", file=self.out, flush=True)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[dict[str, str]]:
        """Time one stage; the caller may put a one-line ``result`` into the yielded dict."""
        self.index += 1
        self.say(f"{title} ...")
        note: dict[str, str] = {}
        started = time.perf_counter()
        try:
            yield note
        except BaseException:
            self.say(f"{title}: FAILED after {time.perf_counter() - started:.1f} s")
            raise
        self.seconds[key] = round(time.perf_counter() - started, 1)
        done = f"{title}: done in {self.seconds[key]:.1f} s"
        self.say(done + (f" ({note['result']})" if note.get("result") else ""))


# ---------------------------------------------------------------------------------------------
# Ray


def connect_ray(address: str | None, verbose: bool = False) -> dict[str, float]:
    """Join ``address`` / ``RAY_ADDRESS`` or start a local Ray; returns the cluster's resources."""
    import ray

    from pipeline.ray_runtime import ensure_ray

    ensure_ray(address, progress_bars=True)
    # One line per stage is the demo's output; per-operator bars would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return dict(ray.cluster_resources())


def cpus_per_worker(resources: dict[str, float], workers: int, use_gpu: bool) -> float:
    """A whole CPU per training worker when the cluster has room for it and Ray Data; else half."""
    if use_gpu:
        return 1.0
    return 1.0 if resources.get("CPU", 0) >= 2 * workers else 0.5


def fine_tuning_trainers(scale: DemoScale, folds: int = 3, arms: int = 2) -> int:
    """How many trainers the demo's fine-tuning starts: per arm, its folds in groups of
    ``folds_per_trainer`` (0 = one group)."""
    per = scale.folds_per_trainer or folds
    return arms * math.ceil(folds / per)


def finetune_cpus(cpus: int, concurrent_folds: int, use_gpu: bool, trainers: int = 6) -> float:
    """CPUs per fine-tuning trainer: the cluster's CPUs shared by the trainers that run at once.

    Each trainer's start (a controller and a worker process importing torch, Ray Train, MLflow:
    about 10 CPU-seconds) overlaps the others' training when they run at once.
    """
    if use_gpu:
        return 1.0
    at_once = trainers if concurrent_folds == 0 else min(concurrent_folds, trainers)
    # Rounded down: three trainers of round(2 / 3, 2) = 0.67 CPUs need 2.01 of 2, and Ray then
    # queues the third (measured: three "at once" ran two at a time).
    return max(0.25, min(1.0, math.floor(100 * cpus / at_once) / 100))


def warn_if_local_workdir_on_many_nodes(workdir: str, out: TextIO) -> None:
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if not is_s3(workdir) and len(nodes) > 1:
        print(
            f"[demo] warning: --workdir {workdir} is a local folder but the Ray cluster has "
            f"{len(nodes)} nodes; tasks on other nodes write to their own disks. Give "
            "--workdir s3://bucket/prefix unless the folder is shared storage.",
            file=out,
            flush=True,
        )


# ---------------------------------------------------------------------------------------------
# The demo


def read_recipe(path: str) -> dict[str, dict]:
    """The ``pretrain:`` / ``finetune:`` sections of a recipe YAML (``{}`` for none)."""
    if not path:
        return {}
    from pipeline.options import ConfigError, read_yaml_mapping

    data = read_yaml_mapping(path)
    unknown = sorted(set(data) - {"pretrain", "finetune"})
    if unknown:
        raise ConfigError(f"{path}: a recipe holds pretrain: and finetune: sections, not {unknown}")
    return data


def recipe_config(cls: type, recipe: dict | None, **demo: Any):
    """The product's defaults, then the recipe's settings, then the demo's own (its sizes win)."""
    from pipeline.options import from_dict, merge_dicts

    values = dict(demo)
    nested = {k: values.pop(k) for k in list(values) if isinstance(values[k], dict)}
    data = merge_dicts(recipe or {}, nested)
    config = from_dict(cls, data, where=cls.__name__)
    return dataclasses.replace(config, **values)
