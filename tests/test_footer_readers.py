"""A Parquet read starts two footer-reading actors, not Ray Data's 32 (one Python process each)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray
from corpus_fixture import make_corpus
from ray.util.state import list_actors

from pipeline.corpus.read import read_corpus

NAME = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


@pytest.mark.parametrize(("chosen", "expected"), [(None, "2"), ("16", "16")])
def test_the_package_picks_two_footer_readers_unless_the_user_chose(chosen, expected):
    env = {k: v for k, v in os.environ.items() if k != NAME}
    if chosen is not None:
        env[NAME] = chosen
    probe = f"import pipeline, os; print(os.environ[{NAME!r}])"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == expected


def footer_readers() -> set[str]:
    """Ids of every FooterReader actor this cluster has started (alive or dead)."""
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "FooterReader")],
        limit=10_000,
        raise_on_missing_output=False,
    )
    return {actor.actor_id for actor in actors}


def test_a_corpus_read_starts_at_most_two_footer_readers(tmp_path, ray_local):
    corpus = make_corpus(tmp_path / "c", images=64, identities=8, files=4)
    before = footer_readers()
    assert len(read_corpus(corpus.uri, labelled_only=False).take_all()) == 64
    started = footer_readers() - before
    assert 1 <= len(started) <= 2
