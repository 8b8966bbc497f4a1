"""The ragopt command: parse arguments, call the library, print. No logic of its own; the
heavy modules are imported by the commands that need them, so `ragopt --help` and `ragopt
validate` start without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragopt.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find the best retrieval pipeline for a QA set and corpus.")
console = Console()
err = Console(stderr=True)


def _fail(error: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
    raise typer.Exit(code=2)


@app.command("optimize")
def optimize_command(
    config: Path = typer.Argument(..., help="The search space, a YAML file (see configs/)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Output folder [default: <config>-output next to the config]."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", "-n", help="Total trials, overriding study.n_trials."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the stored study and start over instead of resuming."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run (or resume) the study and write trials.csv, runs/, qrels.trec, best.yaml, summary.md."""
    from ragopt.study import optimize

    if quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        outcome = optimize(config, output, n_trials, fresh, progress=not quiet)
    except UserError as error:
        _fail(error)
    k = outcome.best_spec.top_k
    pruned = f" (and {outcome.n_pruned} pruned)" if outcome.n_pruned else ""
    console.print(f"best of {outcome.n_trials} trials{pruned}: {escape(outcome.best_spec.describe())}",
                  highlight=False)
    table = Table("metric", f"@{k}")
    for name, value in outcome.best_metrics.items():
        if name.endswith(f"@{k}"):
            table.add_row(name.split("@")[0], f"{value:.4f}")
    console.print(table)
    console.print(f"objective {outcome.best_value:.4f}; files in {outcome.output}", highlight=False)
    if outcome.interrupted:
        console.print("interrupted: the files cover the finished trials; rerun the same command to resume")
        raise typer.Exit(code=130)


@app.command("validate")
def validate_command(config: Path = typer.Argument(..., help="The YAML file to check.")) -> None:
    """Check a config and its data without running any model."""
    from ragopt.config import load_config
    from ragopt.data import load_dataset
    from ragopt.space import enumerate_space

    try:
        loaded, _ = load_config(config)
        qa, corpus = load_dataset(**loaded.data.model_dump())
    except UserError as error:
        _fail(error)
    size = f"{len(enumerate_space(loaded))} distinct pipelines" if loaded.finite else "continuous ranges"
    console.print(f"ok: {len(qa)} questions, {len(corpus)} passages, {len(loaded.retrievers)} retrievers, "
                  f"{len(loaded.rerankers)} reranker choices, top_k {loaded.top_k}; search space: {size}")


@app.command("query")
def query_command(
    best: Path = typer.Argument(..., help="An exported best.yaml."),
    questions: list[str] = typer.Argument(..., help="One or more questions."),
    corpus: Path = typer.Option(..., "--corpus", "-c", help="The corpus to search (parquet, jsonl or csv)."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Passages per question [default: the tuned top_k]."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="Cache folder [default: cache/ next to best.yaml]."),
) -> None:
    """Print the top-k passages the tuned pipeline finds for each question."""
    from ragopt.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(best, corpus, cache_dir or best.resolve().parent / "cache", progress=True)
        results = pipeline.retrieve(questions, k)
    except UserError as error:
        _fail(error)
    for question, hits in zip(questions, results):
        table = Table(title=escape(question), show_lines=True)
        for column in ("rank", "doc_id", "score", "passage"):
            table.add_column(column)
        for hit in hits:
            table.add_row(str(hit.rank), escape(hit.doc_id), f"{hit.score:.4f}", escape(hit.contents[:200]))
        console.print(table)


def main() -> None:
    app()
