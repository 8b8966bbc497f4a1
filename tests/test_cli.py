"""The command line as a new user meets it: help with every default, -h and --version, and
one-line errors for questions that cannot be answered."""

import re
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from conftest import KO_MINI, write_config
from ragopt.cli import app

runner = CliRunner()


def plain(text: str) -> str:
    """Help text without box drawing and line breaks, so phrases can be searched."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_short_help_and_version():
    assert plain(runner.invoke(app, ["-h"]).output) == plain(runner.invoke(app, ["--help"]).output)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ragopt {version('ragopt')}"


def test_help_shows_every_default_and_flags_as_flags():
    text = plain(runner.invoke(app, ["optimize", "-h"]).output)
    assert "Output folder. [default: (<config>-output next to the config)]" in text
    assert "[default: (study.n_trials)]" in text
    assert "--fresh Delete the stored study" in text and "--quiet -q No progress bars." in text
    query = plain(runner.invoke(app, ["query", "-h"]).output)
    assert "[default: (the tuned top_k)]" in query and "[default: (cache/ next to best.yaml)]" in query
    assert "[default: (OUTPUT/report.html)]" in plain(runner.invoke(app, ["report", "-h"]).output)


@pytest.fixture(scope="module")
def best(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = write_config(folder / "bm25.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
top_k: [1, 3]
""")
    result = runner.invoke(app, ["optimize", str(path), "-q"])
    assert result.exit_code == 0, result.output
    return folder / "bm25-output" / "best.yaml"


@pytest.mark.parametrize("k", ["0", "-2"])
def test_query_refuses_a_k_below_one(best, k):
    result = runner.invoke(app, ["query", str(best), "전세", "--corpus", str(KO_MINI / "corpus.jsonl"), "-k", k])
    assert result.exit_code == 2 and f"k must be at least 1 passage per question; got {k}" in result.output


def test_query_refuses_an_empty_question(best):
    result = runner.invoke(app, ["query", str(best), "  ", "--corpus", str(KO_MINI / "corpus.jsonl")])
    assert result.exit_code == 2 and "no empty one" in result.output


def test_a_rerun_says_the_study_is_complete(best):
    config = best.parent.parent / "bm25.yaml"
    result = runner.invoke(app, ["optimize", str(config)])
    assert result.exit_code == 0 and "study 'bm25' already complete (2 trials)" in result.output


@pytest.mark.parametrize("where", ["warm-up", "first trial"])
def test_ctrl_c_before_any_trial_finished_is_one_line(tmp_path, monkeypatch, where):
    from ragopt import evaluation, study

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "warm-up":  # models loading, corpora encoding
        monkeypatch.setattr(study, "_warm_up", interrupted)
    else:  # e.g. a reranker's first scores, computed inside the first trial
        monkeypatch.setattr(evaluation.Evaluator, "evaluate", interrupted)
    config = write_config(tmp_path / "bm25.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
study: {latency: off}
""")
    result = runner.invoke(app, ["optimize", str(config), "-q"])
    assert result.exit_code == 130 and " ".join(result.output.split()) == (
        "interrupted before any trial finished: the cache keeps what was encoded; rerun the same command to resume")


def test_korean_passages_are_whole_in_an_80_column_terminal(best, tmp_path, monkeypatch):
    import json

    from rich.cells import cell_len

    from ragopt import cli, load_pipeline
    from ragopt.data import load_corpus

    mini = load_corpus(KO_MINI / "corpus.jsonl")  # long passages: three of the example's each
    corpus = tmp_path / "long.jsonl"
    corpus.write_text("".join(json.dumps({"doc_id": doc, "contents": " ".join(mini.contents[i:i + 3])},
                                         ensure_ascii=False) + "\n" for i, doc in enumerate(mini.doc_ids)))
    question = "예금자보호제도 보호 한도와 신용점수 연체 이자 원금 금리"
    monkeypatch.setattr(cli.console, "width", 80)
    result = runner.invoke(app, ["query", str(best), question, "--corpus", str(corpus), "-k", "3"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]  # the table, not progress bars
    assert max(map(cell_len, lines)) <= 80 and "…" not in result.output  # Hangul takes two cells each
    hits = load_pipeline(best, corpus, tmp_path / "cache").retrieve(question, 3)[0]
    assert len(hits) == 3 and min(len(hit.contents) for hit in hits) > 200
    for hit in hits:  # every word of every passage and doc id shown, none cut across lines
        words = (hit.contents + " " + hit.doc_id).split()
        assert all(any(word in line for line in lines) for word in words), (words, result.output)
