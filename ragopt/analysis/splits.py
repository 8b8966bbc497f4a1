"""Which questions a study selects its winner on and which it keeps to score the winner honestly:
a seeded holdout stratified by domain, and k folds of the selection questions. Plain numpy.

A winner picked out of many trials on the questions it is scored on is flattered; its score on
questions the selection never saw is not. Stratifying keeps every domain's share the same on both
sides, so a small domain is not left out of either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ragopt.errors import StudyError

if TYPE_CHECKING:
    from ragopt.search.config import StudyConfig

HOLDOUT = -1
"""The fold number of a held-out question (folds divide the selection questions only)."""


def _groups(domains: Sequence[str] | None, n: int) -> list[np.ndarray]:
    """The rows of each domain, domains in sorted order (one group when there are none)."""
    if domains is None:
        return [np.arange(n)]
    labels = np.asarray(domains)
    return [np.flatnonzero(labels == d) for d in sorted(set(domains))]


def holdout_mask(domains: Sequence[str] | None, n: int, fraction: float, seed: int) -> np.ndarray:
    """True for the questions held out: round(fraction x size) of each domain, at least one of a
    domain of two or more and never all of it, drawn with `seed`."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout must be in [0, 1); got {fraction}")
    held = np.zeros(n, dtype=bool)
    if fraction == 0:
        return held
    rng = np.random.default_rng(seed)
    for rows in _groups(domains, n):
        size = len(rows)
        count = min(max(round(fraction * size), 1), size - 1) if size > 1 else 0
        held[rng.permutation(rows)[:count]] = True
    return held


def fold_ids(domains: Sequence[str] | None, held: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every selection question, HOLDOUT for held-out ones: each domain's
    questions shuffled with `seed` and dealt round-robin, continuing where the last domain stopped,
    so folds differ in size by at most one and each holds its share of every domain."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2; got {folds}")
    if (~held).sum() < folds:
        raise ValueError(f"{folds} folds need at least {folds} selection questions; got {(~held).sum()}")
    ids = np.full(len(held), HOLDOUT, dtype=np.int64)
    rng = np.random.default_rng(seed + 1)
    start = 0
    for rows in _groups(domains, len(held)):
        rows = rng.permutation(rows[~held[rows]])
        ids[rows] = (start + np.arange(len(rows))) % folds
        start += len(rows)
    return ids


def study_splits(study: "StudyConfig", domains: Sequence[str] | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out questions and the folds of the others that a study's settings ask for,
    refusing settings the data cannot meet before any trial runs."""
    if study.per_domain and domains is None:
        raise StudyError("study.per_domain needs each question's domain: set data.domain_column or "
                         "data.domain_pattern")
    held = holdout_mask(domains, n, study.holdout, study.seed)
    try:
        return held, fold_ids(domains, held, study.folds, study.seed) if study.folds else None
    except ValueError as error:
        raise StudyError(f"study.folds: {error}; lower folds or holdout") from None
