"""report.html: a study in one self-contained page (plotly.js inlined once, no network, no files
beside it) that shows why the winner won: per-domain comparison, metric-vs-k curves, tuned models'
training curves, quality vs latency, Optuna's history and parameter importances, and every trial
in a sortable table."""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ragopt.analysis.compare import described
from ragopt.files import write_text
from ragopt.analysis.selection import TIE_RULE


@dataclass
class ReportData:
    """Everything the page shows, as plain frames and text; any frame may be empty (its section
    then says so instead of plotting)."""

    title: str  # e.g. "autorag-ko.yaml: 200 trials"
    facts: list[tuple[str, str]]  # short key/value lines shown at the top
    trials: pd.DataFrame  # one row per trial: trial, value, pipeline, param.*, choice.*, metric@k, ...
    matrix: pd.DataFrame  # long form: choice, domain, trial, score, low, high, questions, best, tied
    matrix_by: str  # what the choices are: "retriever" | "model" | "tokenizer" | "reranker"
    metric: str  # the metric the matrix shows, e.g. "ndcg@10" or "objective"
    curves: pd.DataFrame  # long form: trial, pipeline, metric, k, mean, low, high
    pareto: pd.DataFrame  # trial, pipeline, quality, seconds_per_query, front
    study: Optional[optuna.Study]  # for the optimization history and the parameter importances
    best_yaml: str  # the exported best.yaml, shown verbatim
    confidence: float = 0.95  # the level of the intervals shown
    best_trial: Optional[int] = None  # the exported winner's trial (default: the highest value)
    chunk_sizes: pd.DataFrame = field(default_factory=pd.DataFrame)
    """A study over documents: trial, pipeline, chunker (type), chunks, chunk_chars (mean characters),
    value, value.holdout (with a holdout), evidence_recall@<budget>t (when scored); empty otherwise."""
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    """A study with tuned models (tuning.csv): model, setting, part (final, fold 1 of 3, ...), kind (loss,
    ndcg@10, hit@1), on (training, held-out), step, epoch, value; empty otherwise."""
    held_out: int = 0
    """The study's held-out questions, which no tuned model trains on."""


PLOT_CONFIG = {"displaylogo": False, "responsive": True}
"""No plotly logo: it is a link to the web."""

FONT = "system-ui, 'Noto Sans CJK KR', 'Nanum Gothic', 'Malgun Gothic', sans-serif"

STYLE = """
body { font-family: %s; margin: 0 auto; max-width: 1320px; padding: 0 24px 48px; color: #222; }
h1 { font-size: 1.6em; margin: 24px 0 8px; }
h2 { font-size: 1.25em; margin: 36px 0 4px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.how { color: #555; margin: 4px 0 12px; }
p.note { color: #8a5a00; background: #fff8e6; padding: 8px 12px; }
nav a { margin-right: 14px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 4px 18px; margin: 0; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
pre.yaml { background: #f6f8fa; padding: 12px; overflow: auto; max-height: 480px; }
div.scroll { overflow: auto; max-height: 640px; border: 1px solid #ddd; }
table.sortable { border-collapse: collapse; font-size: 13px; white-space: nowrap; }
table.sortable th, table.sortable td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }
table.sortable th { position: sticky; top: 0; background: #f0f2f5; cursor: pointer; user-select: none; }
table.sortable th[data-dir=asc]::after { content: " \\25B2"; }
table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
table.sortable td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable td.text { white-space: normal; min-width: 320px; }
table.sortable tr.best { background: #eaf6ea; }
""" % FONT

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0];
  const dir = th.dataset.dir === "asc" ? "desc" : "asc", sign = dir === "asc" ? 1 : -1;
  table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const key = row => row.cells[column].textContent.trim();
  const compare = (a, b) => {
    if (a === "" || b === "") return (a === "") - (b === "");
    const x = Number(a), y = Number(b);
    return sign * (isNaN(x) || isNaN(y) ? a.localeCompare(b) : x - y);
  };
  body.append(...[...body.rows].sort((a, b) => compare(key(a), key(b))));
}));
"""
"""Click a header to sort by that column, again to reverse; empty cells stay last."""


def write_report(path: Path, data: ReportData) -> Path:
    """Write the report page to `path` atomically and return the path."""
    write_text(path, render(data))
    return path


def render(data: ReportData) -> str:
    """The report page as one HTML string."""
    figures = [
        ("matrix", f"Per-domain comparison of the best pipeline of each {data.matrix_by}",
         f"Each cell: mean {data.metric} of the {data.matrix_by}'s best trial in the domain, chosen on the "
         f"selection questions and scored {described(data.matrix)}, "
         f"[{data.confidence:.0%} bootstrap interval]; ★ the domain's best, = not significantly worse than it "
         "(Holm-corrected).",
         _matrix_figure(data)),
        ("curves", "Metrics at every k of the top pipelines",
         f"Mean over the questions with {data.confidence:.0%} bootstrap intervals as error bars; one panel per metric. "
         "Pipelines with the same value of every metric on every question are one curve, named for them all.",
         _curves_figure(data.curves)),
        *_chunk_size_section(data.chunk_sizes),
        *_training_section(data.training, data.held_out),
        ("pareto", "Quality vs latency",
         "Every trial; the red staircase is the Pareto front: no other trial is both faster and better. The star "
         "is the exported winner. Of pipelines of exactly equal quality the winner is the cheapest by a fixed rule "
         f"({TIE_RULE}), not the one that happened to measure faster (unless the study optimized latency too), so "
         "it can sit just beside the front.",
         _pareto_figure(data.pareto, data.best_trial)),
        ("history", "Optimization history",
         "The objective of each trial in the order Optuna ran them, and the best so far.",
         _history_figure(data.study)),
        ("importance", "Parameter importances",
         "How much each parameter mattered for reaching the top 10% of trials (Optuna's PED-ANOVA).",
         _importance_figure(data.study)),
    ]
    plots = [(key, title, how, "\n".join(part if isinstance(part, str) else _figure_html(part, div_id)
                                         for div_id, part in _parts(key, body)))
             for key, title, how, body in figures]
    has_plot = any(not isinstance(part, str) for key, *_, body in figures for _, part in _parts(key, body))
    sections = [
        ("facts", "Facts", "The data and the study this page describes.", _facts_html(data.facts)),
        ("best", "Exported best.yaml", "The winner as `ragopt query` and `ragopt.load_pipeline` read it.",
         f'<pre class="yaml">{html.escape(data.best_yaml)}</pre>'),
        *plots,
        ("trials", "All trials", "Click a column header to sort by it (again to reverse); the winner is green.",
         _table_html(data.trials, data.best_trial)),
    ]
    nav = " ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{html.escape(title)}</h2><p class="how">{html.escape(how)}</p>'
                     f"\n{content}\n</section>" for key, title, how, content in sections)
    plotly_js = f'<script type="text/javascript">{get_plotlyjs()}</script>' if has_plot else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>ragopt: {html.escape(data.title)}</title>\n<style>{STYLE}</style>\n{plotly_js}\n</head>\n"
            f"<body>\n<h1>ragopt: {html.escape(data.title)}</h1>\n<nav>{nav}</nav>\n{body}\n"
            f"<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n")


Body = go.Figure | str | list[tuple[str, go.Figure | str]]
"""A section's content: a figure, a note instead of one, or several of them named."""


def _parts(key: str, body: Body) -> list[tuple[str, go.Figure | str]]:
    """A section's figures (or notes) with the ids of their <div>s: fig-<key>, or fig-<key>-<name> each."""
    if isinstance(body, list):
        return [(f"fig-{key}-{name}", part) for name, part in body]
    return [(f"fig-{key}", body)]


def _figure_html(figure: go.Figure, div_id: str) -> str:
    """One figure as a <div> and its plotting script, in the page's style, without plotly.js."""
    figure.update_layout(template="plotly_white", title=None, font={"family": FONT, "size": 13},
                         margin={"l": 70, "r": 30, "t": 40, "b": 60, **figure.layout.margin.to_plotly_json()},
                         autosize=True)
    figure.update_xaxes(automargin=True)
    figure.update_yaxes(automargin=True)
    return pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def _facts_html(facts: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(str(value))}</dd>"
                                          for key, value in facts) + "</dl>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _label(text: Any, width: int = 0) -> str:
    """A user string for plotly: entities instead of < > & (plotly.js reads tags in labels),
    shortened to `width` characters when it is given."""
    text = str(text)
    if width and len(text) > width:
        text = text[:width - 1] + "…"
    return html.escape(text)


def _cell(value: Any) -> tuple[str, str]:
    """A table cell's text and CSS class: numbers to 4 decimals, missing values empty."""
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), ""
    if isinstance(value, (int, np.integer)):
        return str(value), "num"
    if isinstance(value, (float, np.floating)):
        return ("" if math.isnan(value) else f"{value:.4f}"), "num"
    if value is None or value is pd.NA:
        return "", ""
    return html.escape(str(value)), "text" if len(str(value)) > 40 else ""


def _table_html(trials: pd.DataFrame, best_trial: Optional[int] = None) -> str:
    """Every trial, sortable by any column; the winner's row (or the rows of the best value) marked."""
    if trials.empty:
        return _note("No finished trial.")
    if best_trial is not None:
        best = trials["trial"] == best_trial
    else:
        best = trials["value"] == trials["value"].max() if "value" in trials else [False] * len(trials)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in trials.columns)
    rows = []
    for values, marked in zip(trials.itertuples(index=False, name=None), best):
        cells = "".join(f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"
                        for text, css in map(_cell, values))
        rows.append(f'<tr class="best">{cells}</tr>' if marked else f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _matrix_figure(data: ReportData) -> go.Figure | str:
    """Choices x domains heatmap of the score, each cell annotated with its interval and marks."""
    matrix = data.matrix
    if matrix.empty:
        return "No per-domain comparison: the questions have no domains."
    domains = list(dict.fromkeys(matrix["domain"]))
    choices = matrix.groupby("choice", sort=False)["score"].mean().sort_values(ascending=False).index.tolist()
    cells = matrix.assign(
        text=[f"{r.score:.3f}{' ★' if r.best else ' =' if r.tied else ''}<br>[{r.low:.2f}, {r.high:.2f}]"
              for r in matrix.itertuples()],
        hover=[f"{_label(r.choice)}<br>{_label(r.domain)}: {r.score:.4f} [{r.low:.4f}, {r.high:.4f}]<br>"
               f"trial {r.trial}, {r.questions} questions" for r in matrix.itertuples()])

    def grid(column: str) -> np.ndarray:
        return cells.pivot(index="choice", columns="domain", values=column).reindex(
            index=choices, columns=domains).to_numpy()

    questions = matrix.groupby("domain")["questions"].max()
    figure = go.Figure(go.Heatmap(
        z=grid("score").astype(float), x=[f"{_label(d)}<br>{questions[d]} questions" for d in domains],
        y=[_label(c) for c in choices], text=np.where(pd.isna(grid("text")), "", grid("text")),
        texttemplate="%{text}", textfont={"size": 13}, customdata=np.where(pd.isna(grid("hover")), "", grid("hover")),
        hovertemplate="%{customdata}<extra></extra>",
        colorscale="Viridis", colorbar={"title": {"text": _label(data.metric)}}, xgap=2, ygap=2))
    figure.update_layout(height=110 + 56 * len(choices), xaxis={"side": "top"}, yaxis={"autorange": "reversed"},
                         margin={"t": 80, "b": 20})
    return figure


def _curves_figure(curves: pd.DataFrame) -> go.Figure | str:
    """One panel per metric: each top pipeline's mean at every k with its interval as error bars,
    points of one k set side by side so that the bars do not hide each other."""
    if curves.empty:
        return "No metric-vs-k curves were given."
    metrics = list(dict.fromkeys(curves["metric"]))
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    panels = 320 * rows  # pixels of the panels and the gaps between them
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[_label(m) for m in metrics],
                           horizontal_spacing=0.06, vertical_spacing=110 / panels)
    ks = [str(k) for k in sorted(curves["k"].unique())]
    colours = qualitative.Plotly
    for index, (trial, lines) in enumerate(curves.groupby("trial", sort=False)):
        name = f"#{trial} {_label(lines['pipeline'].iloc[0], 160)}"
        for position, metric in enumerate(metrics):
            line = lines[lines["metric"] == metric].sort_values("k")
            figure.add_scatter(
                x=line["k"].astype(str), y=line["mean"], mode="lines+markers", name=name, legendgroup=str(trial),
                showlegend=position == 0, marker={"color": colours[index % len(colours)], "size": 7},
                error_y={"type": "data", "array": line["high"] - line["mean"], "arrayminus": line["mean"] - line["low"],
                         "thickness": 1.2, "width": 3},
                hovertemplate=f"{name}<br>{_label(metric)}@%{{x}}: %{{y:.4f}}<extra></extra>",
                row=position // columns + 1, col=position % columns + 1)
    figure.update_xaxes(type="category", categoryorder="array", categoryarray=ks, title_text="k")
    figure.update_layout(height=panels + 70 + 60 + 22 * curves["trial"].nunique(), scattermode="group",
                         scattergap=0.5, margin={"t": 70, "b": 60},
                         legend={"orientation": "h", "yanchor": "top", "y": -60 / panels, "x": 0})
    return figure


def _pareto_figure(pareto: pd.DataFrame, best_trial: Optional[int] = None) -> go.Figure | str:
    """Quality vs milliseconds per query of every trial, the Pareto front as a connected staircase,
    the exported winner as a star of its own (in the legend too)."""
    if pareto.empty:
        return "No trial has a measured latency."
    table = pareto.assign(ms=pareto["seconds_per_query"] * 1000,
                          hover=[f"#{r.trial} {_label(r.pipeline, 120)}" for r in pareto.itertuples()])
    front = table[table["front"].astype(bool)].sort_values("ms")
    rest = table[~table["front"].astype(bool)]
    template = "%{customdata}<br>quality %{y:.4f}, %{x:.2f} ms per query<extra></extra>"
    figure = go.Figure()
    figure.add_scatter(x=rest["ms"], y=rest["quality"], mode="markers", name="other trials",
                       marker={"color": "rgba(120,120,120,0.55)", "size": 8}, customdata=rest["hover"],
                       hovertemplate=template)
    figure.add_scatter(x=front["ms"], y=front["quality"], mode="lines+markers+text", name="Pareto front",
                       line={"color": "#d62728", "shape": "hv", "width": 2}, marker={"color": "#d62728", "size": 10},
                       text=[f"#{t}" for t in front["trial"]], textposition="top left", customdata=front["hover"],
                       hovertemplate=template)
    winner = table[table["trial"] == best_trial]
    if len(winner):
        figure.add_scatter(x=winner["ms"], y=winner["quality"], mode="markers", name=f"exported winner (trial "
                           f"{best_trial})", marker={"symbol": "star", "color": "#2ca02c", "size": 18,
                                                     "line": {"color": "#1a1a1a", "width": 1}},
                           customdata=winner["hover"], hovertemplate="exported winner: " + template)
    _log_x_when_wide(figure, table["ms"].min(), table["ms"].max())
    figure.update_layout(height=480, xaxis={"title": {"text": "milliseconds per query (lower is better)"}},
                         yaxis={"title": {"text": "quality (higher is better)"}})
    return figure


def _log_x_when_wide(figure: go.Figure, low: float, high: float) -> None:
    """Where the x values span more than 20x, a log axis labelled 1, 2, 5, 10, ... instead of every digit."""
    if low > 0 and high / low > 20:
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                 for m in (1, 2, 5) if low / 1.5 <= m * 10.0 ** e <= high * 1.5]
        figure.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


def _chunk_size_section(sizes: pd.DataFrame) -> list[tuple[str, str, str, go.Figure]]:
    """The score-vs-chunk-size section of a study over documents; none for a study over passages."""
    if sizes.empty:
        return []
    budget = next((c for c in sizes.columns if c.startswith("evidence_recall@")), None)
    how = ("Every trial at the mean length in characters of the chunks its chunker cut the documents into, "
           "one colour per chunker type")
    if "value.holdout" in sizes:
        how += "; open markers: its objective on the held-out questions"
    if budget is not None:
        how += (f". Right: {budget}, the share of the evidence inside a context of {budget.split('@')[1][:-1]} "
                "tokens, which long chunks cannot win by their length alone")
    return [("chunks", "Score vs chunk size", how + ".", _chunk_size_figure(sizes))]


def _chunk_size_figure(sizes: pd.DataFrame) -> go.Figure:
    """The objective (and held-out value) of every trial against its chunking's mean chunk length,
    a trace per chunker type; beside it, when the study scored one, its evidence recall within a
    token budget."""
    panels = [("value", "objective")]
    panels += [(c, c) for c in sizes.columns if c.startswith("evidence_recall@")]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[_label(t) for _, t in panels],
                           horizontal_spacing=0.08)
    table = sizes.assign(hover=[f"#{t} {_label(p, 120)}<br>{n} chunks of {c:.1f} characters on average"
                                for t, p, n, c in zip(sizes["trial"], sizes["pipeline"], sizes["chunks"],
                                                      sizes["chunk_chars"])])
    colours = qualitative.Plotly
    for index, (chunker, rows) in enumerate(table.groupby("chunker", sort=True)):
        colour = colours[index % len(colours)]
        series = [(column, title, str(chunker), "circle", panel) for panel, (column, title) in enumerate(panels, 1)]
        if "value.holdout" in rows:
            series.append(("value.holdout", "objective on held-out questions", f"{chunker}, held out", "circle-open",
                           1))
        for column, title, name, symbol, panel in series:
            figure.add_scatter(
                x=rows["chunk_chars"], y=rows[column], mode="markers", name=_label(name), legendgroup=_label(name),
                showlegend=panel == 1, marker={"color": colour, "symbol": symbol, "size": 9},
                customdata=rows["hover"], row=1, col=panel,
                hovertemplate=f"%{{customdata}}<br>{_label(title)}: %{{y:.4f}}<extra></extra>")
    _log_x_when_wide(figure, table["chunk_chars"].min(), table["chunk_chars"].max())
    figure.update_xaxes(title_text="mean chunk length (characters)")
    figure.update_layout(height=480, margin={"t": 60, "b": 60},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
    return figure


def _training_section(training: pd.DataFrame, held_out: int) -> list[tuple[str, str, str, Body]]:
    """The tuned models' training loss per step and held-out nDCG@10 per epoch, one line per tuned
    setting's final model (each fold model's loss when no final model was trained); none without
    tuned models."""
    if training.empty:
        return []
    final = training[training["part"] == "final"]
    lines = final if len(final) else training
    how = ("One line per tuned setting: its final model, trained on every selection question. " if len(final) else
           "The study trained no final model (it holds no question out): one line per fold model. ")
    how += "First: the training loss at each step, on the questions the model trains on."
    held = lines[(lines["kind"] == "ndcg@10") & (lines["on"] == "held-out")]
    if len(held):
        how += (f" Second: nDCG@10 after each epoch on the {held_out} held-out questions, which no tuned model ever "
                "trains on; epoch 0 is the base model before training. Neither curve steers training: no epoch is "
                "picked and nothing stops early by them.")
    return [("tuned", "Tuned models", how, [
        ("loss", _training_figure(lines[lines["kind"] == "loss"], "step", "training loss")),
        ("held-out", _training_figure(held, "epoch", "nDCG@10 on the held-out questions") if len(held) else
         "No held-out curve: the study holds no question out, and a tuned model is scored after each epoch only on "
         "questions it never trains on.")])]


def _training_figure(rows: pd.DataFrame, x: str, title: str) -> go.Figure:
    """One line per tuned model (its setting, and its part when not the final model) of `value` against `x`."""
    figure = go.Figure()
    colours = qualitative.Plotly
    for index, ((setting, part), line) in enumerate(rows.groupby(["setting", "part"], sort=False)):
        name = _label(setting if part == "final" else f"{setting} ({part})", 160)
        line = line.sort_values(x)
        figure.add_scatter(x=line[x], y=line["value"], mode="lines+markers" if x == "epoch" else "lines", name=name,
                           line={"color": colours[index % len(colours)]},
                           hovertemplate=f"{name}<br>{x} %{{x}}: %{{y:.4f}}<extra></extra>")
    if x == "epoch":
        epochs = sorted(rows["epoch"].unique())
        figure.update_xaxes(tickvals=epochs, ticktext=["0 (base)" if e == 0 else f"{e:g}" for e in epochs])
    figure.update_layout(height=420 + 22 * rows.groupby(["setting", "part"]).ngroups, margin={"t": 40, "b": 60},
                         xaxis={"title": {"text": x}}, yaxis={"title": {"text": title}},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0})
    return figure


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _history_figure(study: Optional[optuna.Study]) -> go.Figure | str:
    """Optuna's optimization history; for a multi-objective study, of the first objective ("quality")
    with its running best, which Optuna leaves out for a custom target."""
    if study is None:
        return "No Optuna study was given."
    trials = _complete(study)
    if not trials:
        return "The study has no completed trial."
    if len(study.directions) == 1:
        return optuna.visualization.plot_optimization_history(study)
    figure = optuna.visualization.plot_optimization_history(study, target=lambda t: t.values[0], target_name="quality")
    best = np.maximum if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else np.minimum
    figure.add_scatter(x=[t.number for t in trials], y=best.accumulate([t.values[0] for t in trials]),
                       mode="lines", name="best quality so far")
    return figure


def _importance_figure(study: Optional[optuna.Study]) -> go.Figure | str:
    """Optuna's parameter importances by PED-ANOVA (no scikit-learn needed), where at least two
    parameters took more than one value; for a multi-objective study, of the first objective.
    Optuna picks the parameters: from 5.0 on also those only some trials have (k1 of a BM25)."""
    if study is None:
        return "No Optuna study was given."
    trials = _complete(study)
    if len(trials) < 2:
        return "Parameter importances need at least two completed trials."
    names = sorted({name for t in trials for name in t.params})
    varying = [n for n in names if len({repr(t.params[n]) for t in trials if n in t.params}) > 1]
    if len(varying) < 2:
        return (f"Only {len(varying)} parameter took more than one value ({', '.join(varying) or 'none'}): "
                "nothing to rank.")
    target: Optional[Callable[[optuna.trial.FrozenTrial], float]] = None
    if len(study.directions) > 1:
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731 - PED-ANOVA ranks low targets first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's "low targets first" note: `sign` handles it
        figure = optuna.visualization.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=target,
            target_name="quality" if target else "Objective Value")
    figure.update_layout(height=140 + 30 * len(figure.data[0].y))
    return figure
