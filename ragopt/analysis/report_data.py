"""What `ragopt report` shows, computed from a study's output folder: the per-domain matrix, the
top pipelines' metric-vs-k curves with intervals, score vs chunk size (a study over documents),
the tuned models' training curves (a study that tunes one), the quality-vs-latency front, the
stored Optuna study and the exported config, handed to ragopt.analysis.report to render."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ragopt.analysis.compare import By, Settings, StudyResults, choice_matrix, ranking, tie_note, ties, winner_ties
from ragopt.errors import StudyError
from ragopt.stages.labels import objective_text
from ragopt.analysis.report import ReportData, write_report
from ragopt.analysis.selection import fingerprint, tie_groups
from ragopt.analysis.stats import bootstrap_ci
from ragopt.tune.crossfit import TUNING_CSV

TOP_CURVES = 5
"""Pipelines with different curves whose metric-vs-k curves are drawn."""
AT_K = re.compile(r"[^@]+@\d+")
"""The columns of a metric at k (not at a token budget, `@1024t`)."""
BUDGET_RECALL = re.compile(r"evidence_recall@\d+t")
"""The columns of evidence recall within a token budget."""


def curves(results: StudyResults, top: int, settings: Settings) -> pd.DataFrame:
    """Every metric at every k, with intervals on the evaluation questions, of the `top` best
    pipelines (by selection value, ranked as the study ranks its winner) whose curves differ: the
    pipelines with the same values of every metric on every evaluation question are one curve,
    named for them all."""
    trials = results.trials
    _, evaluation = results.sides()
    columns = [c for c in results.per_question.columns if AT_K.fullmatch(c)]
    frames = results.per_question.groupby("trial", sort=False)
    keys = {trial: fingerprint(frame[columns].to_numpy(np.float64)[evaluation]) for trial, frame in frames}
    number = trials["trial"].to_numpy()
    rows = []
    for group in tie_groups(ranking(results), lambda position: keys[number[position]])[:top]:
        row = trials.iloc[group[0]]
        tied = ties(results, group)
        name = row["pipeline"] + tie_note(tied["ties"], tied["ties_differ"], "the same curves")
        values = frames.get_group(row["trial"])[columns].to_numpy(np.float64)[evaluation]
        means, lows, highs = bootstrap_ci(values, confidence=settings.confidence, seed=settings.seed)
        for column, mean, low, high in zip(columns, means, lows, highs):
            metric, k = column.split("@")
            rows.append({"trial": int(row["trial"]), "pipeline": name, "metric": metric, "k": int(k),
                         "mean": float(mean), "low": float(low), "high": float(high)})
    return pd.DataFrame(rows)


def chunk_sizes(results: StudyResults) -> pd.DataFrame:
    """Each trial of a study over documents with its chunker type, its chunking's size (chunks,
    mean characters), its objective (and held-out value) and its evidence recall within a token
    budget (the objective's, else the first scored); empty for a study over passages."""
    trials = results.trials
    if "chunk_chars" not in trials:
        return pd.DataFrame()
    budgets = [c for c in trials.columns if BUDGET_RECALL.fullmatch(c)]
    in_objective = [m for m in results.manifest.get("objective", {}) if m in budgets]
    columns = ["trial", "pipeline", "choice.chunker", "chunks", "chunk_chars", "value"]
    columns += [c for c in ("value.holdout",) if c in trials] + (in_objective or budgets)[:1]
    return trials[columns].rename(columns={"choice.chunker": "chunker"})


def training(output: Path) -> pd.DataFrame:
    """The study's tuned models' curves (tuning.csv: model, setting, part, kind, on, step, epoch,
    value); empty when it tuned none."""
    path = output / TUNING_CSV
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _study(output: Path, manifest: dict[str, Any], storage: str | None) -> Any:
    """The stored Optuna study (for its history and importances), or None if it cannot be opened."""
    import optuna

    storage = storage or manifest.get("storage") or f"sqlite:///{output / 'study.db'}"
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=manifest["study"], storage=storage)
    except Exception as error:  # the report is still worth having without the history
        warnings.warn(f"the report has no optimization history: cannot open {storage}: {error}", stacklevel=2)
        return None


def _facts(results: StudyResults, best: dict[str, Any]) -> list[tuple[str, str]]:
    """The few numbers a reader needs first."""
    manifest, questions = results.manifest, results.questions
    evaluation = best.get("evaluation", {})
    tied = winner_ties(results)
    facts = [("questions", f"{len(questions)}" + (f" in {questions['domain'].nunique()} domains"
                                                    if "domain" in questions else "")),
             ("trials", str(len(results.trials))), ("objective", objective_text(manifest["objective"])),
             ("winner", f"trial {evaluation.get('trial')}: {best['pipeline_text']}"
                        + tie_note(tied["ties"], tied["ties_differ"]))]
    if "interval" in evaluation:
        low, high = evaluation["interval"]
        facts.append((f"value on {evaluation['questions']} selection questions",
                      f"{evaluation['value']:.4f} [{low:.3f}, {high:.3f}]"))
    if "holdout" in evaluation:
        held = evaluation["holdout"]
        facts.append((f"value on {held['questions']} held-out questions",
                      f"{held['value']:.4f} [{held['interval'][0]:.3f}, {held['interval'][1]:.3f}]"))
    if "folds" in evaluation:
        facts.append((f"{evaluation['folds']['k']}-fold selection estimate", f"{evaluation['folds']['score']:.4f}"))
    facts.append(("intervals", f"{manifest['confidence']:.0%} bootstrap over questions, seed {manifest['seed']}; "
                               "paired permutation tests, Holm-corrected"))
    return facts


def build_report(output: str | Path, path: str | Path, metric: str = "objective", by: By = "model",
                 storage: str | None = None) -> Path:
    """Write the HTML report of the study in `output` to `path`; `storage` is the study's
    database URL where study.json's (written without its password) does not open it."""
    output, path = Path(output), Path(path)
    results = StudyResults.load(output)
    manifest = results.manifest
    settings = Settings(manifest["confidence"], seed=manifest["seed"])
    if not (output / "best.yaml").exists():
        raise StudyError(f"{output} has no best.yaml: the study found no winner; see its summary or rerun it")
    best_text = (output / "best.yaml").read_text(encoding="utf-8")
    best = yaml.safe_load(best_text)
    best["pipeline_text"] = results.trials.loc[results.trials["trial"] == manifest["best_trial"], "pipeline"].iloc[0]
    trials = results.trials
    pareto = pd.DataFrame({"trial": trials["trial"], "pipeline": trials["pipeline"], "quality": trials["value"],
                           "seconds_per_query": trials["seconds_per_query"], "front": trials["pareto"]}
                          ).dropna(subset=["seconds_per_query"])
    data = ReportData(
        title=f"{manifest['config']}: {len(trials)} trials", facts=_facts(results, best), trials=trials,
        matrix=choice_matrix(results, metric, by, settings), matrix_by=by, metric=metric,
        curves=curves(results, TOP_CURVES, settings), pareto=pareto, study=_study(output, manifest, storage),
        best_yaml=best_text, confidence=settings.confidence, best_trial=int(manifest["best_trial"]),
        chunk_sizes=chunk_sizes(results), training=training(output),
        held_out=int((results.questions["split"] == "holdout").sum()))
    return write_report(path, data)
