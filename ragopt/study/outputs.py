"""The files a study writes, all derived from its stored trials: trials.csv, per_question.parquet,
runs/, study.json, best.yaml (per domain, Pareto front), summary.md."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ragopt.search.config import Config
from ragopt.errors import StudyError
from ragopt.scoring.evaluation import Evaluator
from ragopt.analysis.compare import ALL, Settings, StudyResults, winners
from ragopt.serving.export import Exported, write_best
from ragopt.files import atomic_write, safe_name, write_text
from ragopt.stages.models import device_type
from ragopt.provenance import library_versions
from ragopt.study.records import TrialRecord, finished, per_question_table, trials_table
from ragopt.study.runs import QRELS, RUNS, write_best_run, write_index
from ragopt.scoring.chunkings import describe_chunking
from ragopt.study.data import StudyData
from ragopt.scoring.trec import TrecWriter
from ragopt.analysis.selection import FoldSelection, best_index, cost_ranks, feasible, kfold_selection, pareto_front
from ragopt.stages.spec import PipelineSpec
from ragopt.analysis.stats import bootstrap_ci
from ragopt.analysis.summary import write_summary
from ragopt.analysis.trust import Score, agreement, winner_gap
from ragopt.study.storage import shown
from ragopt.study.workers import SKIPPED
from ragopt.study.objective import FAILURE
from ragopt.study.tuning import TUNED, TUNING_CSV, export_tuned, write_tuning_csv
from ragopt.tune.crossfit import Tuner


@dataclass
class Outcome:
    """Where a study wrote its files and what won."""

    output: Path
    best_spec: PipelineSpec
    best_value: float
    best_metrics: dict[str, float]
    n_trials: int
    interrupted: bool = False
    n_pruned: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The failed trials: number, pipeline and error."""
    holdout_value: float | None = None
    """The winner's objective on the held-out questions (None without a holdout)."""
    folds_value: float | None = None
    """The k-fold estimate of the selection's held-out objective (None without folds)."""


OUTPUTS = ("trials.csv", "per_question.parquet", "study.json", "best.yaml", "summary.md", "qrels.trec", QRELS, RUNS,
           "per_domain", "pareto", "compare", "report.html", TUNED, TUNING_CSV)
"""What optimize, compare and report write in an output folder, besides the study and the cache."""


def clear_outputs(output: Path) -> None:
    """--fresh: delete the previous study's outputs first, so that a new study stopped before it
    writes its own never leaves them beside it (the cache stays: it is keyed by content). Only in
    a folder a study wrote (its qrels.trec or study.json): an --output given by mistake keeps its files."""
    if not ((output / "qrels.trec").exists() or (output / "study.json").exists()):
        return
    for name in OUTPUTS:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_outputs(study: optuna.Study, config: Config, config_path: Path, output: Path, data: StudyData,
                  evaluator: Evaluator, held: np.ndarray, folds: np.ndarray | None,
                  seconds: dict[str, float], interrupted: bool, tuner: Tuner | None = None) -> Outcome:
    """Every output file, derived from the stored trials: trials.csv, per_question.parquet,
    runs/index.json, study.json, runs/best.trec, best.yaml (and per domain, and the Pareto front,
    when asked), summary.md."""
    qa, settings = evaluator.qa, Settings(config.study.confidence, seed=config.study.seed)
    trials = finished(study)
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    failures = [{"trial": t.number, **t.user_attrs[FAILURE]} for t in failed if FAILURE in t.user_attrs]
    if not trials:
        reason = f"; the first failure: trial {failures[0]['trial']}, {failures[0]['error']}" if failures else ""
        raise StudyError(f"study {study.study_name!r} has no completed trial{reason}; raise n_trials or timeout, "
                         "or fix what failed")
    seconds = {**seconds, **_study_time(study)}
    names = tuple(dict.fromkeys([*config.metrics, *(name.partition("@")[0] for name in config.optimize)]))
    values = [record.per_question(qa, config.top_k, names) for _, record in trials]
    objectives = [evaluator.per_query_objective(v, record.pipeline.top_k) for v, (_, record) in zip(values, trials)]
    table = trials_table(trials, values, objectives, held, qa.domains)
    if data.chunkings is not None:  # each trial's chunking: how many chunks, how long (the report's chunk size axis)
        sizes = [describe_chunking(data.chunkings.get(record.pipeline.chunker)) for _, record in trials]
        table["chunks"] = [s["chunks"] for s in sizes]
        table["chunk_chars"] = [round(s["mean_chars"], 1) for s in sizes]
    per_question = per_question_table(trials, values, objectives, qa, held, folds)
    budget = config.study.latency_budget
    quality, latency = table["value"].to_numpy(), table["seconds_per_query"].to_numpy()
    table["cost_rank"] = cost = cost_ranks([record.pipeline for _, record in trials])  # the tie rule's order
    front = pareto_front(quality, latency, budget, cost)
    table["pareto"] = front
    if budget is not None:
        table["feasible"] = feasible(latency, budget)
    storage = shown(config.study.storage) if config.study.storage else None  # never a password in the outputs
    manifest = {"study": study.study_name, "config": config_path.name, "storage": storage,
                "objective": dict(config.optimize), "metrics": config.metrics, "top_k": config.top_k,
                "seed": config.study.seed, "confidence": config.study.confidence, "holdout": config.study.holdout,
                "folds": config.study.folds, "latency": config.study.latency, "latency_budget": budget,
                "min_domain_questions": config.study.min_domain_questions}
    atomic_write(output / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(output / "per_question.parquet", lambda tmp: per_question.to_parquet(tmp, index=False))
    _write_runs(output, data, trials)
    by_speed = config.study.latency == "pareto"
    best = best_index(quality, latency, budget, by_speed, cost)  # raises (after the tables) when none is in budget
    manifest["best_trial"] = int(table["trial"][best])
    if data.generated is not None:
        manifest["trust"] = _trust(data.generated, table, trials, objectives, held, best,
                                   lambda means: best_index(means, latency, budget, by_speed, cost), settings)
    write_text(output / "study.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    write_best_run(output, manifest["best_trial"])
    if data.chunkings is not None:  # qrels.trec: the winner's chunking's, which runs/best.trec is scored with
        shutil.copyfile(output / QRELS / f"{trials[best][1].pipeline.chunker.key()}.trec", output / "qrels.trec")
    results = StudyResults(table, per_question, manifest)

    objective = np.stack(objectives, axis=1)
    cv = kfold_selection(objective, folds, latency, budget, by_speed, cost) if folds is not None else None
    scoring = _scoring(results, best, objective, cv, settings)
    if tuner is not None:
        shutil.rmtree(output / TUNED, ignore_errors=True)
        write_tuning_csv(tuner, [record.pipeline for _, record in trials], output)
    _export(output / "best.yaml", trials[best], config, data, scoring, _at_k(values[best], ~held, held),
            (tuner, output))
    if config.study.per_domain:
        _export_domains(output / "per_domain", results, trials, values, config, data, settings, tuner)
    if config.study.latency == "pareto" or budget is not None:
        shutil.rmtree(output / "pareto", ignore_errors=True)
        for i in np.flatnonzero(front):
            _export(output / "pareto" / f"trial-{trials[i][0].number}.yaml", trials[i], config, data,
                    {"value": round(float(quality[i]), 6), "seconds_per_query": float(latency[i])},
                    _at_k(values[i], ~held, held), (tuner, output))
    spec = trials[best][1].pipeline
    metrics = {name: float(v[~held].mean()) for name, v in values[best].items()}
    write_summary(output / "summary.md", title=config_path.name, qa=qa, corpus=data.corpus_of(spec), results=results,
                  best=best, scoring=scoring, cv=cv, names=config.metrics, ks=config.top_k, top_k=spec.top_k,
                  seconds=seconds, settings=settings, failures=failures)
    n_pruned = sum(SKIPPED not in t.user_attrs
                   for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    return Outcome(output, spec, float(quality[best]), metrics, len(table), interrupted, n_pruned, failures,
                   scoring.get("holdout", {}).get("value"), cv.score if cv is not None else None)


def _study_time(study: optuna.Study) -> dict[str, float]:
    """The time of the whole study, every run and worker included: its finished trials, the sum
    of their durations, and the span from the first start to the last finish."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.datetime_start
            and t.datetime_complete and SKIPPED not in t.user_attrs]
    if not done:
        return {"trials": 0, "trial_seconds": 0.0, "span": 0.0}
    return {"trials": len(done),
            "trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done),
            "span": (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()}


def _trust(generated: StudyData, table: pd.DataFrame, trials: list[tuple[optuna.trial.FrozenTrial, TrialRecord]],
           objectives: list[np.ndarray], held: np.ndarray, best: int, pick: Callable[[np.ndarray], int],
           settings: Settings) -> dict[str, Any]:
    """study.json's `trust`: whether the generated questions rank the trials as the real selection
    questions do (Kendall's tau with its interval), and the generated set's winner (picked by the
    study's rule, `pick`) against the real one, both scored on the real questions winners are
    scored on (the held-out ones, when any)."""
    real, scored_on = np.stack(objectives, axis=1), held if held.any() else ~held
    measured = [record.generated_values() for _, record in trials]
    kept = np.array([v is not None for v in measured])  # a model trained on generated questions is left out
    values = np.stack([v if v is not None else np.full(len(generated.qa), np.nan) for v in measured], axis=1)
    found = agreement(real[~held][:, kept], values[:, kept], confidence=settings.confidence,
                      n_resamples=settings.resamples, seed=settings.seed)
    winner = pick(np.where(kept, values.mean(axis=0), -np.inf))
    both = winner_gap(real[scored_on], best, winner, confidence=settings.confidence, n_resamples=settings.resamples,
                   seed=settings.seed)

    def described(i: int, score: Score) -> dict[str, Any]:
        return {"trial": int(table["trial"].iloc[i]), "pipeline": str(table["pipeline"].iloc[i]),
                "real": _rounded(score.mean), "interval": [_rounded(score.low), _rounded(score.high)],
                "generated": _rounded(values[:, i].mean())}

    gap = both.difference
    return {"generated_qa": generated.qa.source, "confidence": settings.confidence,
            "questions": {"real": int((~held).sum()), "generated": len(values), "scored_on": int(scored_on.sum())},
            "scored_on": "holdout" if held.any() else "selection", "pipelines": found.pipelines,
            "left_out": {"trained_on_generated": int((~kept).sum())},
            "tau": _rounded(found.tau), "interval": [_rounded(found.low), _rounded(found.high)],
            "real_winner": described(best, both.real), "generated_winner": described(winner, both.generated),
            "difference": {"value": _rounded(gap.difference), "interval": [_rounded(gap.low), _rounded(gap.high)],
                           "p": _rounded(gap.p_value)}}


def _rounded(value: float) -> float | None:
    """A figure for study.json: 6 decimals, None for NaN (JSON has no NaN)."""
    return None if np.isnan(value) else round(float(value), 6)


def _scoring(results: StudyResults, best: int, objective: np.ndarray, cv: FoldSelection | None,
             settings: Settings) -> dict[str, Any]:
    """How the winner scored, for best.yaml: its value on the selection questions with an
    interval, on the held-out questions with one, and the k-fold estimate of the selection."""
    selection, _ = results.sides()
    row = results.trials.iloc[best]
    mean, low, high = bootstrap_ci(objective[selection, best], confidence=settings.confidence, seed=settings.seed)
    scoring: dict[str, Any] = {
        "value": round(float(row["value"]), 6), "interval": [round(float(low), 6), round(float(high), 6)],
        "confidence": settings.confidence, "questions": int(selection.sum()),
        "seconds_per_query": float(row["seconds_per_query"])}
    if results.has_holdout:
        held = ~selection
        mean, low, high = bootstrap_ci(objective[held, best], confidence=settings.confidence, seed=settings.seed)
        scoring["holdout"] = {"value": round(float(mean), 6), "interval": [round(float(low), 6), round(float(high), 6)],
                              "questions": int(held.sum())}
    if cv is not None:
        scoring["folds"] = {"k": len(cv.chosen), "score": round(cv.score, 6),
                            "held_out": [round(v, 6) for v in cv.held_out],
                            "chosen_trials": [int(results.trials["trial"].iloc[i]) for i in cv.chosen]}
    return scoring


def _at_k(values: dict[str, np.ndarray], selection: np.ndarray, held: np.ndarray) -> dict[str, dict[str, float]]:
    """Every metric at every k: the mean on the selection questions and on the held-out ones."""
    sides = {"selection": selection, "holdout": held}
    return {side: {k: round(float(v[rows].mean()), 6) for k, v in values.items()} for side, rows in sides.items()
            if rows.any()}


def _write_runs(output: Path, data: StudyData, trials: list[tuple[optuna.trial.FrozenTrial, TrialRecord]]) -> None:
    """qrels.trec and runs/index.json; over documents, each chunking's qrels in qrels/, and
    qrels.trec those of the winner's chunking (written by write_best_run's caller)."""
    rankings = {t.number: record.ranking for t, record in trials}
    qa = data.qa
    if data.chunkings is None:
        TrecWriter(qa.qids, data.engine.corpus.doc_ids).qrels(output / "qrels.trec", qa.groups)
        write_index(output, qa.qids, data.engine.corpus.doc_ids, rankings)
        return
    chunkers = {record.pipeline.chunker.key(): record.pipeline.chunker for _, record in trials}
    shutil.rmtree(output / QRELS, ignore_errors=True)
    corpora = {}
    for key, chunker in chunkers.items():
        chunked = data.chunkings.get(chunker)
        corpora[key] = chunked.corpus.doc_ids
        TrecWriter(qa.qids, chunked.corpus.doc_ids).qrels(output / QRELS / f"{key}.trec", chunked.target.groups)
    write_index(output, qa.qids, corpora, rankings, {t.number: record.pipeline.chunker.key() for t, record in trials})


def _export(path: Path, trial: tuple[optuna.trial.FrozenTrial, TrialRecord], config: Config, data: StudyData,
            evaluation: dict[str, Any], metrics: dict[str, dict[str, float]],
            tuned_into: tuple[Tuner | None, Path] | None = None) -> None:
    """A best.yaml for one trial, with its scores (the metrics at its k on each side of the
    split) and the provenance of its models; a tuned model's final folder is copied into the
    study's output folder (`tuned_into`: the Tuner and that folder)."""
    frozen, record = trial
    spec = record.pipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    at_k = {side: {k: v for k, v in means.items() if k.endswith(f"@{spec.top_k}")} for side, means in metrics.items()}
    engine = data.engine
    tuned: dict[str, Any] = {}
    tuner, output = tuned_into or (None, path.parent)
    if tuner is not None and tuner.tuned(spec):
        concrete = tuner.final(spec)
        spec, tuned = export_tuned(tuner, spec, output, path)
    else:
        concrete = spec
    provenance = engine.provenance((concrete.chunker.models() if concrete.chunker else []) + concrete.retriever.models()
                                   + ([concrete.reranker.model] if concrete.reranker else []),
                                   concrete.retriever.tokenizers())
    for absolute, relative in zip(concrete.retriever.models(), spec.retriever.models()):
        provenance["models"][relative] = provenance["models"].pop(absolute)
    write_best(path, Exported(spec, config.exact_search_max, device_type(engine.device)), {
        "trial": frozen.number, "objective": dict(config.optimize), **evaluation, "metrics_at_k": at_k},
        {**provenance, **({"tuned": tuned} if tuned else {}), "libraries": library_versions()}, corpus=data.source)


def _export_domains(folder: Path, results: StudyResults, trials: list[tuple[Any, TrialRecord]],
                    values: list[dict[str, np.ndarray]], config: Config, data: StudyData, settings: Settings,
                    tuner: Tuner | None = None) -> None:
    """One best config per domain with at least min_domain_questions selection questions."""
    shutil.rmtree(folder, ignore_errors=True)
    table = winners(results, "objective", settings, config.study.min_domain_questions)
    position = {int(t.number): i for i, (t, _) in enumerate(trials)}
    selection, _ = results.sides()
    groups, names = results.groups(), set()
    for row in table[(table["domain"] != ALL) & table["enough"]].itertuples():
        scored_on = "holdout" if results.has_holdout else "selection"
        name = safe_name(row.domain)
        name = next(f"{name}-{i}" for i in range(1, len(groups) + 2) if f"{name}-{i}" not in names) \
            if name in names else name
        names.add(name)
        mask, i = groups[row.domain], position[row.trial]
        _export(folder / f"{name}.yaml", trials[i], config, data, {
            "domain": row.domain, "questions": int(row.questions), "value": round(float(row.selected), 6),
            scored_on: {"value": round(float(row.score), 6), "interval": [round(float(row.low), 6),
                                                                          round(float(row.high), 6)],
                        "questions": int(row.scored_on)}}, _at_k(values[i], selection & mask, ~selection & mask),
                (tuner, folder.parent))
