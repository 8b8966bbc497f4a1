"""The YAML schema: the shipped configs load, and every mistake is named by its path."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, write_config
from ragopt.cli import app
from ragopt.search.config import ConfigError, load_config

GOOD = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: whitespace, k1: {low: 0.5, high: 2.0}}
top_k: [1, 3]
"""


@pytest.mark.parametrize("name", ["quickstart.yaml", "autorag-ko.yaml", "korean-models.yaml"])
def test_shipped_configs_load(name):
    config, _ = load_config(ROOT / "configs" / name)
    assert config.retrievers


def test_korean_models_config_names_the_community_models():
    config, _ = load_config(ROOT / "configs" / "korean-models.yaml")
    models = {getattr(r, "model", None) for r in config.retrievers + config.rerankers}
    assert {"dragonkue/BGE-m3-ko", "dragonkue/snowflake-arctic-embed-l-v2.0-ko", "nlpai-lab/KoE5", "BAAI/bge-m3",
            "intfloat/multilingual-e5-large-instruct", "dragonkue/bge-reranker-v2-m3-ko", "Dongjin-kr/ko-reranker",
            "BAAI/bge-reranker-v2-m3"} <= models
    assert all(not getattr(entry, "trust_remote_code", False) for entry in config.retrievers + config.rerankers)
    m3 = next(r for r in config.retrievers if r.type == "bge_m3" and len(r.mode) == 3)
    assert m3.model == "BAAI/bge-m3" and config.study.pruner == "wilcoxon"
    koe5 = next(r for r in config.retrievers if getattr(r, "model", None) == "nlpai-lab/KoE5")
    assert (koe5.query_prefix, koe5.passage_prefix) == ("query: ", "passage: ")


def test_defaults_and_relative_paths(tmp_path):
    config, _ = load_config(write_config(tmp_path / "c.yaml", GOOD))
    assert config.optimize == {"f1": 1.0} and config.study.sampler == "tpe"
    assert config.rerankers[0].type == "none"
    assert config.retrievers[0].b == [0.75]


def errors_of(tmp_path, text):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path / "c.yaml", text))
    return str(error.value)


def test_unknown_key_lists_allowed_keys(tmp_path):
    message = errors_of(tmp_path, GOOD.replace("k1:", "k_1:"))
    assert ("c.yaml:4: retrievers[0].k_1: unknown key 'k_1' (did you mean 'k1'?); the keys allowed here: b, delta, "
            "k1, method, name, tokenizer, type") in message


def test_wrong_value_names_path_and_choices(tmp_path):
    message = errors_of(tmp_path, GOOD.replace("tokenizer: whitespace", "tokenizer: whitespace, method: bm26"))
    assert "retrievers[0].method[0]" in message and "'lucene'" in message and "'bm26'" in message
    message = errors_of(tmp_path, GOOD.replace("tokenizer: whitespace", "tokenizer: kiwii"))
    assert ("c.yaml:4: retrievers[0].tokenizer[0]: unknown type 'kiwii' (did you mean 'kiwi'?); use one of kiwi, "
            "mecab, whitespace, char_ngram, huggingface") in message
    message = errors_of(tmp_path, GOOD.replace("{low: 0.5, high: 2.0}", "{low: 2.0, high: 0.5}"))
    assert "retrievers[0].k1" in message and "must not exceed" in message


def test_hybrid_must_name_existing_retrievers(tmp_path):
    text = GOOD + "  - {name: h, type: hybrid, retrievers: [bm25, dense]}\n"
    text = text.replace("top_k: [1, 3]\n", "") + "top_k: [1, 3]\n"
    assert "retrievers[1].retrievers" in errors_of(tmp_path, text)


def test_grid_needs_a_step_for_float_ranges(tmp_path):
    message = errors_of(tmp_path, GOOD + "study: {sampler: grid}\n")
    assert "retrievers[0].k1: the grid sampler needs a step" in message


def test_unknown_metric_and_bad_yaml(tmp_path):
    assert "optimize.ndcg@7: k=7 is not in top_k [1, 3]" in errors_of(tmp_path, GOOD + "optimize: ndcg@7\n")
    assert "optimize.mrr@x: k=x is not in top_k [1, 3]" in errors_of(tmp_path, GOOD + "optimize: mrr@x\n")
    assert "c.yaml:7:1: not valid YAML" in errors_of(tmp_path, GOOD + "top_k: [1,\n")
    assert "config file not found" in str(pytest.raises(ConfigError, load_config, Path("nope.yaml")).value)


def test_cli_reports_a_broken_config_and_exits_2(tmp_path):
    path = write_config(tmp_path / "broken.yaml", GOOD.replace("k1:", "k_1:"))
    result = CliRunner().invoke(app, ["optimize", str(path)])
    assert result.exit_code == 2
    assert "broken.yaml:4: retrievers[0].k_1: unknown key 'k_1'" in result.output and "Traceback" not in result.output


def test_model_folders_are_relative_to_the_config(tmp_path):
    (tmp_path / "models" / "enc").mkdir(parents=True)
    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, {type: huggingface, model: models/enc}]}
  - {name: d, type: dense, model: models/enc}
  - {name: hub, type: dense, model: BAAI/bge-m3}
  - {name: two, type: dense, model: BAAI/bge-m3, query_model: models/enc}
  - {name: m3, type: bge_m3, model: models/enc}
rerankers: [none, {name: ce, type: cross_encoder, model: models/enc}, {name: f, type: flag_reranker, model: models/enc},
            {name: g, type: flag_llm_reranker, model: models/enc}]
"""
    config, _ = load_config(write_config(tmp_path / "c.yaml", text))
    local = str((tmp_path / "models" / "enc").resolve())
    assert config.retrievers[0].tokenizer[1].model == local
    assert [r.model for r in config.retrievers[1:]] == [local, "BAAI/bge-m3", "BAAI/bge-m3", local]
    assert config.retrievers[3].query_model == local
    assert [r.model for r in config.rerankers[1:]] == [local] * 3


def test_flagembedding_entries_search_mode_and_depth(tmp_path):
    from ragopt.search.space import enumerate_space, suggest_pipeline
    from ragopt.stages.rerankers.flag_reranker import FlagRerankerSpec

    text = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: m3, type: bge_m3, model: BAAI/bge-m3, mode: [dense, sparse, colbert]}
rerankers: [none, {name: flag, type: flag_reranker, model: BAAI/bge-reranker-v2-m3, depth: [10, 20]}]
top_k: [5]
"""
    config, _ = load_config(write_config(tmp_path / "c.yaml", text))
    grid = enumerate_space(config)
    assert len(grid) == 3 * 3  # three modes x (none, depth 10, depth 20)
    choice = {"retriever": "m3", "m3.mode": "sparse", "reranker": "flag", "flag.depth": 20}
    spec = suggest_pipeline(config, lambda name, options: choice.get(name, options[0]))
    assert (spec.retriever.mode, spec.retriever.trust_remote_code) == ("sparse", False)
    assert spec.reranker == FlagRerankerSpec(model="BAAI/bge-reranker-v2-m3", depth=20)
    assert config.max_depth == 20


def test_remote_code_and_modes_are_checked(tmp_path):
    text = GOOD.replace("top_k", "  - {name: m3, type: bge_m3, mode: [dense, lexical]}\ntop_k")
    with pytest.raises(ConfigError, match=r"retrievers\[1\]\.mode\[1\]: Input should be 'dense', 'sparse' or"):
        load_config(write_config(tmp_path / "c.yaml", text))
    text = GOOD.replace("top_k", "  - {name: d, type: dense, model: x, trust_remote_code: maybe}\ntop_k")
    with pytest.raises(ConfigError, match=r"retrievers\[1\]\.trust_remote_code"):
        load_config(write_config(tmp_path / "c.yaml", text))


def test_cli_validate_counts_a_finite_space(tmp_path):
    path = write_config(tmp_path / "c.yaml", GOOD.replace("{low: 0.5, high: 2.0}", "[1.2, 1.5, 2.0]"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "48 questions, 60 passages" in result.output and "6 distinct pipelines" in result.output


def test_a_single_tokenizer_written_as_a_mapping_is_one_choice(tmp_path):
    config, _ = load_config(write_config(tmp_path / "c.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers: [{name: bm25, type: bm25, tokenizer: {type: char_ngram, n: 2}}]
"""))
    (tokenizer,) = config.retrievers[0].tokenizer
    assert (tokenizer.type, tokenizer.n) == ("char_ngram", 2)


def test_a_hybrid_fused_by_rrf_only_leaves_its_weight_out_of_the_grid(tmp_path):
    from ragopt.search.space import enumerate_space

    config, _ = load_config(write_config(tmp_path / "c.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: whitespace}
  - {name: cbm, type: bm25, tokenizer: {type: char_ngram, n: 2}}
  - {name: hybrid, type: hybrid, retrievers: [bm25, cbm], fusion: rrf, rrf_k: [10, 60]}
top_k: [1, 3]
study: {sampler: grid}
"""))  # the default weight, a range with no step, is never read by rrf
    assert config.finite and len(enumerate_space(config)) == (1 + 1 + 2) * 2
