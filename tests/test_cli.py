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


COMMANDS = ["optimize", "finetune", "validate", "query", "compare", "report", "runs", "import-autorag", "chunk",
            "serve", "generate-qa"]


def test_help_shows_every_default_and_flags_as_flags():
    text = plain(runner.invoke(app, ["optimize", "-h"]).output)
    assert "-o, --output <path> Output folder. [default: (<config>-output next to the config)]" in text
    assert "[default: (study.n_trials)]" in text
    assert "--fresh Delete the stored study" in text and "-q, --quiet No progress bars." in text
    assert "-y, --yes Do not ask before --fresh deletes a shared study." in text
    assert "--best Also the winning trial" in plain(runner.invoke(app, ["runs", "-h"]).output)
    query = plain(runner.invoke(app, ["query", "-h"]).output)
    assert "[default: (the tuned top_k)]" in query and "[default: (cache/ next to best.yaml)]" in query
    assert "[default: (OUTPUT/report.html)]" in plain(runner.invoke(app, ["report", "-h"]).output)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_option_reads_as_short_and_long_names_then_its_help(command):
    result = runner.invoke(app, [*command, "-h"])
    assert result.exit_code == 0 and "<bool>" not in result.output
    assert "\n  -h, --help" in result.output and "-h, --help Show this message and exit." in plain(result.output)
    assert not re.search(r"[│╭╮╰╯]", result.output)  # no boxes: the text reads the same piped and in a terminal


def test_the_command_list_shows_each_command_s_first_sentence_whole():
    text = runner.invoke(app, ["-h"]).output
    listed = text.split("Commands:")[1]
    assert "..." not in listed
    assert "  optimize        Run (or resume) a study and write its output folder.\n" in listed
    assert [line.split()[0] for line in listed.strip().splitlines()] == COMMANDS


@pytest.mark.parametrize("n", ["0", "-3"])
def test_fewer_than_one_trial_is_refused_before_any_work(tmp_path, n):
    import ragopt
    from ragopt.errors import UserError

    config = write_config(tmp_path / "bm25.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
""")
    message = (f"n_trials (--n-trials) must be at least 1; got {n}: leave it out to run the config's "
               "study.n_trials (50 trials)")
    result = runner.invoke(app, ["optimize", str(config), "-n", n, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output == f"error: {message}\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError) as error:
        ragopt.optimize(config, tmp_path / "out", n_trials=int(n))
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


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
    from ragopt.scoring import evaluation
    from ragopt.study import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "warm-up":  # models loading, corpora encoding
        monkeypatch.setattr(run, "warm_up", interrupted)
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
    from rich.console import Console

    from ragopt import cli, load_pipeline
    from ragopt.data.qa import load_corpus

    mini = load_corpus(KO_MINI / "corpus.jsonl")  # long passages: three of the example's each
    corpus = tmp_path / "long.jsonl"
    corpus.write_text("".join(json.dumps({"doc_id": doc, "contents": " ".join(mini.contents[i:i + 3])},
                                         ensure_ascii=False) + "\n" for i, doc in enumerate(mini.doc_ids)))
    question = "예금자보호제도 보호 한도와 신용점수 연체 이자 원금 금리"
    monkeypatch.setattr(cli, "console", Console(width=80, force_terminal=True, color_system=None))
    result = runner.invoke(app, ["query", str(best), question, "--corpus", str(corpus), "-k", "3"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]  # the table, not progress bars
    assert max(map(cell_len, lines)) <= 80 and "…" not in result.output  # Hangul takes two cells each
    hits = load_pipeline(best, corpus, tmp_path / "cache").retrieve(question, 3)[0]
    assert len(hits) == 3 and min(len(hit.contents) for hit in hits) > 200
    for hit in hits:  # every word of every passage and doc id shown, none cut across lines
        words = (hit.contents + " " + hit.doc_id).split()
        assert all(any(word in line for line in lines) for word in words), (words, result.output)


def long_corpus(folder):
    """The example's passages three in a row: long Korean passages, one line of their file each."""
    import json

    from ragopt.data.qa import load_corpus

    mini = load_corpus(KO_MINI / "corpus.jsonl")
    corpus = folder / "long.jsonl"
    corpus.write_text("".join(json.dumps({"doc_id": doc, "contents": " ".join(mini.contents[i:i + 3])},
                                         ensure_ascii=False) + "\n" for i, doc in enumerate(mini.doc_ids)))
    return corpus


def test_piped_query_prints_a_markdown_table_with_every_passage_on_its_line(best, tmp_path):
    from ragopt import load_pipeline

    corpus = long_corpus(tmp_path)
    questions = ["예금자보호제도 보호 한도와 신용점수 연체 이자 원금 금리", "보호 한도"]
    result = runner.invoke(app, ["query", str(best), *questions, "--corpus", str(corpus), "-k", "3"])
    assert result.exit_code == 0, result.output
    expected = []
    for question, hits in zip(questions, load_pipeline(best, corpus, tmp_path / "cache").retrieve(questions, 3)):
        assert len(hits) == 3 and min(len(hit.contents) for hit in hits) > 200
        rows = [f"| {h.rank} | {h.doc_id} | {h.score:.4f} | {' '.join(h.contents.splitlines())} |" for h in hits]
        expected += [question, "", "| rank | doc_id | score | passage |", "| --- | --- | --- | --- |", *rows, ""]
        assert any("\n" in h.contents for h in hits)  # a passage's lines joined: a row is one line
    assert result.output.splitlines() == expected


def test_piped_compare_keeps_every_pipeline_on_its_line(best):
    import pandas as pd

    output = best.parent
    result = runner.invoke(app, ["compare", str(output), "--by", "tokenizer", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert all(line.endswith(" |") for line in rows) and len(rows) > 6
    pipelines = set(pd.read_csv(output / "trials.csv")["pipeline"])
    runner_ups = [line.split(" | ")[1].split(" (and ")[0] for line in rows
                  if line.split(" | ")[0].lstrip("| ").isdigit()]
    assert runner_ups and set(runner_ups) <= pipelines  # each a whole pipeline, as trials.csv writes it
    assert "objective, selection questions (no holdout: flattered)" in result.output
    assert lines[-1] == f"files in {output / 'compare'}"


def test_piped_optimize_prints_each_line_whole(tmp_path):
    from ragopt.serving.export import read_export

    config = write_config(tmp_path / "bm25.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace, method: [lucene, robertson]}]
top_k: [1, 3]
study: {latency: off}
""")
    output = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns-" + "x" * 40)
    result = runner.invoke(app, ["optimize", str(config), "-q", "-o", str(output)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    spec = read_export(output / "best.yaml").spec
    assert lines[0] == f"best of 4 trials: {spec.describe()}"
    assert lines[1:4] == ["", f"| metric | @{spec.top_k} |", "| --- | --- |"]
    assert lines[-1].startswith("objective ") and lines[-1].endswith(f"; files in {output}")


@pytest.mark.parametrize("question, why", [
    ("?!...", "no passage for '?!...': the tokenizer whitespace found no token in it, so BM25 has no term to "
              "match; ask with words"),
    ("xyzzy plugh", "no passage for 'xyzzy plugh': no passage shares a term with it (whitespace tokens: xyzzy, "
                    "plugh)"),
])
def test_a_question_that_finds_nothing_says_why(best, question, why):
    result = runner.invoke(app, ["query", str(best), question, "보호 한도", "--corpus", str(KO_MINI / "corpus.jsonl")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [why, "보호 한도", "", "| rank | doc_id | score | passage |"]


@pytest.mark.parametrize("origin, cwd, command", [
    (None, None, "pip install 'ragopt[serve]'"),
    ({"url": "https://files.pythonhosted.org/ragopt.whl", "archive_info": {}}, None, "pip install 'ragopt[serve]'"),
    ({"url": "file:///src/ragopt", "dir_info": {}}, None, "pip install 'ragopt[serve]'"),
    ({"url": "file:///src/my%20ragopt", "dir_info": {"editable": True}}, None,
     "pip install -e '/src/my ragopt[serve]'"),
    ({"url": "@CHECKOUT@", "dir_info": {"editable": True}}, "checkout", "pip install -e '.[serve]'"),
])
def test_without_fastapi_serve_says_how_to_install_it_for_this_install(best, tmp_path, monkeypatch, origin, cwd,
                                                                       command):
    import importlib.metadata
    import json
    import sys

    class Installed:
        def __init__(self, origin):
            self.origin = origin

        def read_text(self, name):
            assert name == "direct_url.json"
            return None if self.origin is None else json.dumps(self.origin).replace(
                "@CHECKOUT@", (tmp_path / "checkout").as_uri())

    (tmp_path / "checkout").mkdir()
    if cwd:
        monkeypatch.chdir(tmp_path / cwd)
    leftover = Installed(None)  # a checkout's ragopt.egg-info, first on the path when run from the checkout
    monkeypatch.setattr(importlib.metadata, "distributions", lambda name: [leftover, Installed(origin)])
    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = runner.invoke(app, ["serve", str(best), "--corpus", str(KO_MINI / "corpus.jsonl")])
    assert result.exit_code == 2
    assert result.output == f"error: ragopt serve needs FastAPI and uvicorn (fastapi is missing): {command}\n"
    monkeypatch.setitem(sys.modules, "psycopg", None)  # the other extras' hints say the same
    result = runner.invoke(app, ["optimize", str(best.parent.parent / "bm25.yaml"), "--storage",
                                 "postgresql://someone@127.0.0.1:9/db", "-q", "-o", str(tmp_path / "pg")])
    assert result.exit_code == 2
    assert result.output.endswith(f"cannot open the study storage postgresql://someone@127.0.0.1:9/db: "
                                  f"{command.replace('serve', 'postgres')}\n")


def test_fresh_on_a_shared_storage_asks_first_naming_it_without_its_password(tmp_path):
    config = write_config(tmp_path / "bm25.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
top_k: [1]
study: {n_trials: 1, latency: off}
""")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    result = runner.invoke(app, ["optimize", str(config), "--fresh", "--storage", storage, "-q"], input="n\n")
    assert result.exit_code != 0 and f"--fresh deletes the study in {storage} for every worker" in result.output
    assert not (tmp_path / "shared.db").exists()
