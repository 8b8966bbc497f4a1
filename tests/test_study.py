"""End to end on the bundled example: the study, its files, trec_eval agreement, resume, the
exported winner, the CLI, and the errors a user meets first."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import optuna
import pytrec_eval
import yaml
from typer.testing import CliRunner

from conftest import KO_MINI, write_config
from ragopt import load_pipeline
from ragopt.cli import app
from ragopt.data.qa import DataError
from ragopt.study.runs import StudyRuns
from ragopt.scoring.trec import encode_id
from ragopt.study import run as run_module
from ragopt.errors import StudyError
from ragopt.study import optimize

SPACE = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl", domain_column: domain}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, kiwi, {type: char_ngram, n: 2}], method: [lucene, bm25+],
     k1: {low: 0.5, high: 2.0}, b: {low: 0.3, high: 1.0}}
  - {name: dense, type: dense, model: "@TINY_BERT@", query_prefix: "query: ", passage_prefix: "passage: "}
  - {name: hybrid, type: hybrid, retrievers: [bm25, dense], fusion: [rrf, convex],
     normalization: [min_max, tmm, z_score, dbsf], depth: 20}
rerankers:
  - none
  - {name: ce, type: cross_encoder, model: "@TINY_XLMR@", depth: [3, 6]}
top_k: [1, 3, 5]
optimize: {f1: 1.0, ndcg@5: 1.0}
study: {n_trials: 30, seed: 3}
"""
KS = [1, 3, 5]


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_bert, tiny_xlmr_reranker) -> Path:
    folder = tmp_path_factory.mktemp("study")
    text = SPACE.replace("@TINY_BERT@", str(tiny_bert)).replace("@TINY_XLMR@", str(tiny_xlmr_reranker))
    return write_config(folder / "space.yaml", text)


@pytest.fixture(scope="module")
def finished(space):
    return optimize(space, progress=False)


def read_trec(path: Path, columns: int) -> dict[str, dict[str, float]]:
    """A TREC run (6 columns, score) or qrels (4 columns, relevance) split on whitespace, as trec_eval reads it."""
    table: dict[str, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        assert len(fields) == columns, line
        table.setdefault(fields[0], {})[fields[2]] = float(fields[4]) if columns == 6 else int(fields[3])
    return table


def test_outputs_are_written(finished):
    out = finished.output
    assert out.name == "space-output"
    for name in ("trials.csv", "qrels.trec", "best.yaml", "summary.md", "study.db"):
        assert (out / name).exists(), name
    trials = pd.read_csv(out / "trials.csv")
    index = json.loads((out / "runs" / "index.json").read_text(encoding="utf-8"))
    assert len(trials) == 30 and sorted(map(int, index["trials"])) == sorted(trials["trial"])
    stored = {path.stem for path in (out / "runs").glob("*.npy")}
    assert stored == set(index["trials"].values()) and len(stored) <= (~trials["reused"]).sum()  # each ranking once
    assert (out / "runs" / "best.trec").exists()
    assert {f"{m}@{k}" for m in ("f1", "recall", "precision", "map", "mrr", "ndcg", "hit") for k in KS} <= set(trials)
    assert trials["value"].max() == pytest.approx(finished.best_value)
    assert set(trials["param.retriever"]) == {"bm25", "dense", "hybrid"}
    assert set(trials["param.reranker"]) == {"none", "ce"}
    summary = (out / "summary.md").read_text()
    assert "The best pipeline of each domain" in summary and "| medical | 12 / 12 (few) |" in summary


def test_trials_csv_matches_trec_eval_on_the_saved_runs(finished, tmp_path):
    """A question that retrieved nothing has no line in its run and scores 0: trec_eval -c
    (average over every query of the qrels) gives the same means."""
    out = finished.output
    trials = pd.read_csv(out / "trials.csv")
    runs = StudyRuns(out).write(trials["trial"], tmp_path)
    qrels = read_trec(out / "qrels.trec", 4)
    assert any("%20" in doc for docs in qrels.values() for doc in docs)  # ids with spaces survive
    measures = {f"{m}.{','.join(map(str, KS))}" for m in ("P", "recall", "map_cut", "ndcg_cut", "success")}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures)
    names = {"precision": "P_{}", "recall": "recall_{}", "map": "map_cut_{}", "ndcg": "ndcg_cut_{}",
             "hit": "success_{}"}
    short = 0
    for row, path in zip(trials.to_dict("records"), runs):
        run = read_trec(path, 6)
        assert set(run) <= set(qrels)
        short += len(qrels) - len(run)
        per_query = evaluator.evaluate(run)
        for k in KS:
            for name, trec in names.items():
                expected = sum(v[trec.format(k)] for v in per_query.values()) / len(qrels)
                assert row[f"{name}@{k}"] == pytest.approx(expected, abs=1e-6), (row["trial"], name, k)
            cut = {q: dict(sorted(docs.items(), key=lambda x: -x[1])[:k]) for q, docs in run.items()}
            rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
            assert row[f"mrr@{k}"] == pytest.approx(sum(v["recip_rank"] for v in rr.values()) / len(qrels), abs=1e-6)
    assert short > 0  # some questions share no word with any passage: BM25 retrieved nothing for them


def test_rerun_resumes_and_a_changed_space_is_refused(finished, space):
    before = pd.read_csv(finished.output / "trials.csv")
    resumed = optimize(space, n_trials=34, progress=False)
    after = pd.read_csv(resumed.output / "trials.csv")
    assert len(after) == 34
    pd.testing.assert_frame_equal(after.head(30)[["trial", "value"]], before[["trial", "value"]])
    time_section = (resumed.output / "summary.md").read_text().split("## Time")[1]
    assert "The whole study (every run and worker): 34 finished trials" in time_section  # not only this run's 4
    changed = space.with_name("changed.yaml")
    changed.write_text(space.read_text().replace("top_k: [1, 3, 5]", "top_k: [1, 5]")
                       .replace("seed: 3}", "seed: 3, name: space}"))  # the same study, another space
    with pytest.raises(StudyError, match="--fresh"):
        optimize(changed, output=finished.output, progress=False)


def test_the_exported_winner_reproduces_its_trial(finished):
    out = finished.output
    qa_texts = pd.read_json(KO_MINI / "qa.jsonl", lines=True)
    pipeline = load_pipeline(out / "best.yaml", KO_MINI / "corpus.jsonl", out / "cache", device="cpu")
    hits = pipeline.retrieve(list(qa_texts["query"]))
    best_trial = yaml.safe_load((out / "best.yaml").read_text())["evaluation"]["trial"]
    trials = pd.read_csv(out / "trials.csv").set_index("trial")
    assert trials.loc[best_trial, "pipeline"] == pipeline.spec.describe()
    assert trials.loc[best_trial, "value"] == trials["value"].max()
    run = read_trec(out / "runs" / "best.trec", 6)
    for qid, query_hits in zip(qa_texts["qid"], hits):
        expected = sorted(run[qid], key=lambda d: -run[qid][d])[: pipeline.spec.top_k]
        assert [encode_id(h.doc_id) for h in query_hits] == expected


def test_cli_query_prints_passages(finished):
    result = CliRunner().invoke(app, ["query", str(finished.output / "best.yaml"), "술 마신 뒤 해열제를 먹어도 되나요?",
                                      "--corpus", str(KO_MINI / "corpus.jsonl"), "--k", "2"])
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and "medical" in result.output


def test_grid_runs_each_pipeline_once_and_resumes_with_nothing_left(tmp_path):
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, {type: char_ngram, n: 2}], k1: {low: 1.0, high: 2.0, step: 0.5}}
top_k: [1, 3]
study: {sampler: grid}
"""
    path = write_config(tmp_path / "grid.yaml", text)
    outcome = optimize(path, progress=False)
    assert outcome.n_trials == 2 * 3 * 2
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert len(trials.drop_duplicates(["param.bm25.tokenizer", "param.bm25.k1", "param.top_k"])) == 12
    assert optimize(path, progress=False).n_trials == 12


def test_missing_ground_truth_fails_before_any_model_runs(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"qid": "x1", "query": "질문", "retrieval_gt": [["없는 문서"]]}\n')
    text = (f'data: {{qa: "{tmp_path / "qa.jsonl"}", corpus: "@KO_MINI@/corpus.jsonl"}}\n'
            "retrievers: [{name: d, type: dense, model: no-such/model}]\n")
    path = write_config(tmp_path / "bad.yaml", text)
    with pytest.raises(DataError, match="'없는 문서'"):
        optimize(path, progress=False)
    result = CliRunner().invoke(app, ["optimize", str(path)])
    assert result.exit_code == 2 and "missing from the corpus" in result.output


def test_an_interrupted_study_keeps_its_trials_and_resumes(tmp_path, monkeypatch):
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace, k1: {low: 0.5, high: 2.0}}]
study: {n_trials: 8}
"""
    path = write_config(tmp_path / "stop.yaml", text)
    real = run_module.Evaluator.evaluate
    calls = []

    def evaluate_then_stop(self, spec):
        calls.append(spec)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, spec)

    monkeypatch.setattr(run_module.Evaluator, "evaluate", evaluate_then_stop)
    stopped = optimize(path, progress=False)
    assert stopped.interrupted and stopped.n_trials == 3
    assert len(pd.read_csv(stopped.output / "trials.csv")) == 3
    monkeypatch.setattr(run_module.Evaluator, "evaluate", real)
    resumed = optimize(path, progress=False)
    assert not resumed.interrupted and resumed.n_trials == 8
    assert optimize(path, n_trials=2, fresh=True, progress=False).n_trials == 2
    index = json.loads((stopped.output / "runs" / "index.json").read_text(encoding="utf-8"))
    stored = {path.stem for path in (stopped.output / "runs").glob("*.npy")}
    assert len(index["trials"]) == 2 and stored == set(index["trials"].values())  # --fresh removed the old runs


def test_a_fresh_study_stopped_early_leaves_nothing_of_the_previous_one(tmp_path, monkeypatch):

    path = write_config(tmp_path / "bm25.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace, k1: {low: 0.5, high: 2.0}}]
study: {latency: off}
""")
    first = optimize(path, n_trials=3, progress=False)
    old = {p.name for p in first.output.iterdir()}
    assert {"trials.csv", "best.yaml", "summary.md", "study.json", "runs", "per_question.parquet"} <= old

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # killed while the new study's models load

    monkeypatch.setattr(run_module, "warm_up", stopped)
    with pytest.raises(KeyboardInterrupt):
        optimize(path, n_trials=3, fresh=True, progress=False)
    assert {p.name for p in first.output.iterdir()} <= {"cache", "study.db", "qrels.trec", ".ragopt.lock"}
    assert not optuna.load_study(study_name="bm25", storage=f"sqlite:///{first.output / 'study.db'}").trials


def test_a_huge_finite_space_is_sampled_without_walking_it(tmp_path, monkeypatch):
    k1 = [round(0.5 + i / 100, 2) for i in range(100)]
    b = [round(0.3 + i / 200, 3) for i in range(100)]
    path = write_config(tmp_path / "huge.yaml", f"""
data: {{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}}
retrievers: [{{name: bm25, type: bm25, tokenizer: [whitespace, {{type: char_ngram, n: 2}}], method: [lucene, bm25+],
               k1: {k1}, b: {b}}}]
top_k: [1, 3, 5]
study: {{sampler: tpe, n_trials: 3, latency: off}}
""")  # 120,000 distinct pipelines: more than a grid may hold, so sampled
    from ragopt.search import space

    walked = []
    suggest = space.suggest_pipeline
    monkeypatch.setattr(space, "suggest_pipeline", lambda *args: walked.append(1) or suggest(*args))
    outcome = optimize(path, progress=False)
    assert outcome.n_trials == 3 and outcome.best_spec.retriever.k1 in k1
    assert 0 < len(walked) <= 4  # the walk stops once the space holds more pipelines than trials


def test_a_small_finite_space_runs_as_a_grid(tmp_path):
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: [whitespace, kiwi]}]
top_k: [1, 3]
study: {n_trials: 50}
"""
    outcome = optimize(write_config(tmp_path / "small.yaml", text), progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert len(trials) == 4 and trials["pipeline"].nunique() == 4
    assert list(trials.columns[:5]) == ["trial", "value", "pipeline", "param.bm25.tokenizer", "param.top_k"]


def test_wilcoxon_pruning_stops_a_losing_reranker_early(tmp_path, tiny_xlmr_reranker, scored_pairs):
    text = f"""
data: {{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}}
retrievers:
  - {{name: bm25, type: bm25, tokenizer: kiwi}}
rerankers: [none, {{name: ce, type: cross_encoder, model: "{tiny_xlmr_reranker}", depth: 10}}]
top_k: [1, 3]
study: {{sampler: grid, pruner: wilcoxon, prune_steps: 8}}
"""
    outcome = optimize(write_config(tmp_path / "prune.yaml", text), progress=False)
    db = f"sqlite:///{outcome.output / 'study.db'}"
    trials = optuna.load_study(study_name="prune", storage=db).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert outcome.n_pruned == len(pruned) >= 1 and outcome.best_spec.reranker is None
    for trial in complete:  # every question reported, and their mean is the trial's value
        assert sorted(trial.intermediate_values) == list(range(48))
        assert np.mean(list(trial.intermediate_values.values())) == pytest.approx(trial.value, abs=1e-12)
    assert all(len(t.intermediate_values) < 48 for t in pruned)
    assert 0 < len(scored_pairs) < 48 * 10  # the reranker never saw the questions the pruned trials did not reach


def test_per_question_values_are_stored_for_every_trial(finished):
    out = finished.output
    trials = pd.read_csv(out / "trials.csv")
    values = pd.read_parquet(out / "per_question.parquet")
    assert set(values["trial"]) == set(trials["trial"]) and len(values) == 48 * len(trials)
    assert set(values["domain"]) == {"finance", "law", "medical", "tech"}
    assert set(values["split"]) == {"selection"} and set(values["fold"]) == {-1}
    means = values.drop(columns=["qid", "domain", "split"]).groupby("trial").mean()
    for column in ("f1@1", "ndcg@5", "map@3", "hit@5"):
        np.testing.assert_allclose(means[column].to_numpy(), trials.set_index("trial")[column].to_numpy(), atol=1e-6)


def test_summary_names_the_per_domain_table_for_what_it_is(finished):
    summary = (finished.output / "summary.md").read_text()
    assert "## The best pipeline of each domain\n\nEach domain's winner is chosen on its own selection" in summary
    assert "scored on the selection questions (which flatters it)" in summary


def test_best_yaml_records_the_revisions_and_versions_that_produced_it(finished):
    from ragopt.serving.export import SCHEMA_VERSION, read_best

    document = yaml.safe_load((finished.output / "best.yaml").read_text())
    assert document["ragopt_pipeline"] == SCHEMA_VERSION and document["engine"]["device"] == "cpu"
    provenance = document["provenance"]
    libraries = {"python", "torch", "transformers", "sentence-transformers", "optuna", "ragopt"}
    assert libraries <= set(provenance["libraries"])
    spec = read_best(finished.output / "best.yaml")  # the study's winner now (an earlier test resumed it)
    assert set(provenance["models"]) == set(spec.retriever.models() + ([spec.reranker.model] if spec.reranker else []))
    for identity in provenance["models"].values():
        assert len(identity["sha256"]) == 64
    assert set(provenance["tokenizers"]) == {t.label for t in spec.retriever.tokenizers()}


SHUFFLE = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "CORPUS", domain_column: domain}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, {type: char_ngram, n: 2}], method: [lucene, robertson]}
  - {name: dense, type: dense, model: "@TINY_BERT@"}
  - {name: hybrid, type: hybrid, retrievers: [bm25, dense], fusion: [rrf, convex],
     normalization: [min_max, z_score], weight: [0.3, 0.7], depth: 10}
top_k: [1, 3, 5]
study: {sampler: grid}
"""


def test_shuffling_the_corpus_rows_changes_no_metric_and_no_winner(tmp_path, tiny_bert):
    rows = (KO_MINI / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(rows[i] for i in np.random.default_rng(0).permutation(len(rows))) + "\n",
                        encoding="utf-8")
    outcomes = []
    for name, corpus in (("original", KO_MINI / "corpus.jsonl"), ("shuffled", shuffled)):
        text = SHUFFLE.replace("CORPUS", str(corpus)).replace("@TINY_BERT@", str(tiny_bert))
        outcomes.append(optimize(write_config(tmp_path / f"{name}.yaml", text), progress=False))
    timing = ["seconds_per_query", "reused", "pareto"]  # measured: they vary from run to run
    tables = [pd.read_csv(o.output / "trials.csv").drop(columns=timing) for o in outcomes]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert outcomes[0].best_spec == outcomes[1].best_spec


def test_a_resumed_study_refuses_trials_from_other_weights(tmp_path, tiny_bert):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: dense, type: dense, model: model}]
top_k: [1, 3]
"""
    path = write_config(tmp_path / "weights.yaml", text)
    assert optimize(path, progress=False).n_trials == 2
    config = model / "config.json"
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    with pytest.raises(StudyError, match="other model weights") as error:
        optimize(path, progress=False)
    assert str(model) in str(error.value) and "--fresh" in str(error.value)
    assert optimize(path, fresh=True, progress=False).n_trials == 2


def test_a_study_made_by_an_earlier_ragopt_is_not_resumed(tmp_path):
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
top_k: [1, 3]
"""
    path = write_config(tmp_path / "old.yaml", text)
    output = tmp_path / "old-output"
    output.mkdir()
    earlier = optuna.create_study(study_name="old", storage=f"sqlite:///{output / 'study.db'}", direction="maximize")
    earlier.set_user_attr("space", "made by ragopt 0.1")
    earlier.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"ragopt": {"metrics": {}}}))
    with pytest.raises(StudyError, match="another version of ragopt"):
        optimize(path, progress=False)
    assert optimize(path, fresh=True, progress=False).n_trials == 2


def test_best_yaml_of_an_earlier_schema_loads_and_a_later_one_is_refused(finished, tmp_path):
    from ragopt.search.config import ConfigError
    from ragopt.serving.export import SCHEMA_VERSION, read_best

    document = yaml.safe_load((finished.output / "best.yaml").read_text())
    del document["provenance"]
    for version, ok in ((1, True), (2, True), (SCHEMA_VERSION + 1, False)):
        path = tmp_path / f"v{version}.yaml"
        path.write_text(yaml.safe_dump({**document, "ragopt_pipeline": version}, allow_unicode=True))
        if ok:
            assert read_best(path) == read_best(finished.output / "best.yaml")
        else:
            with pytest.raises(ConfigError, match="upgrade ragopt"):
                read_best(path)


def test_the_exported_pipeline_searches_as_its_trial_did(tmp_path, tiny_bert):
    text = f"""
data: {{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}}
retrievers: [{{name: dense, type: dense, model: "{tiny_bert}"}}]
top_k: [1, 3]
exact_search_max: 10
"""
    outcome = optimize(write_config(tmp_path / "hnsw.yaml", text), progress=False)
    engine = yaml.safe_load((outcome.output / "best.yaml").read_text())["engine"]
    assert engine == {"exact_search_max": 10, "device": "cpu"}
    pipeline = load_pipeline(outcome.output / "best.yaml", KO_MINI / "corpus.jsonl", device="cpu")
    pipeline.retrieve("예금자 보호")
    assert pipeline.engine.retriever(pipeline.spec.retriever).index is not None  # HNSW, as in the study


def test_a_version_1_flag_reranker_without_max_length_loads_with_512(tmp_path):
    from ragopt.serving.export import read_best

    path = tmp_path / "v1.yaml"
    path.write_text(yaml.safe_dump({"ragopt_pipeline": 1, "pipeline": {
        "retriever": {"type": "bm25", "tokenizer": {"type": "kiwi"}},
        "reranker": {"type": "flag_reranker", "model": "BAAI/bge-reranker-v2-m3", "depth": 10, "max_length": None},
        "top_k": 3}}))
    assert read_best(path).reranker.max_length == 512


def test_a_resumed_study_reports_the_metrics_its_config_asks_for_now(tmp_path):
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: [whitespace, kiwi]}]
top_k: [1, 3]
metrics: [f1]
study: {name: m}
"""
    path = write_config(tmp_path / "m.yaml", text)
    optimize(path, progress=False)
    path.write_text(path.read_text().replace("metrics: [f1]", "metrics: [f1, ndcg]"))
    outcome = optimize(path, progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert trials[["ndcg@1", "ndcg@3"]].notna().all().all() and len(trials) == 4
