"""The HTML report: one self-contained page whose every plot headless Chromium really draws,
with the network cut off, whose trials table sorts, and whose user strings survive escaped."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from browser import inspect, require_chromium
from conftest import AUTORAG_KO_DOCS, write_config
from test_startup import imported_heavy
from ragopt.stages.chunkers import chunk_documents
from ragopt.analysis.compare import StudyResults
from ragopt.data.documents import load_documents
from ragopt.analysis.report import (ReportData, _chunk_size_figure, _history_figure, _importance_figure, render,
                                    write_report)
from ragopt.analysis.report_data import build_report, chunk_sizes
from ragopt.stages.spec import PipelineSpec
from ragopt.study import optimize

DOMAINS = ["금융", "법률", "의료", "tech"]
CHOICES = ["bm25_kiwi", "dense <bge-m3-ko>", "hybrid & rrf"]
METRICS = ["ndcg", "recall", "mrr"]
KS = [1, 3, 5, 10]
N_TRIALS = 30
N_STUDY = 12
TOP = 4
IMPORTANCE = ["bm25.k1", "retriever", "top_k"]
PIPELINE = "hybrid[rrf](bm25[kiwi,k1={k1:.2f}], dense[<bge-m3-ko>]) & 한국어 k={k}"
WINNER = 7
"""The exported winner: a trial of the page's (off the front, as one can be among equal qualities)."""

CHECK = """
window.errors = [];
window.addEventListener("error", event => window.errors.push(String(event.message)));
window.addEventListener("load", () => setTimeout(() => {
  const shown = element => {
    for (let node = element; node; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.display === "none" || style.visibility === "hidden" || style.opacity === "0") return false;
    }
    return true;
  };
  const texts = (div, selector) => [...div.querySelectorAll(selector)].map(node => node.textContent);
  const ticks = (div, axis) => [...div.querySelectorAll(`.${axis}tick text`)]
    .map(node => [node.getBoundingClientRect()[axis === "x" ? "left" : "top"], node.textContent])
    .sort((a, b) => a[0] - b[0]).map(pair => pair[1]);
  const plots = [...document.querySelectorAll(".plotly-graph-div")].map(div => {
    const box = div.getBoundingClientRect();
    return {id: div.id, width: box.width, height: box.height, shown: shown(div),
            svgs: div.querySelectorAll("svg.main-svg").length, traces: div.querySelectorAll("g.trace").length,
            points: div.querySelectorAll("g.trace.scatter path.point").length,
            lines: div.querySelectorAll("g.trace.scatter path.js-line").length,
            errorbars: div.querySelectorAll("g.errorbar").length,
            bars: div.querySelectorAll("g.trace.bars path").length,
            heatmaps: div.querySelectorAll("g.hm image").length,
            cells: texts(div, "g.heatmap-label text"), xticks: ticks(div, "x"), yticks: ticks(div, "y"),
            legend: texts(div, ".legendtext")};
  });
  const table = document.querySelector("table.sortable");
  const header = [...table.tHead.rows[0].cells].find(th => th.textContent === "value");
  const first = () => table.tBodies[0].rows[0].cells[0].textContent;
  const order = [first()];
  header.click(); order.push(first());
  header.click(); order.push(first());
  const links = [];
  for (const node of document.querySelectorAll("*"))
    for (const attribute of node.attributes)
      if (/(^|:)(src|href)$/i.test(attribute.name)) links.push(attribute.value.slice(0, 40));
  const pre = document.createElement("pre");
  pre.id = "verdict";
  pre.hidden = true;
  pre.textContent = JSON.stringify({
    plots, order, links, errors: window.errors,
    resources: performance.getEntriesByType("resource").map(entry => entry.name),
    pipelines: [...table.tBodies[0].rows].map(row => row.cells[2].textContent),
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent)});
  document.body.append(pre);
}, 1000));
"""
"""Appended to a copy of the page: for every plot its box, visibility, what plotly drew and its
tick labels in screen order (left to right, top to bottom); the first trial of the table before
and after clicking the value header twice; every link and every resource the page loaded."""


def _trials(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for trial in range(N_TRIALS):
        retriever = CHOICES[trial % len(CHOICES)]
        k1, k = float(rng.uniform(0.5, 2.0)), int(rng.choice(KS))
        row = {"trial": trial, "value": float(rng.uniform(0.4, 0.9)), "pipeline": PIPELINE.format(k1=k1, k=k),
               "param.retriever": retriever, "param.bm25_kiwi.k1": k1 if retriever == "bm25_kiwi" else np.nan,
               "param.top_k": k, "choice.retriever": retriever, "choice.model": "BAAI/bge-m3",
               "choice.tokenizer": "kiwi", "choice.reranker": "none"}
        row.update({f"{m}@{k}": float(rng.uniform(0.3, 0.95)) for m in METRICS for k in KS})
        row.update({"seconds_per_query": float(rng.uniform(0.0005, 0.05)), "reused": bool(trial % 4 == 0),
                    "value.holdout": float(rng.uniform(0.4, 0.9))})
        rows.append(row)
    return pd.DataFrame(rows)


def _matrix(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for domain in DOMAINS:
        scores = rng.uniform(0.55, 0.9, len(CHOICES))
        for index, (choice, score) in enumerate(zip(CHOICES, scores)):
            best = score == scores.max()
            rows.append({"choice": choice, "domain": domain, "trial": index, "score": score, "low": score - 0.06,
                         "high": min(score + 0.05, 1.0), "questions": 28, "best": best,
                         "tied": bool(best or score > scores.max() - 0.05)})
    return pd.DataFrame(rows)


def _curves(trials: pd.DataFrame) -> pd.DataFrame:
    top = trials.nlargest(TOP, "value")
    return pd.DataFrame([{"trial": r["trial"], "pipeline": r["pipeline"], "metric": m, "k": k, "mean": r[f"{m}@{k}"],
                          "low": r[f"{m}@{k}"] - 0.04, "high": r[f"{m}@{k}"] + 0.04}
                         for _, r in top.iterrows() for m in METRICS for k in KS])


def _pareto(trials: pd.DataFrame) -> pd.DataFrame:
    quality, seconds = trials["value"].to_numpy(), trials["seconds_per_query"].to_numpy()
    front = [not ((quality >= q) & (seconds <= s) & ((quality > q) | (seconds < s))).any()
             for q, s in zip(quality, seconds)]
    return pd.DataFrame({"trial": trials["trial"], "pipeline": trials["pipeline"], "quality": quality,
                         "seconds_per_query": seconds, "front": front})


def _study(n_trials: int, directions: tuple[str, ...] = ("maximize",)) -> optuna.Study:
    """A real study of a toy objective: a categorical, an integer and a float parameter that only
    some trials have, as ragopt's studies have."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        top_k = trial.suggest_int("top_k", 1, 10)
        if trial.suggest_categorical("retriever", ["bm25", "dense"]) == "bm25":
            quality = 0.9 - (trial.suggest_float("bm25.k1", 0.0, 2.0) - 1.2) ** 2
        else:
            quality = 0.5
        quality += top_k / 100
        return quality if len(directions) == 1 else (quality, top_k / 1000)

    study = optuna.create_study(directions=list(directions), sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)
    return study


def report_data(study: optuna.Study | None) -> ReportData:
    rng = np.random.default_rng(0)
    trials = _trials(rng)
    return ReportData(
        title="autorag-ko.yaml: 30 trials <한국어>", facts=[("questions", "114 (4 domains: 금융, 법률, 의료, tech)"),
                                                          ("objective", "ndcg@10 & recall@10 <weighted>")],
        trials=trials, matrix=_matrix(rng), matrix_by="retriever", metric="ndcg@10", curves=_curves(trials),
        pareto=_pareto(trials), study=study, best_yaml="pipeline:\n  retriever: <bm25 & kiwi>  # 한국어\n",
        best_trial=WINNER)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportData]:
    data = report_data(_study(N_STUDY))
    return write_report(tmp_path_factory.mktemp("report") / "report.html", data), data


@pytest.fixture(scope="module")
def rendered(page: tuple[Path, ReportData]) -> dict:
    """The check script's verdict; the screenshot lies beside the page as report.png."""
    return inspect(require_chromium(), page[0], CHECK, page[0].parent / "report.png")


def test_page_is_one_self_contained_file(page):
    text = page[0].read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in text
    assert len(re.findall(r"\* plotly\.js v\d", text)) == 1  # the library inlined once
    assert not re.search(r"<script[^>]+src=|<link\b|<img\b|@import|url\(\s*['\"]?(https?:)?//", text)
    assert '<pre class="yaml">pipeline:\n  retriever: &lt;bm25 &amp; kiwi&gt;  # 한국어\n</pre>' in text
    assert "<title>ragopt: autorag-ko.yaml: 30 trials &lt;한국어&gt;</title>" in text


def test_every_plot_is_drawn_and_visible(rendered):
    plots = {plot["id"]: plot for plot in rendered["plots"]}
    assert list(plots) == ["fig-matrix", "fig-curves", "fig-pareto", "fig-history", "fig-importance"]
    for plot in plots.values():
        assert plot["shown"] and plot["width"] > 600 and plot["height"] > 150 and plot["svgs"] >= 2, plot
        assert plot["traces"] + plot["heatmaps"] >= 1, plot
    assert rendered["errors"] == []
    matrix = plots["fig-matrix"]
    assert matrix["heatmaps"] == 1
    assert len(matrix["cells"]) == len(DOMAINS) * len(CHOICES)
    assert sum("★" in cell for cell in matrix["cells"]) == len(DOMAINS)
    assert any(re.fullmatch(r"0\.\d{3} =\[0\.\d\d, 0\.\d\d\]", cell) for cell in matrix["cells"]), matrix["cells"]
    assert [tick.removesuffix("28 questions") for tick in matrix["xticks"]] == DOMAINS
    means = report_data(None).matrix.groupby("choice")["score"].mean()
    assert matrix["yticks"] == list(means.sort_values(ascending=False).index)  # the best choice on top
    curves = plots["fig-curves"]
    assert curves["points"] == TOP * len(METRICS) * len(KS) and curves["errorbars"] == curves["points"]
    assert len(curves["legend"]) == TOP and all("한국어" in name and "<bge-m3-ko>" in name for name in curves["legend"])
    pareto = plots["fig-pareto"]
    front = int(_pareto(report_data(None).trials)["front"].sum())
    assert pareto["points"] == N_TRIALS + 1 and pareto["lines"] == 1 and front >= 2  # the winner twice: its star
    assert pareto["legend"] == ["other trials", "Pareto front", f"exported winner (trial {WINNER})"]
    assert plots["fig-history"]["points"] == N_STUDY and plots["fig-history"]["lines"] == 1
    assert plots["fig-importance"]["bars"] == 3 and sorted(plots["fig-importance"]["yticks"]) == IMPORTANCE


def test_table_sorts_by_a_clicked_header(rendered):
    trials = report_data(None).trials
    worst, best = trials.loc[trials["value"].idxmin(), "trial"], trials.loc[trials["value"].idxmax(), "trial"]
    assert rendered["order"] == ["0", str(worst), str(best)]
    assert len(rendered["pipelines"]) == N_TRIALS and set(rendered["pipelines"]) == set(trials["pipeline"])


def test_page_needs_no_network(rendered):
    assert not [link for link in rendered["links"] if not link.startswith(("#", "data:"))]
    assert not [url for url in rendered["resources"] if not url.startswith(("file:", "data:"))]


def test_screenshot(page, rendered):
    png = page[0].parent / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_short_studies_get_notes_not_plots():
    data = report_data(_study(1))
    data.matrix, data.curves, data.pareto = data.matrix.iloc[:0], data.curves.iloc[:0], data.pareto.iloc[:0]
    text = render(data)
    assert "Parameter importances need at least two completed trials." in text
    assert "No per-domain comparison" in text and "No metric-vs-k curves" in text and "No trial has a measured" in text
    assert re.findall(r'id="(fig-[a-z]+)"', text) == ["fig-history"]
    assert "Only 1 parameter took more than one value (x)" in _importance_figure(_one_parameter_study())
    assert render(report_data(None)).count("No Optuna study was given.") == 2
    data.study = None
    assert "plotly.js" not in render(data)  # no plot, no library


def _one_parameter_study() -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + len(t.suggest_categorical("fixed", ["a"])), n_trials=5)
    return study


def test_multi_objective_study_plots_the_first_objective():
    study = _study(N_STUDY, ("maximize", "minimize"))
    history = _history_figure(study)
    qualities = [t.values[0] for t in study.trials]
    assert (history.data[0].name, history.data[-1].name) == ("quality", "best quality so far")
    assert list(history.data[0].y) == qualities
    assert list(history.data[-1].y) == list(np.maximum.accumulate(qualities))
    importances = _importance_figure(study)
    assert sorted(importances.data[0].y) == IMPORTANCE


def test_curves_draw_pipelines_that_score_alike_once():
    """Three pipelines with the same values on every question are one curve, named for all three;
    the next curve is the best pipeline that scores differently."""
    from ragopt.analysis.compare import Settings, StudyResults
    from ragopt.analysis.report_data import curves

    rng = np.random.default_rng(1)
    alike, second, third = ({f"{m}@{k}": rng.random(12) for m in METRICS for k in KS} for _ in range(3))
    runs = [alike, alike, second, alike, third]
    value = [0.8, 0.8, 0.7, 0.8, 0.6]
    trials = pd.DataFrame({"trial": range(5), "value": value, "pipeline": [f"bm25 #{t}" for t in range(5)],
                           "param.bm25.k1": [1.2, 1.8, 0.9, 1.5, 1.0], "seconds_per_query": 0.001})
    per_question = pd.concat([pd.DataFrame({"trial": t, "qid": [f"q{i}" for i in range(12)], "split": "selection",
                                            "fold": -1, "objective": value[t], **runs[t]}) for t in range(5)])
    drawn = curves(StudyResults(trials, per_question, {}), 2, Settings(resamples=200))
    assert drawn["trial"].unique().tolist() == [0, 2]
    names = drawn.drop_duplicates("trial")["pipeline"].tolist()
    assert names == ["bm25 #0 (and 2 pipelines with the same curves: k1 1.2–1.8)", "bm25 #2"]
    mrr = drawn[(drawn["trial"] == 2) & (drawn["metric"] == "mrr") & (drawn["k"] == 3)]
    assert mrr["mean"].tolist() == [pytest.approx(second["mrr@3"].mean())]


def test_import_needs_no_torch():
    assert imported_heavy("import ragopt.analysis.report") == "heavy: []"


CHUNKERS = {"token_window": 180.5, "recursive": 512.25, "as_given": 14658.0}
"""A study over documents: each chunker type's mean chunk length in characters (over 20x apart: a log axis)."""
CHUNK_TICKS = ["200", "500", "1000", "2000", "5000", "10000"]


def documents_report_data() -> ReportData:
    """The page's trials as a study over documents: a chunker per trial, its chunking's size and
    its evidence recall within a 1024-token context."""
    data = report_data(_study(N_STUDY))
    trials = data.trials
    chunker = [list(CHUNKERS)[t % len(CHUNKERS)] for t in trials["trial"]]
    evidence = np.random.default_rng(2).uniform(0.2, 0.9, len(trials))
    data.chunk_sizes = pd.DataFrame({"trial": trials["trial"], "pipeline": trials["pipeline"], "chunker": chunker,
                                     "chunks": [3979 if c == "token_window" else 32 for c in chunker],
                                     "chunk_chars": [CHUNKERS[c] for c in chunker], "value": trials["value"],
                                     "value.holdout": trials["value.holdout"], "evidence_recall@1024t": evidence})
    return data


@pytest.fixture(scope="module")
def documents_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportData]:
    data = documents_report_data()
    return write_report(tmp_path_factory.mktemp("documents") / "report.html", data), data


def test_a_study_over_documents_draws_score_vs_chunk_size(documents_page):
    page, data = documents_page
    rendered = inspect(require_chromium(), page, CHECK, page.parent / "report.png")
    plots = {plot["id"]: plot for plot in rendered["plots"]}
    assert list(plots) == ["fig-matrix", "fig-curves", "fig-chunks", "fig-pareto", "fig-history", "fig-importance"]
    assert rendered["errors"] == [] and "Score vs chunk size" in rendered["headings"]
    chunks = plots["fig-chunks"]
    assert chunks["shown"] and chunks["width"] > 600 and chunks["height"] > 150
    assert chunks["points"] == 3 * N_TRIALS  # objective, held out, evidence recall of every trial
    assert chunks["legend"] == [name for c in sorted(CHUNKERS) for name in (c, f"{c}, held out")]
    assert chunks["xticks"] == CHUNK_TICKS  # the objective's panel: a log axis (the evidence panel's: x2tick)


def test_the_chunk_size_plot_puts_each_trial_at_its_chunkings_mean_length():
    sizes = documents_report_data().chunk_sizes
    figure = _chunk_size_figure(sizes)
    assert [(t.name, t.xaxis) for t in figure.data] == [
        (name, axis) for c in sorted(CHUNKERS) for name, axis in ((c, "x"), (c, "x2"), (f"{c}, held out", "x"))]
    for trace in figure.data:
        chunker, held = trace.name.removesuffix(", held out"), trace.name.endswith("held out")
        rows = sizes[sizes["chunker"] == chunker]
        column = "value.holdout" if held else "value" if trace.xaxis == "x" else "evidence_recall@1024t"
        assert list(trace.x) == [CHUNKERS[chunker]] * len(rows) and list(trace.y) == list(rows[column])
        hover = f"{{}} chunks of {CHUNKERS[chunker]:.1f} characters on average"
        assert list(trace.customdata) == [f"#{t} {html.escape(p)}<br>{hover.format(n)}"
                                          for t, p, n in zip(rows["trial"], rows["pipeline"], rows["chunks"])]
    assert figure.layout.xaxis.type == figure.layout.xaxis2.type == "log"
    narrow = sizes.assign(chunk_chars=sizes["chunk_chars"].clip(upper=2000)).drop(columns=["value.holdout",
                                                                                            "evidence_recall@1024t"])
    figure = _chunk_size_figure(narrow)
    assert len(figure.data) == len(CHUNKERS) and figure.layout.xaxis.type is None  # 11x apart: a linear axis
    assert "fig-chunks" not in render(report_data(None)) and "chunk size" not in render(report_data(None))


DOCS = AUTORAG_KO_DOCS
DOCUMENTS_STUDY = f"""
data: {{documents: "{DOCS / 'documents' / 'finance - *.txt'}", qa: "@QA@", domain_column: domain}}
chunkers:
  - {{name: window, type: token_window, size: [150, 600], overlap: 0.25, tokenizer: characters}}
  - {{name: recursive, type: recursive, size: 500}}
  - {{name: whole, type: as_given}}
retrievers: [{{name: bm25, type: bm25, tokenizer: whitespace, k1: 1.2, b: 0.75}}]
top_k: [1, 3]
metrics: [recall, ndcg, evidence_recall]
budgets: [256, 1024]
optimize: {{ndcg: 1.0, evidence_recall@1024t: 1.0}}
study: {{n_trials: 8, seed: 1, latency: off, holdout: 0.3}}
"""
SETTINGS = {"window": {"type": "token_window", "overlap": 0.25, "tokenizer": "characters"},
            "recursive": {"type": "recursive", "size": 500}, "whole": {"type": "as_given"}}


def test_the_report_of_a_real_study_over_documents_plots_each_trials_chunking(tmp_path):
    """The 22 finance questions of autorag-ko-docs over their 7 documents, three chunkers: each
    trial at the mean length of the chunks its chunker cuts, with its own values."""
    lines = (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "qa.jsonl").write_text("\n".join(line for line in lines if '"domain": "finance"' in line) + "\n",
                                       encoding="utf-8")
    config = write_config(tmp_path / "docs.yaml", DOCUMENTS_STUDY.replace("@QA@", str(tmp_path / "qa.jsonl")))
    output = optimize(config, progress=False).output
    report = build_report(output, tmp_path / "report.html")
    assert 'id="fig-chunks"' in report.read_text(encoding="utf-8")
    results = StudyResults.load(output)
    sizes = chunk_sizes(results)
    trials = results.trials
    assert list(sizes.columns) == ["trial", "pipeline", "chunker", "chunks", "chunk_chars", "value", "value.holdout",
                                   "evidence_recall@1024t"]  # the objective's budget, not the first
    documents = load_documents(DOCS / "documents" / "finance - *.txt")
    for row, trial in zip(sizes.to_dict("records"), trials.to_dict("records")):
        settings = dict(SETTINGS[trial["param.chunker"]])
        if trial["param.chunker"] == "window":
            settings["size"] = int(trial["param.window.size"])
        pipeline = {"chunker": settings, "retriever": {"type": "bm25", "tokenizer": "whitespace"}, "top_k": 1}
        spec = PipelineSpec.model_validate(pipeline).chunker
        lengths = [len(text) for text in chunk_documents(spec, documents).corpus.contents]
        assert (row["chunker"], row["chunks"]) == (settings["type"], len(lengths))
        assert row["chunk_chars"] == pytest.approx(np.mean(lengths), abs=0.05)
        assert [row[c] for c in ("trial", "pipeline", "value", "value.holdout", "evidence_recall@1024t")] == [
            trial[c] for c in ("trial", "pipeline", "value", "value.holdout", "evidence_recall@1024t")]
    assert sizes["chunker"].nunique() == 3 and sizes["chunk_chars"].max() / sizes["chunk_chars"].min() > 20
    results.manifest["objective"] = {"ndcg": 1.0}
    assert list(chunk_sizes(results).columns)[-1] == "evidence_recall@256t"  # else the first budget scored
    assert chunk_sizes(StudyResults(trials.drop(columns=["chunks", "chunk_chars"]), results.per_question,
                                    results.manifest)).empty  # a study over passages
