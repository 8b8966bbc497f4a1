"""From documents to the best pipeline, end to end on autorag-ko-docs (32 documents, 114
questions labelled by evidence spans): chunkers searched with the retriever in one study, every
trial's run and its chunking's qrels re-scored by trec_eval, the winner exported with its chunker
and reproduced from the documents, `ragopt chunk` and `query --documents`."""

import json

import pandas as pd
import pytest
import pytrec_eval
import yaml
from typer.testing import CliRunner

from conftest import AUTORAG_KO_DOCS, KO_MINI, write_config
from ragopt import load_pipeline
from ragopt.cli import app
from ragopt.search.config import ConfigError, load_config
from ragopt.errors import DataError
from ragopt.data.documents import load_documents, load_span_qa
from ragopt.study.runs import StudyRuns
from ragopt.study import optimize
from test_study import read_trec

DOCS = AUTORAG_KO_DOCS
SPACE = f"""
data: {{documents: "{DOCS / 'documents'}", qa: "{DOCS / 'qa.jsonl'}", domain_column: domain}}
chunkers:
  - {{name: window, type: token_window, size: [300, 600], overlap: 0.25, tokenizer: characters}}
  - {{name: sentence, type: sentence, size: 500}}
  - {{name: recursive, type: recursive, size: 500}}
  - {{name: whole, type: as_given}}
retrievers:
  - {{name: bm25, type: bm25, tokenizer: whitespace, k1: 1.2, b: 0.75}}
top_k: [1, 3, 5]
metrics: [f1, recall, precision, map, mrr, ndcg, hit, evidence_recall, evidence_precision, evidence_iou]
budgets: [256, 1024]
optimize: {{ndcg: 1.0, evidence_recall@1024t: 1.0}}
study: {{n_trials: 20, seed: 1, latency: off}}
"""
KS = [1, 3, 5]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chunked")
    return optimize(write_config(folder / "docs.yaml", SPACE), progress=False)


def test_every_chunker_is_a_choice_of_one_study(finished):
    trials = pd.read_csv(finished.output / "trials.csv")
    assert len(trials) == 15  # the whole space (5 pipelines x 3 k), run as a grid
    assert set(trials["param.chunker"]) == {"window", "sentence", "recursive", "whole"}
    assert set(trials["choice.chunker"]) == {"token_window", "sentence", "recursive", "as_given"}
    for name in ("evidence_recall@5", "evidence_precision@1", "evidence_iou@3", "evidence_recall@1024t"):
        assert trials[name].between(0, 1).all(), name
    whole = trials[trials["param.chunker"] == "whole"]
    assert (whole["evidence_recall@1"] >= whole["hit@1"] - 1e-9).all()  # a whole document holds all its evidence


def test_runs_and_each_chunkings_qrels_rescore_under_trec_eval(finished, tmp_path):
    out = finished.output
    trials = pd.read_csv(out / "trials.csv")
    paths = StudyRuns(out).write(trials["trial"], tmp_path)
    names = {"precision": "P_{}", "recall": "recall_{}", "map": "map_cut_{}", "ndcg": "ndcg_cut_{}",
             "hit": "success_{}"}
    measures = {f"{m}.{','.join(map(str, KS))}" for m in ("P", "recall", "map_cut", "ndcg_cut", "success")}
    qrel_files = set()
    for row in trials.to_dict("records"):
        n = row["trial"]
        run, qrels = read_trec(tmp_path / f"trial-{n}.trec", 6), read_trec(tmp_path / f"trial-{n}.qrels", 4)
        qrel_files.add((tmp_path / f"trial-{n}.qrels").read_text())
        assert len(qrels) == 114  # every question has a relevant chunk in every chunking
        per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        for k in KS:
            for name, trec in names.items():
                expected = sum(v[trec.format(k)] for v in per_query.values()) / len(qrels)
                assert row[f"{name}@{k}"] == pytest.approx(expected, abs=1e-6), (n, name, k)
    assert len(qrel_files) == 5 and len(paths) == 2 * len(trials)  # one qrels per chunking


def test_whole_documents_are_relevant_exactly_where_the_evidence_is(finished, tmp_path):
    """as_given: each document is one chunk, so a question's qrels are the documents its spans lie in."""
    out = finished.output
    trials = pd.read_csv(out / "trials.csv")
    n = int(trials[trials["param.chunker"] == "whole"]["trial"].iloc[0])
    StudyRuns(out).write([n], tmp_path)
    qrels = read_trec(tmp_path / f"trial-{n}.qrels", 4)
    documents = load_documents(DOCS / "documents")
    qa = load_span_qa(DOCS / "qa.jsonl", documents)
    for qid, groups in zip(qa.qids, qa.evidence):
        expected = set()
        for group in groups:
            for span in group:
                text = documents[documents.index_of()[span.document]].text
                start = len(text) - len(text.lstrip())
                expected.add(f"{span.document}#{start}-{len(text.rstrip())}".replace(" ", "%20"))
        assert set(qrels[qid]) == expected, qid


def test_the_winner_carries_its_chunker_and_reproduces_its_ranking_from_the_documents(finished):
    out = finished.output
    best = yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))
    assert best["pipeline"]["chunker"]["type"] in {"token_window", "sentence", "recursive", "as_given"}
    header = (out / "best.yaml").read_text(encoding="utf-8").splitlines()[2:4]
    assert header[0].startswith("#   ragopt query best.yaml --documents ") and "autorag-ko-docs/documents" in header[0]
    assert 'ragopt.load_pipeline("best.yaml", documents="' in header[1]
    pipeline = load_pipeline(out / "best.yaml", cache_dir=out / "cache", device="cpu", documents=DOCS / "documents")
    queries = [json.loads(line)["query"] for line in (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    hits = pipeline.retrieve(queries)
    run = read_trec(out / "runs" / "best.trec", 6)
    qids = [json.loads(line)["qid"] for line in (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    for qid, found in zip(qids, hits):
        expected = [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda x: -x[1])]
        assert [h.doc_id.replace(" ", "%20") for h in found] == expected[:len(found)], qid
    first = hits[0][0]
    document = load_documents(DOCS / "documents")
    text = document[document.index_of()[first.metadata["document"]]].text
    assert first.contents == text[first.metadata["start"]:first.metadata["end"]]


def test_chunk_exports_the_tuned_chunking_and_query_searches_documents(finished, tmp_path):
    out = finished.output
    corpus_path = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(app, ["chunk", str(DOCS / "documents"), "--from", str(out / "best.yaml"),
                                      "-o", str(corpus_path)])
    assert result.exit_code == 0, result.output
    written = pd.read_json(corpus_path, lines=True)
    pipeline = load_pipeline(out / "best.yaml", cache_dir=out / "cache", device="cpu", documents=DOCS / "documents")
    assert list(written["doc_id"]) == pipeline.engine.corpus.doc_ids
    assert list(written["contents"]) == pipeline.engine.corpus.contents
    from_file = load_pipeline(out / "best.yaml", corpus_path, out / "cache", device="cpu")
    question = "지방은행이 시중은행으로 전환할 때 예비인가가 필요한가요?"
    assert [h.doc_id for h in from_file.retrieve(question)[0]] == [h.doc_id for h in pipeline.retrieve(question)[0]]
    result = CliRunner().invoke(app, ["query", str(out / "best.yaml"), question, "--documents",
                                      str(DOCS / "documents")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert pipeline.retrieve(question)[0][0].doc_id.split("#")[0][:20] in result.output


def test_documents_and_chunkers_need_each_other(tmp_path):
    no_chunkers = SPACE.split("chunkers:")[0] + "retrievers:" + SPACE.split("retrievers:")[1]
    with pytest.raises(ConfigError, match="documents need at least one chunker"):
        load_config(write_config(tmp_path / "a.yaml", no_chunkers))
    mini = KO_MINI
    passages = SPACE.replace(f'{{documents: "{DOCS / "documents"}", qa: "{DOCS / "qa.jsonl"}", domain_column: domain}}',
                             f'{{qa: "{mini / "qa.jsonl"}", corpus: "{mini / "corpus.jsonl"}"}}')
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path / "b.yaml", passages))
    assert "chunkers cut documents: give data.documents" in str(error.value)
    assert "evidence_recall, evidence_precision, evidence_iou need evidence spans" in str(error.value)
    assert "need data.documents" in str(error.value)  # the objective's evidence_recall@1024t


def test_a_pipeline_tuned_on_passages_refuses_documents(finished, tmp_path):
    best = yaml.safe_load((finished.output / "best.yaml").read_text(encoding="utf-8"))
    del best["pipeline"]["chunker"]
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="tuned on passages, not documents"):
        load_pipeline(tmp_path / "best.yaml", documents=DOCS / "documents")
    with pytest.raises(ConfigError, match="not both"):
        load_pipeline(finished.output / "best.yaml", KO_MINI / "corpus.jsonl", documents=DOCS)


def test_a_chunker_that_counts_with_the_retrievers_model_needs_retrievers_that_have_one(tmp_path):
    space = SPACE.replace(", tokenizer: characters}", "}")  # token_window counts with `retriever` by default
    with pytest.raises(ConfigError, match="window takes the retriever's model .* but bm25 names none"):
        load_config(write_config(tmp_path / "a.yaml", space))


def test_an_objective_on_metrics_not_listed_is_still_scored_and_reported(tmp_path):
    """No `metrics:` over documents reports the evidence metrics too; an objective metric left out
    of an explicit list is still scored (it failed once all trials had run)."""
    space = SPACE.replace("metrics: [f1, recall, precision, map, mrr, ndcg, hit, evidence_recall, evidence_precision, "
                          "evidence_iou]\n", "")
    assert "evidence_iou" in load_config(write_config(tmp_path / "a.yaml", space))[0].metrics
    listed = SPACE.replace(", evidence_recall, evidence_precision, evidence_iou]", "]").replace(
        "n_trials: 20", "n_trials: 2").replace("size: [300, 600]", "size: 300")
    outcome = optimize(write_config(tmp_path / "b.yaml", listed), progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert "evidence_recall@1024t" in trials and "ndcg@5" in trials
    expected = (trials["ndcg@1"].where(trials["param.top_k"] == 1, trials["ndcg@3"].where(
        trials["param.top_k"] == 3, trials["ndcg@5"])) + trials["evidence_recall@1024t"]) / 2
    assert trials["value"].to_numpy() == pytest.approx(expected.to_numpy())


def test_compare_by_chunker_ranks_the_chunkers_per_domain(finished):
    from ragopt.analysis.compare import StudyResults, choice_matrix

    results = StudyResults.load(finished.output)
    matrix = choice_matrix(results, by="chunker")
    trials = pd.read_csv(finished.output / "trials.csv")
    overall = matrix[matrix["domain"] == "(all)"]
    assert set(overall["choice"]) == {"token_window", "sentence", "recursive", "as_given"}
    best = trials.loc[trials["value"].idxmax(), "choice.chunker"]
    assert overall.loc[overall["best"], "choice"].tolist() == [best]
    result = CliRunner().invoke(app, ["compare", str(finished.output), "--by", "chunker"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "as_given" in result.output, result.output


def test_pruned_reranking_over_documents_scores_kept_trials_as_whole_ones(tmp_path, tiny_xlmr_reranker):
    """Wilcoxon pruning scores a reranking pipeline on growing subsets of the questions, on its own
    chunking: a trial that is kept has the same values as the same pipeline scored whole."""
    finance = DOCS / "documents"
    reranker = f'rerankers:\n  - {{name: ce, type: cross_encoder, model: "{tiny_xlmr_reranker}", depth: 5, ' \
               "max_length: 64}\n"
    space = (SPACE.replace("n_trials: 20, seed: 1, latency: off",
                           "n_trials: 6, seed: 1, latency: off, pruner: wilcoxon, prune_steps: 3")
             .replace("top_k: [1, 3, 5]", reranker + "top_k: [1, 3, 5]")
             .replace(f'documents: "{finance}"', f'documents: "{finance}/finance*"')
             .replace("  - {name: sentence, type: sentence, size: 500}\n", "")
             .replace("  - {name: whole, type: as_given}\n", "")
             .replace(f'qa: "{DOCS / "qa.jsonl"}"', f'qa: "{tmp_path / "finance.jsonl"}"'))
    lines = (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "finance.jsonl").write_text("\n".join(line for line in lines if '"finance"' in line) + "\n",
                                            encoding="utf-8")
    pruned = optimize(write_config(tmp_path / "pruned.yaml", space), progress=False)
    whole = optimize(write_config(tmp_path / "whole.yaml", space.replace("pruner: wilcoxon, ", "")), progress=False)
    kept = pd.read_csv(pruned.output / "trials.csv").set_index("pipeline_key")
    every = pd.read_csv(whole.output / "trials.csv").set_index("pipeline_key")
    shared = kept.index.intersection(every.index)
    assert len(shared) >= 1 and (kept["choice.reranker"] != "none").all()
    for column in ("value", "ndcg@3", "evidence_recall@1024t"):
        assert kept.loc[shared, column].to_numpy() == pytest.approx(every.loc[shared, column].to_numpy())


def test_a_question_whose_evidence_is_all_masked_is_named_before_any_trial(tmp_path):
    lines = (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    records = [json.loads(line) for line in lines]
    records[1]["masked"] = records[1]["evidence"]  # nothing of its evidence is left to index
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                                       encoding="utf-8")
    space = SPACE.replace(f'qa: "{DOCS / "qa.jsonl"}"', f'qa: "{tmp_path / "qa.jsonl"}"')
    with pytest.raises(DataError, match=r"1 question whose evidence is blank .*: 1_finance; remove them"):
        optimize(write_config(tmp_path / "masked.yaml", space), progress=False)
    assert not (tmp_path / "masked-output").exists()


def test_workers_on_a_study_over_documents_match_one_process(tmp_path):
    """Two processes share a grid over chunkers (the default SQLite storage): each pipeline runs
    once, and every trial's values, runs and qrels equal those of one process."""
    space = SPACE.replace("study: {n_trials: 20, seed: 1, latency: off}", "study: {sampler: grid, latency: off}")
    config = write_config(tmp_path / "docs.yaml", space)
    shared = optimize(config, tmp_path / "shared", progress=False, workers=2)
    alone = optimize(config, tmp_path / "alone", progress=False)
    columns = ["pipeline", "value", "ndcg@3", "evidence_recall@1024t", "chunks"]
    two, one = (pd.read_csv(o.output / "trials.csv")[columns].sort_values("pipeline").reset_index(drop=True)
                for o in (shared, alone))
    assert len(two) == 15
    pd.testing.assert_frame_equal(two, one)
    assert shared.best_spec == alone.best_spec
    for name in ("qrels.trec", "runs/best.trec"):
        assert (shared.output / name).read_text() == (alone.output / name).read_text()
