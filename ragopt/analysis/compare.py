"""Comparing pipelines and choices per domain, with intervals and paired tests, from a study's
per-question values.

A winner is picked on the selection questions; it is scored, with a bootstrap interval, on the
held-out questions when the study kept some (otherwise on the same questions, which flatters it,
and the tables say so). Differences are paired tests over the same questions, Holm-corrected
within each table or domain, so "significant" means what it says at the chosen level. Pipelines
with the same value on every question a table uses are one row (a difference between them is
zero by construction), led by the one the study's tie rule picks (ragopt.analysis.selection.cost).

Example:
    results = StudyResults.load("configs/autorag-ko-output")
    table = choice_matrix(results, "ndcg@10", by="model")
    print(table[table.best | table.tied])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ragopt.errors import StudyError
from ragopt.analysis.selection import fingerprint, ranked, tie_groups
from ragopt.analysis.stats import PairedComparison, bootstrap_ci, holm, paired_test

ALL = "(all)"
"""The row or column of every question, next to the domains."""
BY = ("retriever", "model", "tokenizer", "reranker", "chunker")
By = Literal["retriever", "model", "tokenizer", "reranker", "chunker"]


@dataclass
class Settings:
    """How intervals and tests are computed: level, resamples and seed (a study's `confidence`
    and `seed` by default)."""

    confidence: float = 0.95
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise StudyError(f"confidence must be between 0.5 and 1 (e.g. 0.95); got {self.confidence}")
        if self.resamples < 100:
            raise StudyError(f"resamples must be at least 100 (10000 recommended); got {self.resamples}")

    @property
    def alpha(self) -> float:
        return 1 - self.confidence


@dataclass
class StudyResults:
    """A study's trials (trials.csv), per-question values (per_question.parquet) and manifest
    (study.json), as its output folder holds them."""

    trials: pd.DataFrame
    per_question: pd.DataFrame
    manifest: dict[str, Any]

    @classmethod
    def load(cls, output: str | Path) -> "StudyResults":
        output = Path(output)
        missing = [n for n in ("trials.csv", "per_question.parquet", "study.json") if not (output / n).exists()]
        if missing:
            raise StudyError(f"{output} has no {', '.join(missing)}: give the output folder of `ragopt optimize` "
                             "(made by this version; rerun the optimize command to rewrite an older one)")
        return cls(pd.read_csv(output / "trials.csv"), pd.read_parquet(output / "per_question.parquet"),
                   json.loads((output / "study.json").read_text(encoding="utf-8")))

    @cached_property
    def questions(self) -> pd.DataFrame:
        """One row per question: qid, domain (ALL-less), split and fold, in QA order."""
        first = self.per_question["trial"].iloc[0]
        columns = [c for c in ("qid", "domain", "split", "fold") if c in self.per_question]
        return self.per_question.loc[self.per_question["trial"] == first, columns].reset_index(drop=True)

    @property
    def has_holdout(self) -> bool:
        return bool((self.questions["split"] == "holdout").any())

    def values(self, metric: str) -> np.ndarray:
        """(questions x trials) values of a per-question column, trials in trials.csv order."""
        known = [c for c in self.per_question.columns if c == "objective" or "@" in c]
        if metric not in known:
            raise StudyError(f"unknown metric {metric!r}; choose from {known}")
        wide = self.per_question.pivot(index="qid", columns="trial", values=metric)
        return wide.loc[self.questions["qid"], self.trials["trial"]].to_numpy(np.float64)

    def groups(self) -> dict[str, np.ndarray]:
        """ALL and each domain: a mask over the questions."""
        questions = self.questions
        result = {ALL: np.ones(len(questions), dtype=bool)}
        if "domain" in questions:
            for domain in sorted(questions["domain"].unique()):
                result[domain] = (questions["domain"] == domain).to_numpy()
        return result

    def folds(self) -> np.ndarray | None:
        """Each question's fold (HOLDOUT for held-out ones), or None for a study without folds."""
        folds = self.questions["fold"].to_numpy() if "fold" in self.questions else None
        return folds if folds is not None and (folds >= 0).any() else None

    def sides(self) -> tuple[np.ndarray, np.ndarray]:
        """The selection questions and the questions winners are scored on (held out, when any)."""
        split = self.questions["split"].to_numpy()
        selection = split == "selection"
        return selection, (split == "holdout") if self.has_holdout else selection


def _eligible(results: StudyResults) -> np.ndarray:
    """Which trials may win: those within the study's latency budget (all without one)."""
    trials = results.trials
    return trials["feasible"].to_numpy(bool) if "feasible" in trials else np.ones(len(trials), dtype=bool)


def distinct(results: StudyResults) -> np.ndarray:
    """Positions of the eligible trials, one per distinct pipeline (the earliest; pipelines are
    told apart by their full spec, not by their one-line description)."""
    trials = results.trials
    first = ~trials["pipeline_key" if "pipeline_key" in trials else "pipeline"].duplicated().to_numpy()
    return np.flatnonzero(first & _eligible(results))


def _ranked(results: StudyResults, positions: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Positions by mean, best first, equal means ordered as the study orders its winner (the
    faster first when the study optimized latency too, then the cheaper by the tie rule, then the
    earlier trial)."""
    full = np.zeros(len(results.trials))
    full[positions] = means
    trials = results.trials
    by_speed = results.manifest.get("latency") == "pareto"
    return ranked(positions, full, trials["seconds_per_query"].to_numpy(np.float64) if by_speed else None,
                  trials["cost_rank"].to_numpy(np.int64) if "cost_rank" in trials else None)


def ranking(results: StudyResults, metric: str = "objective") -> np.ndarray:
    """The distinct eligible trials' positions, best first by their mean on the selection
    questions, equal means ordered as the study orders its winner."""
    selection, _ = results.sides()
    candidates = distinct(results)
    return _ranked(results, candidates, results.values(metric)[selection][:, candidates].mean(axis=0))


def alike(values: np.ndarray, order: np.ndarray, questions: np.ndarray) -> list[np.ndarray]:
    """`order` (positions, best first) in groups of pipelines with the same `values` on every one
    of `questions`, each led by its best-ranked member."""
    return tie_groups(order, lambda position: fingerprint(values[questions, position]))


def ties(results: StudyResults, group: np.ndarray) -> dict[str, Any]:
    """A table row's tie columns for the pipelines of `group` (its leader first): how many others
    score alike (`ties`), their trials (`tied_trials`, space-separated) and the parameters in
    which they differ (`ties_differ`, e.g. 'retriever bm25/hybrid, b 0.81–0.99, k1 1.16–1.99')."""
    trials = results.trials.iloc[group]
    params = sorted((c for c in trials.columns if c.startswith("param.")), key=lambda c: c != "param.retriever")
    varying = {c: v for c in params if (v := trials[c].dropna()).nunique() > 1}
    names = [c.removeprefix("param.").split(".", 1)[-1] for c in varying]
    parts = []
    for (column, shown), name in zip(varying.items(), names):
        label = name if names.count(name) == 1 else column.removeprefix("param.")
        if pd.api.types.is_numeric_dtype(shown) and not pd.api.types.is_bool_dtype(shown):
            parts.append(f"{label} {_number(shown.min())}–{_number(shown.max())}")
        else:
            parts.append(f"{label} {'/'.join(map(str, dict.fromkeys(shown)))}")
    return {"ties": len(group) - 1, "tied_trials": " ".join(str(t) for t in trials["trial"].iloc[1:]),
            "ties_differ": ", ".join(parts)}


def _number(value: float) -> str:
    """A parameter value to read: whole numbers whole, others to 3 significant digits."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e6 else f"{value:.3g}"


def tie_note(count: Any, differ: Any = "", alike: str = "") -> str:
    """What a row's pipeline text gets when the row stands for several: ' (and 9 tying
    pipelines: b 0.81–0.99, k1 1.16–1.99)', or with `alike` (e.g. 'the same curves') ' (and 9
    pipelines with the same curves: ...)'; nothing for a pipeline alone."""
    if pd.isna(count) or not int(count):
        return ""
    plural = "s" if int(count) > 1 else ""
    what = f": {differ}" if isinstance(differ, str) and differ else ""
    return f" (and {int(count)} {f'pipeline{plural} with {alike}' if alike else f'tying pipeline{plural}'}{what})"


def winner_ties(results: StudyResults) -> dict[str, Any]:
    """The tie columns of the overall winner (the first row of `runner_ups` on the objective):
    the pipelines with its value on every question it is selected and scored on."""
    selection, evaluation = results.sides()
    return ties(results, alike(results.values("objective"), ranking(results), selection | evaluation)[0])


def _judged_on(results: StudyResults) -> str:
    """The questions winners are scored on, for the tables' `judged_on` column."""
    return "holdout" if results.has_holdout else "selection (flattered)"


def described(table: pd.DataFrame) -> str:
    """What a table's scores and tests are computed on (its `judged_on`), in words, for the pages
    that show it."""
    judged_on = table["judged_on"].iloc[0] if "judged_on" in table and len(table) else ""
    return {"out of fold": "out of fold on every question of the domain (a question in fold f by the trial best on "
                           "the other folds; held-out questions by the overall pick; the ★ cell by the best choice "
                           "picked without the question)",
            "holdout": "on the held-out questions"}.get(judged_on,
                                                        "on the selection questions, which flatters them")


def _scored(values: np.ndarray, settings: Settings) -> tuple[float, float, float]:
    mean, low, high = bootstrap_ci(values, confidence=settings.confidence, n_resamples=settings.resamples,
                                   seed=settings.seed)
    return float(mean), float(low), float(high)


def _tested(a: np.ndarray, b: np.ndarray, settings: Settings) -> PairedComparison:
    return paired_test(a, b, confidence=settings.confidence, n_resamples=settings.resamples, seed=settings.seed)


def _holm(table: pd.DataFrame, tested: np.ndarray, difference: str, alpha: float) -> pd.Series:
    """Holm-correct the p-values of the `tested` rows into `p_holm`; which rows' `difference` is
    significantly above 0."""
    table["p_holm"] = np.nan
    if tested.any():
        table.loc[tested, "p_holm"] = holm(table.loc[tested, "p"].to_numpy())
    return table["p_holm"].lt(alpha) & table[difference].gt(0)


def winners(results: StudyResults, metric: str = "objective", settings: Settings | None = None,
            min_questions: int = 1) -> pd.DataFrame:
    """The best pipeline of every domain (and of ALL): selected on the domain's selection
    questions, scored with an interval on its evaluation questions, and its margin over the
    runner-up there, the best pipeline that does not score alike on the domain's questions (a
    paired test, Holm-corrected across the domains); with the tie columns of its pipelines."""
    settings = settings or Settings()
    values = results.values(metric)
    selection, evaluation = results.sides()
    candidates = distinct(results)
    rows = []
    for domain, mask in results.groups().items():
        chosen_on, scored_on = selection & mask, evaluation & mask
        if not chosen_on.any() or not scored_on.any():
            continue
        groups = alike(values, _ranked(results, candidates, values[chosen_on][:, candidates].mean(axis=0)),
                       chosen_on | scored_on)
        best, runner = groups[0][0], groups[1][0] if len(groups) > 1 else None
        score, low, high = _scored(values[scored_on, best], settings)
        row = {"domain": domain, "questions": int(chosen_on.sum()), "enough": int(chosen_on.sum()) >= min_questions,
               "judged_on": _judged_on(results),
               "trial": int(results.trials["trial"].iloc[best]), "pipeline": results.trials["pipeline"].iloc[best],
               **ties(results, groups[0]),
               "selected": float(values[chosen_on, best].mean()), "score": score, "low": low, "high": high,
               "scored_on": int(scored_on.sum())}
        if runner is not None:
            test = _tested(values[scored_on, best], values[scored_on, runner], settings)
            row.update({"runner_up": int(results.trials["trial"].iloc[runner]),
                        "runner_up_pipeline": results.trials["pipeline"].iloc[runner],
                        "margin": test.difference, "margin_low": test.low, "margin_high": test.high,
                        "p": test.p_value})
        rows.append(row)
    table = pd.DataFrame(rows)
    if "p" in table:
        table["significant"] = _holm(table, table["p"].notna().to_numpy(), "margin", settings.alpha)
    return table


def runner_ups(results: StudyResults, metric: str = "objective", top: int = 10,
               settings: Settings | None = None) -> pd.DataFrame:
    """The overall winner against the next `top` pipelines that score differently (by selection
    score): each one's score and interval on the evaluation questions, the paired difference
    from the winner with its interval, and the Holm-corrected p-value of the difference. A row
    stands for every pipeline with the same values on the selection and evaluation questions
    (its tie columns name them), so no runner-up is a twin of the winner or of another row."""
    settings = settings or Settings()
    values = results.values(metric)
    selection, evaluation = results.sides()
    if top < 1:
        raise StudyError(f"--top must be at least 1; got {top}")
    groups = alike(values, ranking(results, metric), selection | evaluation)[: top + 1]
    best = groups[0][0]
    rows = []
    for group in groups:
        position = group[0]
        score, low, high = _scored(values[evaluation, position], settings)
        row = {"trial": int(results.trials["trial"].iloc[position]), "judged_on": _judged_on(results),
               "pipeline": results.trials["pipeline"].iloc[position], **ties(results, group),
               "selected": float(values[selection, position].mean()), "score": score, "low": low, "high": high}
        if position != best:
            test = _tested(values[evaluation, best], values[evaluation, position], settings)
            row.update({"difference": test.difference, "difference_low": test.low, "difference_high": test.high,
                        "p": test.p_value})
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table) > 1:
        table["significant"] = _holm(table, table.index.to_numpy() >= 1, "difference", settings.alpha)
    return table


def _parts(mask: np.ndarray, selection: np.ndarray, evaluation: np.ndarray, folds: np.ndarray | None
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(chosen on, judged on) pairs of question masks within `mask`: the selection questions and
    the evaluation ones; with folds, also each fold judged by the other folds."""
    parts = []
    if folds is not None:
        for fold in np.unique(folds[mask & selection]):
            train = mask & selection & (folds != fold)
            if train.any():
                parts.append((train, mask & selection & (folds == fold)))
    if folds is None or (evaluation & mask & ~selection).any():
        parts.append((mask & selection, mask & evaluation))
    return parts


def _judged(results: StudyResults, values: np.ndarray, members: dict[str, np.ndarray], mask: np.ndarray,
            selection: np.ndarray, evaluation: np.ndarray, folds: np.ndarray | None
            ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Every choice's values on the questions it is judged on, each question scored by the
    choice's trial chosen without it, and the values of the best choice chosen without it (the
    same choice or another), so that the paired test of a choice against the best compares two
    selections neither of which saw the question."""
    judged = np.zeros(len(values), dtype=bool)
    scores = {choice: np.zeros(len(values)) for choice in members}
    best = np.zeros(len(values))
    for train, test in _parts(mask, selection, evaluation, folds):
        means = values[train].mean(axis=0)
        picks = {choice: _ranked(results, trials, means[trials])[0] for choice, trials in members.items()}
        top = _ranked(results, np.array(list(picks.values())), means[list(picks.values())])[0]
        for choice, pick in picks.items():
            scores[choice][test] = values[test, pick]
        best[test] = values[test, top]
        judged |= test
    return judged, {choice: v[judged] for choice, v in scores.items()}, best[judged]


def choice_matrix(results: StudyResults, metric: str = "objective", by: By = "model",
                  settings: Settings | None = None) -> pd.DataFrame:
    """Choice x domain: the best trial of each choice in each domain (chosen on the domain's
    selection questions), whether it is the domain's best, and its score with an interval on
    questions that did not choose it: the held-out ones, and with folds every selection question
    too, scored by the trial chosen on the other folds. The best choice's score is that of
    picking the best choice without the question (in a fold, the best on the other folds), so
    that being picked on the same questions does not flatter it. A choice is `tied` when it is
    not significantly worse than that (paired tests on the same questions, Holm-corrected within
    the domain)."""
    if by not in BY:
        raise StudyError(f"--by must be one of {list(BY)}; got {by!r}")
    if f"choice.{by}" not in results.trials:
        raise StudyError(f"the study in {results.manifest.get('study', 'this folder')!r} made no choice of {by}: "
                         f"--by {by} compares the chunkers of a study over documents (data.documents and chunkers)")
    settings = settings or Settings()
    values = results.values(metric)
    selection, evaluation = results.sides()
    folds = results.folds()
    choices = results.trials[f"choice.{by}"].astype(str).to_numpy()
    eligible = _eligible(results)
    members = {choice: trials for choice in sorted(set(choices[eligible]))
               if len(trials := np.flatnonzero((choices == choice) & eligible))}
    judged_on = "out of fold" if folds is not None else "holdout" if results.has_holdout else "selection (flattered)"
    rows = []
    for domain, mask in results.groups().items():
        if not (selection & mask).any() or not (evaluation & mask).any():
            continue
        means = values[selection & mask].mean(axis=0)
        picks = {choice: _ranked(results, trials, means[trials])[0] for choice, trials in members.items()}
        best_choice = next(c for c, p in picks.items()
                           if p == _ranked(results, np.array(list(picks.values())), means[list(picks.values())])[0])
        judged, scores, best_scores = _judged(results, values, members, mask, selection, evaluation, folds)
        domain_rows = []
        for choice, pick in picks.items():
            score, low, high = _scored(best_scores if choice == best_choice else scores[choice], settings)
            row = {"choice": choice, "domain": domain, "trial": int(results.trials["trial"].iloc[pick]),
                   "pipeline": results.trials["pipeline"].iloc[pick], "questions": int(judged.sum()),
                   "judged_on": judged_on, "selected": float(means[pick]), "score": score, "low": low, "high": high,
                   "best": choice == best_choice, "difference": 0.0, "p": np.nan}
            if choice != best_choice:
                test = _tested(best_scores, scores[choice], settings)
                row.update({"difference": test.difference, "p": test.p_value})
            domain_rows.append(row)
        frame = pd.DataFrame(domain_rows)
        tested = ~frame["best"].to_numpy()
        frame["tied"] = tested & ~_holm(frame, tested, "difference", settings.alpha).to_numpy()
        rows.extend(frame.to_dict("records"))
    return pd.DataFrame(rows)
