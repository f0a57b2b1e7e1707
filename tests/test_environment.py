"""Temporary environment changes end exactly as they began, also when the block raises."""

from __future__ import annotations

import os

import pytest

from pipeline.environment import environment, restored_environment


def test_variables_are_set_unset_and_restored_even_after_an_error(monkeypatch):
    monkeypatch.setenv("FACS_T_KEPT", "before")
    monkeypatch.delenv("FACS_T_ABSENT", raising=False)
    with pytest.raises(RuntimeError), environment(FACS_T_KEPT=None, FACS_T_ABSENT="during"):
        assert "FACS_T_KEPT" not in os.environ
        assert os.environ["FACS_T_ABSENT"] == "during"
        raise RuntimeError
    assert os.environ["FACS_T_KEPT"] == "before"
    assert "FACS_T_ABSENT" not in os.environ


def test_changes_made_inside_a_restored_block_are_undone(monkeypatch):
    monkeypatch.setenv("FACS_T_KEPT", "before")
    monkeypatch.delenv("FACS_T_ABSENT", raising=False)
    with restored_environment("FACS_T_KEPT", "FACS_T_ABSENT"):
        os.environ["FACS_T_KEPT"] = "changed"
        os.environ["FACS_T_ABSENT"] = "made"
    assert os.environ["FACS_T_KEPT"] == "before"
    assert "FACS_T_ABSENT" not in os.environ
