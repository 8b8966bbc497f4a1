"""Markdown for people: summary.md of a study and the comparison tables of `ragopt compare`.
Every score is shown with its bootstrap interval, every difference with its Holm-corrected
verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ragopt.analysis.compare import (By, Settings, StudyResults, choice_matrix, described, runner_ups, tie_note,
                                     winner_ties, winners)
from ragopt.data.qa import Corpus, QASet
from ragopt.files import atomic_write, write_text
from ragopt.stages.labels import objective_text
from ragopt.analysis.selection import TIE_RULE, FoldSelection
from ragopt.analysis.stats import bootstrap_ci


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def interval(mean: float, low: float, high: float, digits: int = 4) -> str:
    """A mean and its interval: 0.8123 [0.760, 0.861]."""
    return f"{mean:.{digits}f} [{low:.{digits - 1}f}, {high:.{digits - 1}f}]"


def difference(value: Any, low: Any, high: Any) -> str:
    """A paired difference and its interval, or nothing for a row that was not tested."""
    return "" if pd.isna(value) else f"{value:+.4f} [{low:+.3f}, {high:+.3f}]"


def verdict(significant: Any, p_holm: Any) -> str:
    """Whether a difference is significant, with its Holm-corrected p-value."""
    if pd.isna(p_holm):
        return ""
    return f"{'yes' if significant else 'no'} (p={p_holm:.3g})"


def matrix_cells(frame: pd.DataFrame, digits: int = 4) -> dict[tuple[str, str], str]:
    """(choice, domain) -> score [interval], ★ the domain's best, = not significantly worse."""
    cells = {}
    for r in frame.itertuples():
        cells[(r.choice, r.domain)] = interval(r.score, r.low, r.high, digits) + (" ★" if r.best else
                                                                                   " =" if r.tied else "")
    return cells


def metric_grid(values: dict[str, np.ndarray], names: list[str], ks: list[int], settings: Settings) -> str:
    """One row per metric, one column per k: the mean over questions and its interval."""
    columns = [f"{n}@{k}" for n in names for k in ks]
    means, lows, highs = bootstrap_ci(np.stack([values[c] for c in columns], axis=1),
                                      confidence=settings.confidence, seed=settings.seed)
    cells = {c: interval(m, lo, hi) for c, m, lo, hi in zip(columns, means, lows, highs)}
    return table(["metric", *(f"@{k}" for k in ks)], [[n, *(cells[f"{n}@{k}"] for k in ks)] for n in names])


TIES = ("A row stands for every pipeline with the same value on each question it is selected and scored on: "
        "'(and 9 tying pipelines: k1 1.16–1.99)' says how they differ, and the row shows the one the tie rule "
        f"picks ({TIE_RULE}).")
"""How the tables' tie rows read, for the pages that show them."""


def pipeline_cell(row: Any) -> str:
    """A table row's pipeline in backticks, with the pipelines that score alike when it has any."""
    return f"`{row.pipeline}`" + tie_note(getattr(row, "ties", 0), getattr(row, "ties_differ", ""))


def winners_markdown(frame: pd.DataFrame) -> str:
    """The best pipeline per domain, its interval and its margin over the runner-up (the best
    pipeline that scores differently)."""
    rows = []
    for r in frame.itertuples():
        margin = difference(getattr(r, "margin", np.nan), getattr(r, "margin_low", np.nan),
                            getattr(r, "margin_high", np.nan))
        rows.append([str(r.domain), f"{r.questions} / {r.scored_on}" + ("" if r.enough else " (few)"), str(r.trial),
                     pipeline_cell(r), f"{r.selected:.4f}", interval(r.score, r.low, r.high), margin,
                     verdict(getattr(r, "significant", False), getattr(r, "p_holm", np.nan))])
    return table(["domain", "questions (selection / scored)", "trial", "pipeline", "selected on", "scored",
                  "margin over runner-up", "significant"], rows)


def runner_ups_markdown(frame: pd.DataFrame) -> str:
    """The winner and the runners-up: scores, differences from the winner, verdicts."""
    rows = []
    for r in frame.itertuples():
        spread = difference(getattr(r, "difference", np.nan), getattr(r, "difference_low", np.nan),
                            getattr(r, "difference_high", np.nan))
        rows.append([str(r.trial), pipeline_cell(r), f"{r.selected:.4f}", interval(r.score, r.low, r.high),
                     spread, verdict(getattr(r, "significant", False), getattr(r, "p_holm", np.nan))])
    return table(["trial", "pipeline", "selected on", "scored", "winner minus this", "winner significantly better"],
                 rows)


def matrix_markdown(frame: pd.DataFrame) -> str:
    """Choices x domains: score [interval], ★ the domain's best, = not significantly worse."""
    domains = list(dict.fromkeys(frame["domain"]))
    cells = matrix_cells(frame)
    choices = sorted(set(frame["choice"]))
    return table(["choice", *domains], [[f"`{c}`", *(cells.get((c, d), "") for d in domains)] for c in choices])


TRUST_TITLE = "Generated questions vs real"
"""The heading of the section that says whether generated questions rank pipelines as real ones do."""


def trust_lines(trust: dict[str, Any]) -> list[str]:
    """study.json's `trust` in words: Kendall's tau between the pipelines' values on the real and
    the generated questions with its interval, both winners scored on real questions, and one
    sentence of what that means (for summary.md and `ragopt compare`)."""
    tau, (low, high) = trust["tau"], trust["interval"]
    real, generated, gap = trust["real_winner"], trust["generated_winner"], trust["difference"]
    questions, level = trust["questions"], f"{trust['confidence']:.0%}"
    on = ("held-out real questions" if trust["scored_on"] == "holdout"
          else "real selection questions (which flatters the real winner)")
    if tau is None:
        order = f"tau undefined: {trust['pipelines']} distinct pipeline(s) or no order on one side"
    else:
        shown = f"tau {tau:.2f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")
        order = f"{shown}: the generated set {_agreeing(tau, low, high)}"
    if real["trial"] == generated["trial"] or gap["interval"] == [0.0, 0.0]:
        picks = f"both sets pick a pipeline scoring {real['real']:.4f} on real questions"
    else:
        low_gap, high_gap = gap["interval"]
        verdict = ("significantly worse" if high_gap < 0 else "significantly better" if low_gap > 0
                   else "worse, within the noise" if gap["value"] < 0 else "not worse")
        picks = (f"its winner scores {generated['real']:.4f} on real questions against the real winner's "
                 f"{real['real']:.4f} ({verdict}: {gap['value']:+.4f} [{low_gap:+.3f}, {high_gap:+.3f}])")
    return [f"Every trial was also scored on {questions['generated']} generated questions ({trust['generated_qa']}). "
            f"Kendall's tau-b between the {trust['pipelines']} distinct pipelines' values on the {questions['real']} "
            f"real selection questions and on the generated ones, with a {level} bootstrap interval over both sets' "
            f"questions (the noise of a finite number of questions pulls tau toward 0); both winners are scored on "
            f"{questions['scored_on']} {on}.\n",
            f"**{order}; {picks}.**\n",
            _winner_line("real", real), _winner_line("generated", generated) + "\n"]


def _winner_line(which: str, winner: dict[str, Any]) -> str:
    """One winner of study.json's `trust`: its trial, pipeline, real score with interval and generated score."""
    return (f"- {which} set's winner, trial {winner['trial']} `{winner['pipeline']}`: "
            f"{interval(winner['real'], *winner['interval'])} on real questions, "
            f"{winner['generated']:.4f} on generated")


def _agreeing(tau: float, low: float | None, high: float | None) -> str:
    """How far a tau and its interval say one set orders pipelines as the other does, in words."""
    if high is not None and high < 0:
        return "orders pipelines against the real one"
    if low is not None and low <= 0:
        return "orders pipelines no better than chance against the real one"
    extent = next(word for word, least in (("exactly", 1.0), ("almost", 0.8), ("mostly", 0.6), ("roughly", 0.4),
                                            ("only loosely", -1.0)) if tau >= least)
    return f"orders pipelines {extent} as the real one does"


def _twins(tied: dict[str, Any]) -> list[str]:
    """The line saying which other pipelines score exactly as the winner does, if any."""
    if not tied["ties"]:
        return []
    others = "1 other pipeline scores" if tied["ties"] == 1 else f"{tied['ties']} other pipelines score"
    differ = f" (differing in {tied['ties_differ']})" if tied["ties_differ"] else ""
    return [f"{others} the same on every question{differ}; the tie rule picked this one: {TIE_RULE}.\n"]


def write_summary(path: Path, *, title: str, qa: QASet, corpus: Corpus, results: StudyResults, best: int,
                  scoring: dict[str, Any], cv: FoldSelection | None, names: list[str], ks: list[int], top_k: int,
                  seconds: dict[str, float], settings: Settings, failures: list[dict[str, Any]] | None = None) -> None:
    """The study in a page: the winner with intervals, on held-out questions when there are
    some, per domain, against the runners-up, and the time it took."""
    trials, manifest = results.trials, results.manifest
    selection, evaluation = results.sides()
    row = trials.iloc[best]
    per_question = results.per_question[results.per_question["trial"] == row["trial"]]
    scored_on = "the held-out questions" if results.has_holdout else "the selection questions (which flatters it)"
    level = f"{settings.confidence:.0%}"
    lines = [
        f"# ragopt: {title}\n",
        f"{len(qa)} questions ({qa.source}), {len(corpus)} passages ({corpus.source}); {len(trials)} trials; "
        f"objective: {objective_text(manifest['objective'])} (higher is better). Intervals are {level} seeded "
        f"bootstrap intervals over questions; differences are paired permutation tests, Holm-corrected.\n",
        f"## Best pipeline (trial {int(row['trial'])})\n",
        f"`{row['pipeline']}`\n",
        *_twins(winner_ties(results)),
        f"- selected on {scoring['questions']} questions: value "
        + interval(scoring["value"], *scoring["interval"]),
    ]
    if "holdout" in scoring:
        held = scoring["holdout"]
        lines.append(f"- held out ({held['questions']} questions, {manifest['holdout']:.0%} of each domain, never "
                     f"seen by the search): value {interval(held['value'], *held['interval'])}")
    if cv is not None:
        chosen = scoring["folds"]["chosen_trials"]
        note = ("every fold chose the winner, so the two agree by construction" if set(cv.chosen) == {best}
                else f"trials chosen: {chosen}")
        lines.append(f"- {len(cv.chosen)}-fold selection: picking the best trial on {len(cv.chosen) - 1} folds "
                     f"scores {cv.score:.4f} on the fold left out (mean over folds; the winner's own value above "
                     f"is {scoring['value']:.4f}; {note})")
    latency = scoring["seconds_per_query"]
    lines.append(f"- {latency * 1000:.2f} ms per question (a batch of unseen questions, models loaded, nothing "
                 "query-side cached)\n" if np.isfinite(latency) else "- latency not measured (study.latency: off)\n")
    values = {c: per_question[c].to_numpy(np.float64)[evaluation] for c in per_question if "@" in c}
    lines.append(f"Its metrics on {scored_on}:\n\n" + metric_grid(values, names, ks, settings))
    if len(groups := results.groups()) > 1:
        columns = [f"{n}@{top_k}" for n in names]
        rows = []
        for domain, mask in groups.items():
            means, lows, highs = bootstrap_ci(np.stack([values[c][mask[evaluation]] for c in columns], axis=1),
                                              confidence=settings.confidence, seed=settings.seed)
            rows.append([domain, str(int((mask & evaluation).sum())), *map(interval, means, lows, highs)])
        lines.append(f"### The winner's scores per domain, at k={top_k}\n\nThe overall winner on each domain's "
                     f"share of {scored_on} (not each domain's own winner: see below).\n\n"
                     + table(["domain", "questions", *names], rows))
    top = runner_ups(results, "objective", 5, settings)
    lines.append(f"## The winner against the runners-up\n\nSelected on the selection questions, scored on {scored_on}; "
                 "'winner significantly better' says whether the difference is real at the "
                 f"{level} level after Holm's correction for the {len(top) - 1} comparisons. {TIES}\n\n"
                 + runner_ups_markdown(top))
    if trust := manifest.get("trust"):
        lines.append(f"## {TRUST_TITLE}\n\n" + "\n".join(trust_lines(trust)))
    if results.groups().keys() - {"(all)"}:
        domains = winners(results, "objective", settings, int(manifest["min_domain_questions"]))
        lines.append("## The best pipeline of each domain\n\nEach domain's winner is chosen on its own selection "
                     f"questions and scored on {scored_on}; '(few)' marks domains with fewer than "
                     f"{manifest['min_domain_questions']} selection questions, too few for a per-domain winner to "
                     "mean much. The runner-up is the best pipeline that scores differently on the domain. "
                     "`ragopt compare` compares model, tokenizer, retriever and reranker choices per "
                     "domain.\n\n" + winners_markdown(domains))
    if failures:
        lines.append(f"## Failed trials\n\n{len(failures)} trials failed and were left out; the study went on.\n\n"
                     + table(["trial", "pipeline", "error"], [[str(f["trial"]), f"`{f['pipeline']}`",
                                                              f["error"].replace("|", "\\|")] for f in failures]))
    lines.append(f"## Time\n\nThe whole study (every run and worker): {int(seconds['trials'])} finished trials, "
                 f"{seconds['trial_seconds']:.1f} s of trial time, {seconds['span']:.1f} s from the first trial's "
                 f"start to the last one's end. This run: first trial {seconds['first']:.2f} s (loading and "
                 f"encoding included), median later trial {seconds['median'] * 1000:.1f} ms, whole run "
                 f"{seconds['total']:.1f} s.\n")
    write_text(path, "\n".join(lines))


def _measured(metric: str, results: StudyResults) -> str:
    """What a comparison page compares, in words: 'ndcg@10', or the objective and what it is."""
    weights = results.manifest.get("objective")
    return metric if metric != "objective" or not weights else f"The objective, {objective_text(weights)}"


def write_comparison(output: Path, results: StudyResults, metric: str, by: By, top: int,
                     settings: Settings) -> dict[str, pd.DataFrame]:
    """`ragopt compare`: the per-domain winners, the choice x domain matrix and the runners-up,
    each as CSV, and all three in one markdown page, under OUTPUT/compare/."""
    folder = output / "compare"
    tables = {"winners": winners(results, metric, settings, int(results.manifest["min_domain_questions"])),
              f"matrix-{by}": choice_matrix(results, metric, by, settings),
              "runner_ups": runner_ups(results, metric, top, settings)}
    for name, frame in tables.items():
        atomic_write(folder / f"{name}.{metric}.csv", lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    scored_on = "the held-out questions" if results.has_holdout else "the selection questions (which flatters winners)"
    page = [f"# ragopt compare: {metric}, by {by}\n",
            f"{_measured(metric, results)}: chosen on the selection questions, scored on {scored_on}; "
            f"{settings.confidence:.0%} bootstrap intervals; paired permutation tests, Holm-corrected. {TIES}\n",
            "## Best pipeline per domain\n", winners_markdown(tables["winners"]),
            f"## {by} x domain\n\nThe best trial of each {by} in each domain, chosen on the selection questions and "
            f"scored {described(tables[f'matrix-{by}'])}: ★ the domain's best, = not significantly worse than it.\n",
            matrix_markdown(tables[f"matrix-{by}"]),
            "## The winner against the runners-up\n", runner_ups_markdown(tables["runner_ups"])]
    if trust := results.manifest.get("trust"):
        page += [f"## {TRUST_TITLE}\n", *trust_lines(trust)]
    write_text(folder / f"compare-{by}.{metric}.md", "\n".join(page))
    return tables
