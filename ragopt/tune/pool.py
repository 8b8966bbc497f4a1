"""What a tuned bi-encoder trains on: questions over one corpus with their relevant passages
(TrainingSource), and the training table built from the rows the study allows, one row per
(question, relevant passage) with hard negatives from ragopt.tune.negatives. Plain data and
numpy: the study decides which rows may train, this module only turns them into text."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ragopt.stages.cache import cache_key
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tuning import GIST_LOSSES, FinetuneSpec
from ragopt.tune.negatives import mine

if TYPE_CHECKING:
    from ragopt.stages.engine import Engine


@dataclass(frozen=True)
class TrainingSource:
    """Questions over one corpus with their relevant passages."""

    engine: Engine
    """Its corpus (engine.corpus), cache and retrievers."""
    qids: list[str]
    texts: list[str]
    groups: list[list[list[int]]]
    """Relevant corpus rows per question, as scoring.evaluation.Target.groups."""
    generated: bool = False

    def positives(self, row: int) -> list[int]:
        """Every relevant corpus row of a question: its groups flattened, each row once, in order."""
        return list(dict.fromkeys(r for group in self.groups[row] for r in group))


def normalized(text: str) -> str:
    """A question's text as two questions are compared: NFC, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def unseen_generated(generated: TrainingSource, excluded: Iterable[str]) -> np.ndarray:
    """Rows of generated questions whose NFC-normalized, whitespace-collapsed text equals no excluded text."""
    seen = {normalized(text) for text in excluded}
    return np.array([i for i, text in enumerate(generated.texts) if normalized(text) not in seen], dtype=np.int64)


@dataclass(frozen=True)
class TrainingTable:
    """The trainer's columns: "anchor", "positive", "negative_1".."negative_n" (prefixes applied),
    the question of each row, and how many (question, relevant passage) pairs were left out for
    want of hard negatives."""

    columns: dict[str, list[str]]
    qids: list[str]
    dropped: int = 0

    def key(self) -> str:
        """The content hash of the columns: equal tables train equal models."""
        return cache_key(list(self.columns.items()))

    def __len__(self) -> int:
        return len(self.qids)


def training_table(parts: list[tuple[TrainingSource, np.ndarray]], dense: DenseSpec, ft: FinetuneSpec,
                   bm25: list[BM25Spec], progress: bool = False) -> TrainingTable:
    """One row per (question, relevant passage) of the given rows of each source, with ft.negatives
    hard negatives per question from ragopt.tune.negatives (never a relevant passage). dense is the
    BASE (untuned) spec: its query_prefix/passage_prefix are prepended (prompt names go to the
    trainer). GIST losses take at most one negative column: with n > 1 the rows are exploded to
    triplets, one per negative. The other losses need all n negatives in every row: a question
    with fewer found leaves its pairs out (counted in `dropped`), as does a question with none
    found under GIST."""
    gist = ft.loss in GIST_LOSSES
    width = min(ft.negatives, 1) if gist else ft.negatives
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{f"negative_{k + 1}": [] for k in range(width)}}
    qids: list[str] = []
    dropped = 0
    for source, rows in parts:
        contents = source.engine.corpus.contents
        for row, negatives in zip(rows, mine(source, rows, dense, ft, bm25, progress)):
            positives = source.positives(int(row))
            found = [dense.passage_prefix + contents[r] for r in negatives if r >= 0]
            if gist:
                sets = [[text] for text in found] if ft.negatives else [[]]
            else:
                sets = [found] if len(found) == ft.negatives else []
            if not sets:
                dropped += len(positives)
            for passage in positives:
                for negative_set in sets:
                    qids.append(source.qids[row])
                    columns["anchor"].append(dense.query_prefix + source.texts[row])
                    columns["positive"].append(dense.passage_prefix + contents[passage])
                    for k, text in enumerate(negative_set):
                        columns[f"negative_{k + 1}"].append(text)
    return TrainingTable(columns, qids, dropped)
