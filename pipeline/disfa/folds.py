"""Subject-independent cross-validation folds on DISFA: the paper's split or a seeded one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCHEMES: tuple[str, ...] = ("paper", "seeded")

#: The paper's 3 test folds: the subjects of the released ``fold1_test.csv``, ``fold2_test.csv``
#: and ``fold3_test.csv`` (facialactionpretrain/facs; checked against those files by the tests).
PAPER_TEST_FOLDS: tuple[tuple[str, ...], ...] = (
    ("SN002", "SN005", "SN006", "SN007", "SN012", "SN013", "SN016", "SN018", "SN026"),
    ("SN001", "SN003", "SN004", "SN009", "SN010", "SN011", "SN025", "SN029", "SN030"),
    ("SN008", "SN017", "SN021", "SN023", "SN024", "SN027", "SN028", "SN031", "SN032"),
)


class FoldError(ValueError):
    """The subjects cannot be split as asked."""


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold (``index`` 1-based): disjoint test, train and validation subjects."""

    index: int
    test_subjects: tuple[str, ...]
    train_subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]


def _test_groups(subjects: list[str], scheme: str, seed: int, folds: int) -> list[list[str]]:
    if scheme == "paper":
        if folds != len(PAPER_TEST_FOLDS):
            raise FoldError(f"the paper's split has {len(PAPER_TEST_FOLDS)} folds, not {folds}")
        known = {s for fold in PAPER_TEST_FOLDS for s in fold}
        unknown = sorted(set(subjects) - known)
        if unknown:
            raise FoldError(
                f"subjects {unknown} are in none of the paper's folds; use scheme='seeded'"
            )
        present = set(subjects)
        groups = [sorted(s for s in fold if s in present) for fold in PAPER_TEST_FOLDS]
        empty = [k + 1 for k, group in enumerate(groups) if not group]
        if empty:
            raise FoldError(
                f"paper fold(s) {empty} have no test subject among the {len(subjects)} present "
                f"({subjects}); give more subjects or use scheme='seeded'"
            )
        return groups
    if len(subjects) < folds:
        raise FoldError(f"{folds} folds need at least {folds} subjects, got {subjects}")
    order = np.random.default_rng(seed).permutation(len(subjects))
    return [sorted(subjects[i] for i in part) for part in np.array_split(order, folds)]


def make_folds(
    subjects: Sequence[str],
    scheme: str = "paper",
    seed: int = 0,
    val_subjects_per_fold: int = 2,
    folds: int = 3,
) -> list[Fold]:
    """Folds over ``subjects``: each fold's test subjects, and its training subjects with
    ``val_subjects_per_fold`` of them (chosen with ``seed``) moved to validation.

    ``paper``: test subjects are the paper's folds, restricted to the subjects present (a fold left
    without any raises). ``seeded``: a random partition into ``folds`` near-equal groups.
    """
    if scheme not in SCHEMES:
        raise FoldError(f"fold scheme: expected one of {SCHEMES}, got {scheme!r}")
    if val_subjects_per_fold < 0:
        raise FoldError(f"val_subjects_per_fold must be >= 0, got {val_subjects_per_fold}")
    subjects = sorted(set(subjects))
    result = []
    for k, test in enumerate(_test_groups(subjects, scheme, seed, folds), start=1):
        rest = [s for s in subjects if s not in test]
        if len(rest) <= val_subjects_per_fold:
            raise FoldError(
                f"fold {k}: {len(rest)} subjects outside the test fold cannot give "
                f"{val_subjects_per_fold} validation subjects and still leave some to train on"
            )
        rng = np.random.default_rng([seed, k])
        val = sorted(rest[i] for i in rng.choice(len(rest), val_subjects_per_fold, replace=False))
        train = [s for s in rest if s not in val]
        fold = Fold(k, tuple(test), tuple(train), tuple(val))
        check_disjoint(fold)
        result.append(fold)
    return result


def check_disjoint(fold: Fold) -> None:
    """Raise when a subject is in two of the fold's test, train and validation sets."""
    parts = {"test": fold.test_subjects, "train": fold.train_subjects, "val": fold.val_subjects}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(parts[a]) & set(parts[b]))
            if shared:
                raise FoldError(f"fold {fold.index}: subjects {shared} in both {a} and {b}")
