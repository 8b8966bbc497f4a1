"""The exported best.yaml serves the tuned pipeline: for every retriever kind, fusion and reranker,
load_pipeline reproduces the winning trial's stored ranking exactly (ids and order, in a fresh
cache and in the study's); and the schema version: older files load, a future one is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import yaml

from conftest import KO_MINI, write_config
from ragopt import load_pipeline
from ragopt.serving.pipeline import Hit, Pipeline
from ragopt.study import objective as objective_module
from ragopt.search.config import ConfigError
from ragopt.data.qa import load_corpus
from ragopt.serving.export import SCHEMA_VERSION, Exported, read_best, read_export, write_best
from ragopt.study.runs import StudyRuns
from ragopt.stages.spec import PipelineSpec
from ragopt.search.space import optuna_chooser
from ragopt.study import optimize

BM25 = "{name: lex, type: bm25, tokenizer: whitespace, method: lucene, k1: 1.2, b: 0.75}"
DENSE = ('{name: sem, type: dense, model: "@BERT@", query_prefix: "query: ", passage_prefix: "passage: ", '
         "max_length: 64, batch_size: 7}")
KIWI = "{name: r, type: bm25, tokenizer: kiwi, method: atire, k1: 0.9, b: 0.4}"
CASES = {
    "bm25-whitespace-lucene": ([BM25], "none", "lex"),
    "bm25-kiwi-bm25+": (["{name: r, type: bm25, tokenizer: kiwi, method: bm25+, k1: 1.6, b: 0.5, delta: 1.0}"],
                        "none", "r"),
    "bm25-char2-robertson": (["{name: r, type: bm25, tokenizer: {type: char_ngram, n: 2}, method: robertson}"],
                             "none", "r"),
    "bm25-huggingface-bm25l": (['{name: r, type: bm25, tokenizer: {type: huggingface, model: "@BERT@"}, '
                                "method: bm25l, delta: 0.3}"], "none", "r"),
    "dense": ([DENSE], "none", "sem"),
    "bge_m3-dense": (['{name: m3, type: bge_m3, model: "@M3@", mode: dense, max_length: 96}'], "none", "m3"),
    "bge_m3-sparse": (['{name: m3, type: bge_m3, model: "@M3@", mode: sparse, max_length: 96}'], "none", "m3"),
    "bge_m3-colbert": (['{name: m3, type: bge_m3, model: "@M3@", mode: colbert, max_length: 96}'], "none", "m3"),
    "hybrid-rrf": ([BM25, DENSE, "{name: h, type: hybrid, retrievers: [lex, sem], fusion: rrf, rrf_k: 7, depth: 20}"],
                   "none", "h"),
    **{f"hybrid-convex-{n}": ([BM25, DENSE, f"{{name: h, type: hybrid, retrievers: [lex, sem], fusion: convex, "
                                            f"normalization: {n}, weight: 0.4, depth: 20}}"], "none", "h")
       for n in ("min_max", "tmm", "z_score", "dbsf")},
    "cross_encoder": ([KIWI], '{name: ce, type: cross_encoder, model: "@XLMR@", depth: 4, max_length: 128}', "r"),
    "flag_reranker": ([KIWI], '{name: fr, type: flag_reranker, model: "@XLMR@", depth: 4, max_length: 128}', "r"),
}
QUESTIONS = list(pd.read_json(KO_MINI / "qa.jsonl", lines=True)["query"])
TOP_K = 3
"""The winner's k, below the deepest k of the space (5): the trial's stored ranking is 5 deep."""


@pytest.fixture(scope="module")
def models(tiny_bert, tiny_bge_m3, tiny_xlmr_reranker) -> dict[str, Path]:
    return {"@BERT@": tiny_bert, "@M3@": tiny_bge_m3, "@XLMR@": tiny_xlmr_reranker}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for every study, so that cases sharing a model embed the corpus once."""
    return tmp_path_factory.mktemp("cache")


def forcing(choices: dict[str, Any]) -> Callable[[Any], Callable[[str, Any], Any]]:
    """optuna_chooser, with the decisions named in `choices` fixed: the study runs the one
    pipeline the case is about, over a space that still lists the hybrid's components."""

    def chooser(trial: Any) -> Callable[[str, Any], Any]:
        choose = optuna_chooser(trial)
        return lambda name, options: choose(name, [choices[name]]) if name in choices else choose(name, options)

    return chooser


def config_text(case: str, models: dict[str, Path], cache: Path) -> str:
    """The case's search space: its retriever entries and reranker, k 3 or 5, one trial."""
    retrievers, reranker, _ = CASES[case]
    text = (f'data: {{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}}\n'
            f"retrievers: [{', '.join(retrievers)}]\nrerankers: [{reranker}]\ntop_k: [{TOP_K}, 5]\n"
            f'study: {{n_trials: 1, latency: off}}\ndevice: cpu\ncache_dir: "{cache}"\n')
    for placeholder, folder in models.items():
        text = text.replace(placeholder, str(folder))
    return text


@pytest.fixture(scope="module", params=list(CASES))
def studied(request, models, shared_cache, tmp_path_factory) -> tuple[str, Path]:
    """A one-trial study of the case's pipeline: (case, output folder)."""
    case = request.param
    folder = tmp_path_factory.mktemp(case)
    path = write_config(folder / "space.yaml", config_text(case, models, shared_cache))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(objective_module, "optuna_chooser", forcing({"retriever": CASES[case][2], "top_k": TOP_K}))
        outcome = optimize(path, progress=False)
    return case, outcome.output


def trial_ranking(output: Path) -> list[list[str]]:
    """The winning trial's stored ranking (5 deep: corpus rows), as doc ids per question."""
    runs = StudyRuns(output)
    doc_ids = load_corpus(KO_MINI / "corpus.jsonl").doc_ids
    return [[doc_ids[i] for i in row if i >= 0] for row in runs.ranking(runs.best)]


def test_the_study_ran_the_case_pipeline(studied):
    case, output = studied
    spec = read_best(output / "best.yaml")
    retriever = spec.retriever
    assert spec.top_k == TOP_K
    if spec.reranker is not None:
        assert spec.reranker.type == case and spec.reranker.depth == 4
    else:
        assert retriever.type == case.split("-")[0]
    if retriever.type == "hybrid":
        assert retriever.fusion == case.split("-")[1]
        assert [r.type for r in retriever.retrievers] == ["bm25", "dense"]
        assert retriever.normalization == (case.split("-")[2] if retriever.fusion == "convex" else None)


@pytest.fixture(scope="module")
def served(studied, shared_cache) -> dict[str, Pipeline]:
    """The exported winner loaded in a fresh cache (none on disk) and in the study's."""
    _, output = studied
    return {cache: load_pipeline(output / "best.yaml", KO_MINI / "corpus.jsonl", folder, device="cpu")
            for cache, folder in (("fresh", None), ("study", shared_cache))}


def ids(hits: list[list[Hit]]) -> list[list[str]]:
    return [[h.doc_id for h in question] for question in hits]


@pytest.mark.parametrize("cache", ["fresh", "study"])
def test_the_loaded_pipeline_ranks_as_its_trial(studied, served, cache):
    """Every question at once, as the trial scored them: the top k is the trial's, and asked for
    the trial's depth, the whole stored ranking."""
    _, output = studied
    expected = trial_ranking(output)
    assert sum(map(len, expected)) > 3 * len(expected)
    assert ids(served[cache].retrieve(QUESTIONS)) == [row[:TOP_K] for row in expected]
    assert ids(served[cache].retrieve(QUESTIONS, k=5)) == expected


def test_the_scores_do_not_depend_on_the_cache(served):
    """The runs store ids, not scores: the served scores are the same from a fresh cache and
    from the study's."""
    fresh, cached = ([[(h.doc_id, h.score) for h in q] for q in served[c].retrieve(QUESTIONS)] for c in served)
    assert fresh == cached


def test_a_question_served_alone_ranks_as_in_the_trial(studied, served):
    """One question at a time, as a served pipeline is asked. A neural encoder's query vectors
    move by float noise with the batch they are encoded in, so its scores match to 1e-4, not
    bit for bit; BGE-M3's tiny random model scores passages so nearly alike that this noise
    reorders them, so its ids are not compared. Lexical scores and reranker scores are exact."""
    case, _ = studied
    pipeline = served["fresh"]
    batched = pipeline.retrieve(QUESTIONS)
    neural = any(r.type != "bm25" for r in pipeline.spec.retriever.components() or [pipeline.spec.retriever])
    for i in (0, 17, 40):
        alone = pipeline.retrieve(QUESTIONS[i])[0]
        if not case.startswith("bge_m3"):
            assert ids([alone]) == ids([batched[i]]), i
        scores = [h.score for h in batched[i]]
        assert [h.score for h in alone] == (pytest.approx(scores, rel=1e-4, abs=1e-5) if neural else scores), i


def test_best_yaml_carries_the_search_settings(studied):
    _, output = studied
    document = yaml.safe_load((output / "best.yaml").read_text(encoding="utf-8"))
    assert document["ragopt_pipeline"] == SCHEMA_VERSION
    assert document["engine"] == {"exact_search_max": 1_000_000, "device": "cpu"}
    spec = read_best(output / "best.yaml")
    assert set(document["provenance"]["models"]) == set(spec.retriever.models() + (
        [spec.reranker.model] if spec.reranker else []))


PIPELINE = {"retriever": {"type": "hybrid", "fusion": "convex", "normalization": "tmm", "weights": [0.4, 0.6],
                          "depth": 20, "retrievers": [{"type": "bm25", "tokenizer": {"type": "kiwi"}},
                                                      {"type": "dense", "model": "intfloat/multilingual-e5-small"}]},
            "reranker": {"type": "flag_reranker", "model": "BAAI/bge-reranker-v2-m3", "depth": 10,
                         "max_length": 512},
            "top_k": 5}
VERSION_1 = {"ragopt_pipeline": 1, "pipeline": {**PIPELINE, "reranker": {**PIPELINE["reranker"], "max_length": None}}}
VERSION_2 = {"ragopt_pipeline": 2, "pipeline": PIPELINE, "engine": {"exact_search_max": 5000},
             "evaluation": {"trial": 3}, "provenance": {"libraries": {"ragopt": "0.2.0"}}}
VERSION_3 = {**VERSION_2, "ragopt_pipeline": 3, "engine": {"exact_search_max": 5000, "device": "cuda"}}


def written(folder: Path, document: dict) -> Path:
    path = folder / f"v{document['ragopt_pipeline']}.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("document", [VERSION_1, VERSION_2], ids=["v1", "v2"])
def test_an_older_best_yaml_loads_as_the_current_one(tmp_path, document):
    current = read_export(written(tmp_path, VERSION_3))
    older = read_export(written(tmp_path, document))
    assert current.spec == PipelineSpec.model_validate(PIPELINE) and current.device == "cuda"
    assert older.spec == current.spec and older.device is None
    assert older.exact_search_max == (5000 if document is VERSION_2 else 1_000_000)


def test_a_best_yaml_of_a_later_ragopt_is_refused_with_what_to_do(tmp_path):
    path = written(tmp_path, {**VERSION_3, "ragopt_pipeline": SCHEMA_VERSION + 1})
    with pytest.raises(ConfigError) as error:
        load_pipeline(path, KO_MINI / "corpus.jsonl")
    message = str(error.value)
    assert str(path) in message and f"version {SCHEMA_VERSION + 1}" in message
    assert "upgrade ragopt (pip install -U ragopt)" in message and "reads versions 1, 2, 3" in message


@pytest.mark.parametrize("schema", [0, "3", True, None])
def test_a_best_yaml_of_no_known_version_is_refused(tmp_path, schema):
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({**VERSION_3, "ragopt_pipeline": schema}), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"version {schema!r}, .*; export the pipeline again with this ragopt"):
        read_best(path)


def test_the_device_round_trips_and_is_checked(tmp_path):
    spec = PipelineSpec.model_validate(PIPELINE)
    path = tmp_path / "best.yaml"
    write_best(path, Exported(spec, 10, "mps"), {"trial": 0}, {})
    assert read_export(path) == Exported(spec, 10, "mps")
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["engine"] == {"exact_search_max": 10, "device": "mps"}
    path.write_text(yaml.safe_dump({**VERSION_3, "engine": {"device": "cuda:1"}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="engine.device must be a device type such as cpu or cuda; got 'cuda:1'"):
        read_best(path)


def test_serving_on_another_device_type_than_the_trial_warns(tmp_path):
    best = written(tmp_path, {**VERSION_3, "pipeline": {"retriever": {"type": "bm25", "tokenizer": {
        "type": "whitespace"}}, "top_k": 3}})
    with pytest.warns(UserWarning, match="was tuned on cuda and runs on cpu here"):
        pipeline = load_pipeline(best, KO_MINI / "corpus.jsonl", device="cpu")
    assert [hit.rank for hit in pipeline.retrieve("예금자 보호")[0]] == [1]  # the one passage with either word


BM25_SPEC = {"retriever": {"type": "bm25", "tokenizer": {"type": "kiwi"}, "method": "robertson",
                           "k1": 1.6591549219979842, "b": 0.8100069383385798}, "top_k": 1}


def header(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def test_the_header_says_how_to_run_it_on_the_corpus_the_study_searched(tmp_path):
    spec = PipelineSpec.model_validate(BM25_SPEC)
    corpus = tmp_path / "ko mini" / "corpus.jsonl"
    path = tmp_path / "study-output" / "best.yaml"
    evaluation = {"trial": 33, "value": 0.881944, "seconds_per_query": 0.0002866118124984496,
                  "metrics_at_k": {"selection": {"f1@1": 0.8680555555555556}}}
    write_best(path, Exported(spec), evaluation, {}, corpus=corpus)
    assert header(path) == [
        "# The best pipeline found by ragopt: bm25[kiwi,robertson,k1=1.66,b=0.81] k=1 (trial 33).",
        "# Run it from this folder on the corpus the study searched:",
        "#   ragopt query best.yaml --corpus '../ko mini/corpus.jsonl' \"question\"",
        "#   ragopt.load_pipeline(\"best.yaml\", \"../ko mini/corpus.jsonl\").retrieve(\"question\")"]
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    # the pipeline keeps every digit: a rounded k1 or b would change every BM25 score
    assert document["pipeline"]["retriever"]["k1"] == 1.6591549219979842
    assert document["evaluation"]["seconds_per_query"] == 0.000287  # measured to about 3 digits
    assert document["evaluation"]["metrics_at_k"]["selection"]["f1@1"] == 0.868056
    assert read_best(path) == spec
    elsewhere = Path("/nowhere-else-at-all/corpus.parquet")  # no folder in common but the root: named in full
    write_best(tmp_path / "per_domain" / "law.yaml", Exported(spec), {"trial": 2}, {}, corpus=elsewhere)
    assert header(tmp_path / "per_domain" / "law.yaml")[2] == (
        f'#   ragopt query law.yaml --corpus {elsewhere.as_posix()} "question"')
