"""The ragopt command: parse arguments, call the library, print. No logic of its own; the
heavy modules are imported by the commands that need them, so `ragopt --help` and `ragopt
validate` start without torch."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from ragopt.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  rich_markup_mode=None, help="Find the best retrieval pipeline for a QA set and corpus.")
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"ragopt {version('ragopt')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print ragopt's version and exit."),
    debug: bool = typer.Option(False, "--debug", envvar="RAGOPT_DEBUG",
                               help="Show the traceback of every error (RAGOPT_DEBUG=1 does the same; worker "
                               "processes inherit it)."),
) -> None:
    """Find the best retrieval pipeline for a QA set and corpus."""
    if debug:
        os.environ["RAGOPT_DEBUG"] = "1"  # the switch _debug reads, inherited by worker processes
    else:
        os.environ.pop("RAGOPT_DEBUG", None)  # a false value (0, no, false): absent means the same
    console.soft_wrap = not console.is_terminal  # piped or redirected: each line whole, however long
    ctx.with_resource(_one_line_errors())
    ctx.with_resource(_one_line_warnings())


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """A UserWarning (texts cut to a model's length, a top_k beyond the corpus) printed as one
    line, without the source file and line Python adds; other warnings as Python shows them."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UserWarning) and not _debug():
            err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _debug() -> bool:
    """Whether --debug (or RAGOPT_DEBUG) is on for this command."""
    return os.environ.get("RAGOPT_DEBUG") == "1"


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Any command's errors without a traceback unless --debug: a UserError as its paragraph
    (exit code 2), an unexpected one (a bug, or a failure no check foresaw) as one line (exit
    code 1); typer's exits and usage errors pass through."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except UserError as error:
        _fail(error)
    except Exception as error:
        if _debug():
            raise
        message = " ".join(str(error).split())
        err.print(f"[bold red]error:[/] {type(error).__name__}: {escape(message)} (rerun with --debug for the "
                  "traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


def _shown(url: str) -> str:
    from ragopt.study.storage import shown

    return shown(url)


class _Table:
    """A table as a person reads it. In a terminal, drawn to its width, long cells wrapped at
    spaces and only a word wider than its column folded: Korean passages, domains and pipelines
    are never cut short or ended with an ellipsis. Piped or redirected, a markdown table with each
    row on one line, cells whole, to read, paste or hand to another program."""

    def __init__(self, *headers: str, title: str = "", lines: bool = False) -> None:
        self.headers, self.title, self.lines = headers, title, lines
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def print(self) -> None:
        if console.is_terminal:
            table = Table(*(Column(escape(h), overflow="fold") for h in self.headers), title=escape(self.title) or None,
                          show_lines=self.lines)
            for row in self.rows:
                table.add_row(*map(escape, row))
            console.print(table)
            return
        rows = [self.headers, ["---"] * len(self.headers), *self.rows]
        table = ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in rows]
        console.out("\n".join([self.title, "", *table, ""] if self.title else ["", *table, ""]), highlight=False)


def _markdown_cell(text: str) -> str:
    """A cell of a markdown table: on one line, its pipes escaped."""
    return " ".join(text.splitlines()).replace("|", "\\|")


def _fail(error: Exception) -> None:
    """A UserError as its paragraph and exit code 2; with --debug, raised again with its traceback."""
    if _debug():
        raise error
    err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command("optimize")
def optimize_command(
    config: Path = typer.Argument(..., help="The search space, a YAML file (see configs/)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder.",
                                          show_default="<config>-output next to the config"),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", "-n", help="Total trials (at least 1), overriding "
                                           "study.n_trials.", show_default="study.n_trials"),
    fresh: bool = typer.Option(False, "--fresh",
                               help="Delete the stored study and the outputs of the previous one (not the cache), "
                               "and start over instead of resuming."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    per_domain: bool = typer.Option(False, "--per-domain",
                                    help="Also export each domain's winner to per_domain/ (study.per_domain)."),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="RAGOPT_STORAGE",
                                          help="A database the study lives in, shared by every process given it "
                                          "(e.g. postgresql://user@host/db); the environment variable keeps a "
                                          "password off the command line.",
                                          show_default="study.storage, else study.db in the output folder"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes on this machine (one GPU each "
                                "where there are several); more than one shares the study through its storage."),
    worker: bool = typer.Option(False, "--worker", hidden=True, help="Run trials only; another process writes."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before --fresh deletes a shared study."),
) -> None:
    """Run (or resume) a study and write its output folder.

    The folder holds trials.csv, per_question.parquet, runs/, qrels.trec, best.yaml and
    summary.md. Every model the config names is checked first: those that cannot be loaded on
    this machine are listed together, before any trial."""
    from ragopt.study import optimize

    if quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if fresh and storage and not yes and not worker:
        typer.confirm(f"--fresh deletes the study in {_shown(storage)} for every worker sharing it, and the "
                      "outputs in the output folder; go on?", abort=True)
    try:
        outcome = optimize(config, output, n_trials, fresh and not worker, progress=not quiet, per_domain=per_domain,
                           storage=storage, workers=workers, write=not worker)
    except KeyboardInterrupt:  # before any trial finished (models loading or encoding): nothing is lost
        err.print("interrupted before any trial finished: the cache keeps what was encoded; rerun the same command "
                  "to resume", highlight=False)
        raise typer.Exit(code=130) from None
    if outcome is None:
        return
    k = outcome.best_spec.top_k
    pruned = f" (and {outcome.n_pruned} pruned)" if outcome.n_pruned else ""
    pruned += f" ({len(outcome.failures)} failed: see summary.md)" if outcome.failures else ""
    console.print(f"best of {outcome.n_trials} trials{pruned}: {escape(outcome.best_spec.describe())}",
                  highlight=False)
    table = _Table("metric", f"@{k}")
    for name, value in outcome.best_metrics.items():
        if name.endswith(f"@{k}"):
            table.add_row(name.split("@")[0], f"{value:.4f}")
    table.print()
    held = [f"held-out {outcome.holdout_value:.4f}"] if outcome.holdout_value is not None else []
    held += [f"k-fold selection {outcome.folds_value:.4f}"] if outcome.folds_value is not None else []
    console.print(f"objective {outcome.best_value:.4f}" + "".join(f"; {h}" for h in held)
                  + f"; files in {outcome.output}", highlight=False)
    if outcome.interrupted:
        console.print("interrupted: the files cover the finished trials; rerun the same command to resume")
        raise typer.Exit(code=130)


@app.command("finetune")
def finetune_command(
    config: Path = typer.Argument(..., help="A config whose dense retriever has a finetune: block, every setting one "
                                  "value (see configs/autorag-ko-finetune.yaml)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder.",
                                          show_default="<config>-finetune next to the config"),
    retriever: Optional[str] = typer.Option(None, "--retriever", "-r", help="The tuned dense entry to train.",
                                            show_default="every dense entry with finetune:"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Tune a bi-encoder and judge it on held-out questions.

    Without a study: the model trains once on every question that study.holdout does not hold
    out (and generated ones when its finetune.questions says so); base and tuned are then
    scored on the held-out questions, which never reach training, with bootstrap intervals and
    a paired test. Writes tuned/ (the model), tuned.yaml (load it with ragopt query or
    ragopt.load_pipeline), finetune.md, finetune.json and tuning.csv."""
    from ragopt.analysis.summary import difference, interval
    from ragopt.study.finetune import finetune

    if quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    done = finetune(config, output, retriever, progress=not quiet)
    table = _Table("retriever", "metric", "base", "tuned", "tuned - base", "p",
                   title="base against tuned on questions the model never trained on")
    for model in done.models:
        console.print(f"{escape(model.retriever)}: {escape(model.setting)} trained on {model.rows} rows "
                      f"({model.training_questions} questions, {model.generated_questions} generated) in "
                      f"{model.seconds:.1f} s -> {escape(str(done.output / model.best))}", highlight=False,
                      soft_wrap=True)
        for metric, c in (model.compared or {}).items():
            paired = c.tuned_minus_base
            table.add_row(model.retriever, metric, interval(c.base.mean, c.base.low, c.base.high),
                          interval(c.tuned.mean, c.tuned.low, c.tuned.high),
                          difference(paired.difference, paired.low, paired.high), f"{paired.p_value:.3g}")
    if table.rows:
        table.print()
    console.print(f"files in {escape(str(done.output))}", highlight=False, soft_wrap=True)


@app.command("validate")
def validate_command(config: Path = typer.Argument(..., help="The YAML file to check.")) -> None:
    """Check a config, its data and its models, loading none.

    Every model that cannot be loaded on this machine (a hub id neither in the local Hugging
    Face cache nor on the hub, a folder or package that does not exist) is listed with the
    command that fetches it; exit code 2 when any is missing. Offline (HF_HUB_OFFLINE=1) the hub
    is not asked."""
    from ragopt.search.config import corpus_warnings, load_config
    from ragopt.search.space import MAX_GRID, small_space
    from ragopt.analysis.splits import study_splits
    from ragopt.study.data import read_inputs

    loaded, _ = load_config(config)
    data = read_inputs(loaded)  # the data, then every model the space names
    study_splits(loaded.study, data.qa.domains, len(data.qa))
    if data.documents is None:
        for warning in corpus_warnings(config, loaded, len(data.corpus)):
            err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        searched = f"{len(data.corpus)} passages"
    else:
        searched = f"{len(data.documents)} documents, {len(loaded.chunkers)} chunkers"
        if data.generated is not None:
            searched += f", {len(data.generated)} generated questions"
    pipelines = small_space(loaded, MAX_GRID) if loaded.finite else None
    size = ("continuous ranges" if not loaded.finite else f"more than {MAX_GRID} distinct pipelines"
            if pipelines is None else f"{len(pipelines)} distinct pipelines")
    console.print(f"ok: {len(data.qa)} questions, {searched}, {len(loaded.retrievers)} retrievers, "
                  f"{len(loaded.rerankers)} reranker choices, top_k {loaded.top_k}; search space: {size}")


@app.command("query")
def query_command(
    best: Path = typer.Argument(..., help="An exported best.yaml."),
    questions: list[str] = typer.Argument(..., help="One or more questions."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", "-c", help="The corpus to search (parquet, jsonl or "
                                          "csv)."),
    documents: Optional[str] = typer.Option(None, "--documents", "-d", help="Or documents to cut with the tuned "
                                            "chunker (a folder, glob or file of .txt/.md/.pdf/.jsonl)."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Passages per question.", show_default="the tuned top_k"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache folder.",
                                             show_default="cache/ next to best.yaml"),
) -> None:
    """Print the passages found for each question.

    A question that finds none (a BM25 pipeline: no token in it, or no passage sharing one) gets
    a line saying which, instead of a table; the exit code stays 0."""
    from ragopt.serving.pipeline import load_pipeline

    pipeline = load_pipeline(best, corpus, cache_dir or best.resolve().parent / "cache", progress=True,
                             documents=documents)
    results = pipeline.retrieve(questions, k)
    for question, hits in zip(questions, results):
        if not hits:
            console.print(_nothing_found(pipeline, question), markup=False, highlight=False)
            continue
        table = _Table("rank", "doc_id", "score", "passage", title=question, lines=True)
        for hit in hits:
            table.add_row(str(hit.rank), hit.doc_id, f"{hit.score:.4f}", hit.contents)
        table.print()


def _nothing_found(pipeline: Any, question: str) -> str:
    """Why a question found no passage: its retriever's tokenizers found no token in it, or no
    passage holds any of the tokens they found."""
    from ragopt.data.qa import nfc
    from ragopt.stages.retrievers.tokenizers import tokenize

    found = {t.label: tokenize(t, [nfc(question)], pipeline.engine.locate)[0]
             for t in pipeline.spec.retriever.tokenizers()}
    if not found:  # no BM25 in the pipeline: nothing to say beyond the fact
        return f"no passage for {question!r}"
    if not any(found.values()):
        which = f"the tokenizer {next(iter(found))}" if len(found) == 1 else f"the tokenizers {', '.join(found)}"
        return (f"no passage for {question!r}: {which} found no token in it, so BM25 has no term to match; ask "
                "with words")
    tokens = "; ".join(f"{label} tokens: {', '.join(t) or 'none'}" for label, t in found.items())
    return f"no passage for {question!r}: no passage shares a term with it ({tokens})"


@app.command("compare")
def compare_command(
    output: Path = typer.Argument(..., help="The output folder of `ragopt optimize`."),
    metric: str = typer.Option("objective", "--metric", "-m", help="objective, or a metric@k such as ndcg@10."),
    by: str = typer.Option("model", "--by", "-b", help="Compare choices of: retriever, model, tokenizer, reranker, "
                           "chunker."),
    top: int = typer.Option(10, "--top", help="Runners-up tested against the winner."),
    confidence: Optional[float] = typer.Option(None, help="Interval level.", show_default="the study's, 0.95"),
    seed: Optional[int] = typer.Option(None, help="Bootstrap and permutation seed.", show_default="the study's"),
    resamples: int = typer.Option(10_000, help="Bootstrap resamples and permutations."),
) -> None:
    """Compare the study's pipelines per domain, with intervals.

    Per-domain winners with intervals, a choice x domain matrix with significance, and the
    winner against the runners-up; printed and written to OUTPUT/compare/ (CSV and markdown)."""
    from ragopt.analysis.compare import BY, Settings, StudyResults
    from ragopt.analysis.summary import TIES, TRUST_TITLE, trust_lines, write_comparison

    if by not in BY:
        raise UserError(f"--by must be one of {list(BY)}; got {by!r}")
    results = StudyResults.load(output)
    study = results.manifest
    settings = Settings(study["confidence"] if confidence is None else confidence, resamples,
                        study["seed"] if seed is None else seed)
    tables = write_comparison(output, results, metric, by, top, settings)  # type: ignore[arg-type]
    on = "held-out questions" if results.has_holdout else "selection questions (no holdout: flattered)"
    _print_winners(tables["winners"], metric, on)
    _print_matrix(tables[f"matrix-{by}"], by, metric)
    _print_runner_ups(tables["runner_ups"], metric, on)
    console.print(TIES, highlight=False, soft_wrap=True)
    if trust := study.get("trust"):
        console.print(f"\n{TRUST_TITLE.lower()}\n" + "\n".join(trust_lines(trust)).replace("**", ""),
                      highlight=False, soft_wrap=True, markup=False)
    console.print(f"files in {output / 'compare'}", highlight=False)


def _print_runner_ups(frame: Any, metric: str, on: str) -> None:
    from ragopt.analysis.summary import difference, interval, verdict

    table = _Table("trial", "pipeline", f"{metric}, {on}", "winner minus this", "sig. (Holm)",
                   title="the winner against the runners-up")
    for r in frame.itertuples():
        table.add_row(str(r.trial), _pipeline(r), interval(r.score, r.low, r.high),
                      difference(getattr(r, "difference", None), getattr(r, "difference_low", None),
                                 getattr(r, "difference_high", None)),
                      verdict(getattr(r, "significant", False), getattr(r, "p_holm", None)))
    table.print()


def _print_winners(frame: Any, metric: str, on: str) -> None:
    from ragopt.analysis.summary import difference, interval, verdict

    table = _Table("domain", "questions (selection / scored)", "pipeline", f"{metric}, {on}",
                   "margin over runner-up", "sig. (Holm)", title="best pipeline per domain")
    for r in frame.itertuples():
        table.add_row(str(r.domain), f"{r.questions} / {r.scored_on}" + ("" if r.enough else " (few)"),
                      _pipeline(r), interval(r.score, r.low, r.high),
                      difference(getattr(r, "margin", None), getattr(r, "margin_low", None),
                                 getattr(r, "margin_high", None)),
                      verdict(getattr(r, "significant", False), getattr(r, "p_holm", None)))
    table.print()


def _pipeline(row: Any) -> str:
    """A table row's pipeline, with the pipelines that score alike when the row stands for several."""
    from ragopt.analysis.compare import tie_note

    return row.pipeline + tie_note(getattr(row, "ties", 0), getattr(row, "ties_differ", ""))


def _print_matrix(frame: Any, by: str, metric: str) -> None:
    from ragopt.analysis.compare import described
    from ragopt.analysis.summary import matrix_cells

    domains = list(dict.fromkeys(frame["domain"]))
    table = _Table(by, *map(str, domains), title=f"{metric}: best trial of each {by} per domain, scored "
                   f"{described(frame)} (★ best, = not significantly worse)")
    cells = matrix_cells(frame, digits=3)
    for choice in sorted(set(frame["choice"])):
        table.add_row(str(choice), *(cells.get((choice, d), "") for d in domains))
    table.print()


@app.command("report")
def report_command(
    output: Path = typer.Argument(..., help="The output folder of `ragopt optimize`."),
    metric: str = typer.Option("objective", "--metric", "-m", help="The metric of the per-domain heatmap."),
    by: str = typer.Option("model", "--by", "-b", help="The heatmap's choices: retriever, model, tokenizer, "
                            "reranker, chunker."),
    path: Optional[Path] = typer.Option(None, "--out", "-o", help="The HTML file.", show_default="OUTPUT/report.html"),
    storage: Optional[str] = typer.Option(None, "--storage", help="The study's database, for its history plots.",
                                          show_default="study.json's, without a password"),
) -> None:
    """Write an HTML report of the study that opens offline.

    One self-contained page: trials, per-domain heatmap, metric-vs-k curves, optimization
    history, parameter importances, quality vs latency, the best config."""
    from ragopt.analysis.report_data import build_report

    written = build_report(output, path or output / "report.html", metric, by, storage)  # type: ignore[arg-type]
    console.print(f"report: {written} ({written.stat().st_size / 1e6:.1f} MB, opens offline)", highlight=False)


@app.command("runs")
def runs_command(
    output: Path = typer.Argument(..., help="The output folder of `ragopt optimize`."),
    trials: list[int] = typer.Option([], "--trial", "-t", metavar="N", help="A trial to write; repeat for more.",
                                     show_default=False),
    best: bool = typer.Option(False, "--best", help="Also the winning trial (study.json's)."),
    folder: Optional[Path] = typer.Option(None, "--out", "-o", help="The folder of the TREC files.",
                                          show_default="OUTPUT/runs"),
) -> None:
    """Write trials' stored rankings as TREC run files.

    One trial-N.trec per trial, to re-score with trec_eval against OUTPUT/qrels.trec; in a study
    over documents, beside each its chunking's qrels, trial-N.qrels."""
    from ragopt.study.runs import RUNS, StudyRuns

    runs = StudyRuns(output)
    paths = runs.write(trials + ([runs.best] if best else []), folder or output / RUNS)
    for path in paths:
        console.print(str(path), highlight=False, soft_wrap=True)  # a long path stays one line


@app.command("import-autorag")
def import_autorag_command(
    autorag_config: Path = typer.Argument(..., help="An AutoRAG config YAML (node_lines: ...)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The ragopt config to write.",
                                          show_default="<name>-ragopt.yaml next to the AutoRAG config"),
    qa: Optional[Path] = typer.Option(None, "--qa", help="The QA file, e.g. AutoRAG's qa.parquet.",
                                      show_default="a placeholder to edit"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="The corpus file, e.g. AutoRAG's corpus.parquet.",
                                          show_default="a placeholder to edit"),
    embedding: Optional[str] = typer.Option(None, "--embedding", help="The local model that stands in for API "
                                            "embeddings (OpenAI, Ollama, ...), which ragopt does not call.",
                                            show_default="BAAI/bge-m3, AutoRAG's local model in its Korean samples"),
) -> None:
    """Convert an AutoRAG config into a ragopt search space.

    Its retrieval part (retrieval nodes, passage_reranker, top_k, strategy.metrics) is mapped;
    what is not mapped is printed with why, and listed at the top of the written file."""
    from ragopt.search.autorag import convert_file, write

    path = output or autorag_config.with_name(f"{autorag_config.stem}-ragopt.yaml")
    conversion = convert_file(autorag_config, path, qa, corpus, embedding)
    write(conversion, path)
    for note in conversion.notes:
        console.print(f"not mapped: {escape(str(note))}", highlight=False, soft_wrap=True)
    config = conversion.config
    console.print(f"wrote {path}: {len(config['retrievers'])} retrievers, {len(config['rerankers'])} reranker "
                  f"choices, top_k {config['top_k']}, {len(conversion.notes)} items not mapped; check it with "
                  f"`ragopt validate {path}`", highlight=False, soft_wrap=True)


@app.command("chunk")
def chunk_command(
    documents: str = typer.Argument(..., help="A folder, glob or file of documents (.txt, .md, .pdf, .jsonl)."),
    best: Path = typer.Option(..., "--from", help="An exported best.yaml whose pipeline has a chunker."),
    output: Path = typer.Option(..., "--output", "-o", help="The corpus file to write (.jsonl, .parquet or .csv)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache folder.",
                                             show_default="cache/ next to best.yaml"),
) -> None:
    """Cut documents with a tuned chunker and write a corpus.

    Each passage has doc_id `document#start-end`, contents (the document's text start..end) and
    the document's metadata with document, start and end."""
    from ragopt.serving.export import read_export
    from ragopt.serving.pipeline import chunk, write_corpus

    corpus = chunk(read_export(best).spec, documents, cache_dir or best.resolve().parent / "cache")
    write_corpus(corpus, output)
    console.print(f"wrote {len(corpus)} passages to {escape(str(output))}", highlight=False, soft_wrap=True)


@app.command("serve")
def serve_command(
    best: Path = typer.Argument(..., help="An exported best.yaml."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", "-c", help="The corpus to search (parquet, jsonl or "
                                          "csv)."),
    documents: Optional[str] = typer.Option(None, "--documents", "-d", help="Or documents to cut with the tuned "
                                            "chunker (a folder, glob or file of .txt/.md/.pdf/.jsonl)."),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="The port to listen on."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache folder.",
                                             show_default="cache/ next to best.yaml"),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most questions retrieved together: requests "
                                  "that arrive while one batch runs are answered together in the next."),
) -> None:
    """Serve the tuned pipeline over HTTP (POST /retrieve).

    GET /health; docs at /docs. The corpus is indexed and the models loaded once, before the
    first request."""
    from ragopt.serving.serve import build, run

    api = build(best, corpus, cache_dir or best.resolve().parent / "cache", max_batch, documents)
    pipeline = api.state.pipeline
    console.print(f"serving {escape(pipeline.spec.describe())} over {len(pipeline.engine.corpus)} passages at "
                  f"http://{host}:{port} (docs: /docs)", highlight=False, soft_wrap=True)
    run(api, host, port)


@app.command("generate-qa")
def generate_qa_command(
    documents: str = typer.Argument(..., help="A folder, glob or file of documents (.txt, .md, .pdf, .jsonl)."),
    output: Path = typer.Option(..., "--output", "-o", help="The QA file to write (JSON lines). An existing one is "
                                "resumed: the new questions are appended, items done before are not asked again."),
    questions: int = typer.Option(100, "--questions", "-n", min=1, help="Questions the file holds in the end."),
    generator: str = typer.Option("offline", "--generator", "-g", help="offline: inverse cloze, no model (a "
                                  "sentence of a passage is the question, masked out of what is indexed); endpoint: "
                                  "an OpenAI-compatible server (vLLM, Ollama, OpenAI); local: a Hugging Face chat "
                                  "model run here (on the GPU where there is one)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="endpoint: the model name the server serves; "
                                        "local: a hub id or a folder."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="endpoint: the API root before "
                                           "/chat/completions, e.g. http://localhost:8000/v1 (vLLM), "
                                           "http://localhost:11434/v1 (Ollama), https://api.openai.com/v1."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help="endpoint: the environment "
                                              "variable holding the API key, e.g. OPENAI_API_KEY.",
                                              show_default="no key sent"),
    kinds: str = typer.Option("factoid,concept,two_hop", "--kinds", help="Kinds of LLM questions, taken in turn "
                              "(two_hop: over two passages of one document or domain)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Ask the model again whether the passage answers "
                               "each question, and drop those it says it does not."),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, help="endpoint: requests at once."),
    rpm: Optional[float] = typer.Option(None, "--rpm", min=0.001, help="endpoint: most requests a minute.",
                                        show_default="no limit"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most tokens the model writes per reply."),
    domain_pattern: Optional[str] = typer.Option(None, "--domain-pattern", help="A regular expression whose first "
                                                 "group, searched in a document's id, is its questions' domain, e.g. "
                                                 r"'^(\w+) - ' for 'law - case.pdf'.",
                                                 show_default="the documents' domain metadata, if any"),
    seed: int = typer.Option(0, "--seed", help="The order passages are visited in."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate questions with evidence spans from documents.

    Passages of about 300-800 characters are cut from the documents and visited in a seeded
    order, one question each. LLM questions whose answer says the passage does not tell, that
    refer to "this passage", that the check says the passage does not answer, or that nearly
    repeat a kept one are dropped, and written with the reason to <output>.rejected.jsonl."""
    from ragopt.generate import generate_qa

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env names {api_key_env}, which is not set; export it, or leave the option "
                            "out for a server that needs no key")
    asked = [kind.strip() for kind in kinds.split(",") if kind.strip()]
    try:
        done = generate_qa(documents, output, questions=questions, generator=generator,  # type: ignore[arg-type]
                           model=model, base_url=base_url, api_key=api_key, kinds=asked, check=check,
                           concurrency=concurrency, rpm=rpm, max_tokens=max_tokens, domain_pattern=domain_pattern,
                           seed=seed, progress=not quiet)
    except KeyboardInterrupt:
        err.print(f"interrupted: {output} keeps the questions written; rerun the same command to resume",
                  highlight=False)
        raise typer.Exit(code=130) from None
    rejected = ", ".join(f"{n} {reason}" for reason, n in done.rejected.most_common())
    console.print(f"wrote {done.written} questions to {done.path} ({done.before + done.written} in all, "
                  f"{done.before} before) in {done.seconds:.1f} s" + (f"; rejected {rejected}, listed in "
                                                                       f"{done.rejected_path}" if rejected else ""),
                  highlight=False, soft_wrap=True)
    if done.usage is not None:
        console.print(f"{done.usage.requests} requests, {done.usage.prompt_tokens} prompt + "
                      f"{done.usage.completion_tokens} completion tokens", highlight=False)
    if done.ran_out:
        console.print(f"every one of the {done.passages} passages has been asked about: the file holds fewer than "
                      f"{questions} questions; give more documents, or other --kinds", highlight=False,
                      soft_wrap=True)


def main() -> None:
    app()
