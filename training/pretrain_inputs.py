"""What a pre-training run starts from: the corpus version (or subset) it reads, refused when
it holds no labelled training row, and the run folder it creates or, with ``--resume``,
continues (its ``facs_run.json`` record ties the folder to its MLflow run and pixel mean)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.corpus.manifest import CorpusError, load_manifest
from pipeline.corpus.read import labelled_counts
from pipeline.schema import UNLABELLED
from pipeline.storage import Location
from training.pretrain_config import PretrainConfig

RUN_INFO = "facs_run.json"


@dataclass
class CorpusFacts:
    uri: str
    version: int
    subset: str | None
    manifest_hash: str


def corpus_facts(config: PretrainConfig) -> CorpusFacts:
    if not config.corpus:
        raise ValueError("PretrainConfig.corpus: expected a corpus URI (--corpus), got none")
    manifest = load_manifest(config.corpus)
    version = manifest.latest if config.version is None else config.version
    if config.subset is not None:
        if config.subset not in manifest.subsets:
            known = ", ".join(sorted(manifest.subsets)) or "none"
            raise CorpusError(
                f"no subset named {config.subset!r} in {config.corpus} (known: {known})"
            )
        version = manifest.subsets[config.subset].version
    return CorpusFacts(config.corpus, version, config.subset, manifest.content_hash(version))


def check_labelled(facts: CorpusFacts) -> dict[str, dict[str, int]]:
    """Refuse a corpus (version, subset) with no labelled training row, saying how to label;
    else its rows and labelled rows per split (read once: the run logs and caches by them)."""
    counts = labelled_counts(facts.uri, facts.version, facts.subset)
    where = f"corpus {facts.uri} version {facts.version}" + (
        f" subset {facts.subset}" if facts.subset else ""
    )
    rows = sum(c["rows"] for c in counts.values())
    if not any(c["labelled"] for c in counts.values()):
        raise CorpusError(
            f"{where}: no row is labelled ({rows} rows, all stored without AU labels, "
            f"label_source '{UNLABELLED}'); pre-training needs AU labels. Label faces as a corpus "
            "version is built or added: from label files (--labels-release-csv, "
            "--labels-openface-images, --labels-openface-sequence) or with a trained model "
            "(--label-model models:/facs-vgg13-pretrained/N, runs:/... or a checkpoint); "
            "see `facs corpus build --help`"
        )
    if not counts["train"]["labelled"]:
        raise CorpusError(
            f"{where}: none of its {counts['val']['labelled']} labelled rows is in the train "
            "split (the split is 95/5 by identity: add more people)"
        )
    return counts


def read_run_info(run_dir: Location) -> dict[str, Any] | None:
    info = run_dir.join(RUN_INFO)
    if not info.exists():
        return None
    try:
        return json.loads(info.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{info.uri}: not valid JSON ({error}); expected a facs run record"
        ) from error


def newest_run(root: Location) -> str | None:
    """The name of the most recently created run directly under ``root`` (by its record)."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(root.path, recursive=False, allow_not_found=True)
    runs = []
    for info in root.fs.get_file_info(selector):
        if info.type == pafs.FileType.Directory:
            record = read_run_info(root.join(info.base_name))
            if record is not None:
                runs.append((record.get("created", ""), info.base_name))
    return max(runs)[1] if runs else None


def choose_run(config: PretrainConfig, root: Location) -> tuple[str, dict[str, Any] | None]:
    """``(run name, existing run record or None)``, refusing to start over an existing run."""
    if config.resume:
        name = config.run_name or newest_run(root)
        if name is None:
            raise ValueError(f"--resume: no run to resume under {root.uri}")
        record = read_run_info(root.join(name))
        if record is None:
            raise ValueError(
                f"--resume: {root.join(name).uri} has no {RUN_INFO}; nothing to resume"
            )
        return name, record
    name = config.run_name or "pretrain-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if read_run_info(root.join(name)) is not None:
        raise ValueError(
            f"run {name!r} already exists at {root.join(name).uri}: pass --resume to continue it "
            "or choose another --run-name"
        )
    return name, None


def check_same_corpus(record: dict[str, Any], facts: CorpusFacts, where: str) -> None:
    saved = record.get("corpus", {})
    now = asdict(facts)
    different = {k: (saved.get(k), now[k]) for k in now if saved.get(k) != now[k]}
    if different:
        raise ValueError(
            f"{where}: --resume with another corpus than the run was started with "
            f"(field: (then, now)): {different}"
        )
