"""Stored rankings: one file per distinct ranking, exact round trips, safe concurrent writers,
and TREC runs written on demand (`ragopt runs`) that trec_eval scores as the study did."""

import json
import threading
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import pytrec_eval
from typer.testing import CliRunner

from conftest import KO_MINI, write_config
from ragopt.cli import app
from ragopt.data.qa import load_corpus
from ragopt.errors import StudyError
from ragopt.study.records import RECORD, TrialRecord
from ragopt.study.runs import RankingStore, StudyRuns, spans, write_index
from ragopt.study import optimize
from ragopt.scoring.trec import encode_id

BM25 = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl", domain_column: domain}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, {type: char_ngram, n: 2}], method: [lucene, bm25+],
     k1: {low: 0.5, high: 2.0}, b: {low: 0.3, high: 1.0}}
top_k: [1, 3, 5]
study: {n_trials: 12, seed: 1, latency: off}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    return optimize(write_config(folder / "bm25.yaml", BM25), progress=False).output


def ranking(n_questions: int, depth: int, n_docs: int, seed: int = 0) -> np.ndarray:
    """Distinct corpus rows per question, best first, the tail of some rows -1 (nothing retrieved)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(n_docs, depth, replace=False) for _ in range(n_questions)]).astype(np.int64)
    retrieved = rng.integers(0, depth + 1, n_questions)
    return np.where(np.arange(depth) < retrieved[:, None], ids, -1)


def test_identical_rankings_are_stored_once(tmp_path):
    store = RankingStore(tmp_path)
    ids = ranking(40, 10, 500)
    first, again = store.save(ids), store.save(ids.copy())
    other = store.save(np.where(ids == ids[0, 0], -1, ids))
    assert first == again != other
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{first}.npy", f"{other}.npy"])


def test_two_trials_with_one_ranking_share_one_file(tmp_path):
    """top_k 1 and 3 of one pipeline: two trials, one ranking at the deepest k."""
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
top_k: [1, 3]
study: {latency: off}
"""
    output = optimize(write_config(tmp_path / "one.yaml", text), progress=False).output
    index = json.loads((output / "runs" / "index.json").read_text(encoding="utf-8"))
    assert len(index["trials"]) == 2 and len(set(index["trials"].values())) == 1
    assert [p.stem for p in (output / "runs").glob("*.npy")] == list(index["trials"].values())[:1]
    held = np.load(output / "runs" / f"{index['trials']['0']}.npy")
    rows = sorted(set(held[held >= 0].tolist()))  # the index names only the passages a ranking holds
    assert index["doc_rows"] == rows and len(rows) < 60
    corpus = load_corpus(KO_MINI / "corpus.jsonl")
    assert index["doc_ids"] == [corpus.doc_ids[r] for r in rows]


@pytest.mark.parametrize(("n_docs", "dtype"), [(720, np.int16), (40_000, np.int32), (3_000_000_000, np.int64)])
def test_a_stored_ranking_round_trips_exactly_in_the_narrowest_type(tmp_path, n_docs, dtype):
    ids = ranking(30, 8, 720)
    ids[ids == ids.max()] = n_docs - 1
    store = RankingStore(tmp_path)
    key = store.save(ids)
    loaded = np.load(tmp_path / f"{key}.npy", allow_pickle=False)
    assert loaded.dtype == dtype and loaded.shape == (30, 8)
    np.testing.assert_array_equal(loaded, ids)
    np.testing.assert_array_equal(store.load(key), ids)


def test_concurrent_writers_of_one_ranking_leave_one_whole_file(tmp_path):
    ids = ranking(5000, 100, 100_000)
    store, start, keys = RankingStore(tmp_path), threading.Barrier(8), []

    def save() -> None:
        start.wait()
        keys.append(store.save(ids))

    threads = [threading.Thread(target=save) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"{keys[0]}.npy"]  # no temporary file left behind
    np.testing.assert_array_equal(np.load(tmp_path / f"{keys[0]}.npy", allow_pickle=False), ids)


def test_ragopt_runs_output_scores_as_per_question_parquet(study, tmp_path):
    """The TREC run of a trial, re-scored question by question with pytrec_eval, gives the
    metrics the study stored for it (a question with no line in the run scores 0)."""
    per_question = pd.read_parquet(study / "per_question.parquet")
    trial = int(per_question["trial"].max())
    result = CliRunner().invoke(app, ["runs", str(study), "--trial", str(trial), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"trial-{trial}.trec"
    assert result.output.split() == [str(path)]
    with open(study / "qrels.trec", encoding="utf-8") as qrels_file, open(path, encoding="utf-8") as run_file:
        qrels, run = pytrec_eval.parse_qrel(qrels_file), pytrec_eval.parse_run(run_file)
    measures = {"P_{}": "precision", "recall_{}": "recall", "ndcg_cut_{}": "ndcg", "map_cut_{}": "map",
                "success_{}": "hit"}
    scored = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.1,3,5" for m in ("P", "recall", "ndcg_cut", "map_cut",
                                                                           "success")}).evaluate(run)
    rows = per_question[per_question["trial"] == trial]
    assert len(scored) < len(rows)  # some questions retrieved nothing: no line in the run
    for row in rows.to_dict("records"):
        values = scored.get(encode_id(row["qid"]), {})
        for measure, name in measures.items():
            for k in (1, 3, 5):
                assert row[f"{name}@{k}"] == pytest.approx(values.get(measure.format(k), 0.0), abs=1e-6)


def test_best_writes_the_winner_as_optimize_did(study, tmp_path):
    best = json.loads((study / "study.json").read_text(encoding="utf-8"))["best_trial"]
    result = CliRunner().invoke(app, ["runs", str(study), "--best", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"trial-{best}.trec").read_text(encoding="utf-8") == \
        (study / "runs" / "best.trec").read_text(encoding="utf-8")
    assert f" ragopt-{best}\n" in (study / "runs" / "best.trec").read_text(encoding="utf-8")


def said(result) -> str:
    """A command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_an_unknown_trial_is_refused_with_the_trials_there_are(study, tmp_path):
    result = CliRunner().invoke(app, ["runs", str(study), "--trial", "2", "--trial", "99", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "trial 99 is not a finished trial" in said(result) and "finished trials: 0-11" in said(result)
    assert not list(tmp_path.iterdir())  # trial 2 exists, but nothing is written before every trial is checked
    result = CliRunner().invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 2 and "index.json not found" in said(result)
    result = CliRunner().invoke(app, ["runs", str(study)])
    assert result.exit_code == 2 and "--trial N (or --best)" in said(result)


def test_trials_of_an_earlier_ragopt_and_missing_files_are_explained(study, tmp_path):
    attrs = optuna.load_study(study_name="bm25", storage=f"sqlite:///{study / 'study.db'}").trials[0].user_attrs
    earlier = {name: value for name, value in attrs[RECORD].items() if name != "ranking"}  # as stored before
    assert attrs[RECORD]["ranking"] and TrialRecord.from_attrs({RECORD: earlier}).ranking is None
    key = RankingStore(tmp_path / "runs").save(ranking(2, 3, 10))
    write_index(tmp_path, ["q1", "q2"], [f"d{i}" for i in range(10)], {0: None, 1: key, 2: "0" * 32})
    runs = StudyRuns(tmp_path)
    with pytest.raises(StudyError, match=r"trial 0 ran under an earlier ragopt.*runs/0\.trec"):
        runs.write([0], tmp_path)
    with pytest.raises(StudyError, match=r"the ranking .*0{32}\.npy is missing: a worker with its own output folder"):
        runs.write([2], tmp_path)
    assert runs.has(1) and not runs.has(0) and not runs.has(2)
    assert runs.write([1, 1], tmp_path) == [tmp_path / "trial-1.trec"]
    write_index(tmp_path, ["q1", "q2", "q3"], [f"d{i}" for i in range(10)], {1: key})
    with pytest.raises(StudyError, match=r"not a ranking of this study's 3 questions \(it holds an array of shape"):
        StudyRuns(tmp_path).write([1], tmp_path)


def test_spans():
    assert spans([5, 0, 1, 2, 7, 8, 3]) == "0-3, 5, 7-8"
    assert spans([]) == "none"
