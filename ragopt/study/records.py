"""Trial records: what every finished trial stores in the Optuna storage, typed, and the tables
derived from them. Each record carries the trial's relevance gains (questions x depth, one bit
each), from which every metric at every k of every question is recomputed exactly, so a resumed
study, or one whose trials come from workers on other machines, has per-question values for all
of its trials without reading any file of theirs. Plain data: no torch."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from ragopt.data.qa import QASet
from ragopt.scoring.metrics import METRICS, at_k, group_counts
from ragopt.stages.spec import PipelineSpec

RECORD = "ragopt"
"""The user attribute of an Optuna trial that holds its TrialRecord."""


class TrialRecord(BaseModel):
    """One finished trial: the pipeline it ran, how it scored and how long it took."""

    model_config = ConfigDict(frozen=True)

    pipeline: PipelineSpec
    description: str
    reused: bool
    """Its ranking came from an earlier trial (the same pipeline, or one that differs only in top_k)."""
    seconds_per_query: float
    gains: str
    """Base64 of the bit-packed relevance matrix (questions x depth, row-major)."""
    depth: int
    ranking: str | None = None
    """The key of its ranking in the output folder's runs/ (ragopt.study.runs.RankingStore); None in
    a trial of an earlier ragopt, which wrote runs/<trial>.trec instead."""
    n_rel: str | None = None
    """Base64 of each question's number of relevant passages (int32) on this trial's own corpus
    (a chunking of documents); None when every trial shares the QA set's corpus and groups."""
    extra: dict[str, str] = {}
    """Per-question values (base64 of float32) of the metrics the gains cannot give back: the
    evidence metrics of span-labelled questions, keyed like 'evidence_recall@5'."""
    generated: str | None = None
    """Each generated question's objective value (base64 of float32; data.generated_qa), which
    measures whether generated questions rank pipelines as the real ones do; None without them."""

    @classmethod
    def of(cls, pipeline: PipelineSpec, gains: np.ndarray, reused: bool, seconds_per_query: float,
           ranking: str, n_rel: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None,
           generated: np.ndarray | None = None) -> "TrialRecord":
        packed = base64.b64encode(np.packbits(gains.astype(bool).ravel()).tobytes()).decode()
        return cls(pipeline=pipeline, description=pipeline.describe(), reused=reused,
                   seconds_per_query=seconds_per_query, gains=packed, depth=gains.shape[1], ranking=ranking,
                   n_rel=None if n_rel is None else _b64(n_rel.astype(np.int32)),
                   extra={name: _b64(v.astype(np.float32)) for name, v in (extra or {}).items()},
                   generated=None if generated is None else _b64(generated.astype(np.float32)))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "TrialRecord":
        return cls.model_validate(attrs[RECORD])

    def to_attr(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def relevance(self, n_questions: int) -> np.ndarray:
        """The relevance gains back as a boolean (questions x depth) matrix."""
        bits = np.unpackbits(np.frombuffer(base64.b64decode(self.gains), dtype=np.uint8))
        return bits[: n_questions * self.depth].reshape(n_questions, self.depth).astype(bool)

    def per_question(self, qa: QASet, ks: list[int], names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Every metric at every k for every question, recomputed from the gains, with the
        evidence metrics the trial stored."""
        n_rel = group_counts(qa.groups) if self.n_rel is None else _unb64(self.n_rel, np.int32).astype(np.float64)
        values = at_k(self.relevance(len(qa)), n_rel, ks, tuple(n for n in names if n in METRICS))
        values.update({name: _unb64(v, np.float32).astype(np.float64) for name, v in self.extra.items()
                       if name.partition("@")[0] in names})
        return values

    def generated_values(self) -> np.ndarray | None:
        """Each generated question's objective value (float64 of the stored float32), or None."""
        return None if self.generated is None else _unb64(self.generated, np.float32).astype(np.float64)


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode()


def _unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def finished(study: Any) -> list[tuple[Any, TrialRecord]]:
    """The completed trials of an Optuna study with their records, in trial order."""
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(t, TrialRecord.from_attrs(t.user_attrs)) for t in trials if RECORD in t.user_attrs]


def trials_table(trials: list[tuple[Any, TrialRecord]], values: list[dict[str, np.ndarray]],
                 objectives: list[np.ndarray], held: np.ndarray, domains: list[str] | None = None) -> pd.DataFrame:
    """One row per finished trial: its value (the objective on the selection questions, what
    Optuna optimized) and, with a holdout, its value on the held-out questions; its value on each
    domain's selection questions (`domain.<name>`); parameters, the pipeline (described, and
    keyed by its full spec) and its choices by kind; with generated questions, the mean objective
    on them (`value.generated`); the mean of every metric at every k on the selection questions
    (from each trial's per-question `values`, so a resumed study reports the metrics its config
    asks for now); seconds per question."""
    selection = ~held
    labels = np.asarray(domains) if domains is not None else None
    masks = {d: selection & (labels == d) for d in sorted(set(domains))} if domains is not None else {}
    rows = []
    for (trial, record), per_question, objective in zip(trials, values, objectives):
        row: dict[str, Any] = {"trial": trial.number, "value": float(objective[selection].mean())}
        if held.any():
            row["value.holdout"] = float(objective[held].mean())
        if (generated := record.generated_values()) is not None:
            row["value.generated"] = float(generated.mean())
        row.update({f"domain.{d}": float(objective[m].mean()) if m.any() else np.nan for d, m in masks.items()})
        row["pipeline"] = record.description
        row["pipeline_key"] = record.pipeline.key()
        row.update({f"param.{k}": v for k, v in trial.params.items()})
        row.update({f"choice.{k}": v for k, v in record.pipeline.choices().items()})
        row.update({name: float(v[selection].mean()) for name, v in per_question.items()})
        row["seconds_per_query"] = record.seconds_per_query
        row["reused"] = record.reused
        rows.append(row)
    table = pd.DataFrame(rows)
    params = sorted(c for c in table.columns if c.startswith("param."))
    domain_columns = [c for c in table.columns if c.startswith("domain.")]
    values_first = [c for c in ("trial", "value", "value.holdout", "value.generated") if c in table]
    first = values_first + domain_columns + ["pipeline", *params]
    return table[first + [c for c in table.columns if c not in first]]


def per_question_table(trials: list[tuple[Any, TrialRecord]], values: list[dict[str, np.ndarray]],
                       objectives: list[np.ndarray], qa: QASet, held: np.ndarray, folds: np.ndarray | None
                       ) -> pd.DataFrame:
    """One row per (trial, question): the question's id, domain, split ('selection' or 'holdout')
    and fold, its objective value (float64, what trials are ranked by) and every metric at every k
    (float32), the values the trial's means are averages of."""
    frames = []
    split = np.where(held, "holdout", "selection")
    for (trial, _), per_question, objective in zip(trials, values, objectives):
        frame = pd.DataFrame({"objective": objective,
                              **{k: v.astype(np.float32) for k, v in per_question.items()}})
        frame.insert(0, "fold", np.int32(-1) if folds is None else folds.astype(np.int32))
        frame.insert(0, "split", split)
        if qa.domains is not None:
            frame.insert(0, "domain", qa.domains)
        frame.insert(0, "qid", qa.qids)
        frame.insert(0, "trial", np.int32(trial.number))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
