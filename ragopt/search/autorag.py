"""AutoRAG configs as ragopt search spaces (`ragopt import-autorag`).

The retrieval part of an AutoRAG YAML becomes a ragopt config: lexical (bm25), semantic
(vectordb) and hybrid (hybrid_rrf, hybrid_cc) modules become retrievers, passage_reranker
modules rerankers, the nodes' top_k the top_k and reranker depths, and strategy.metrics the
objective. Everything ragopt does not reproduce is a Note: where it is, why, and what ragopt does
instead; the notes are printed and written as comments at the top of the new file. Both the
single `retrieval` node of earlier AutoRAG versions and the lexical / semantic / hybrid nodes of
later ones are read. Plain data: no torch.
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ragopt.search.config import _read_yaml
from ragopt.errors import ConfigError, DataError
from ragopt.files import write_text
from ragopt.scoring.metrics import METRICS

DEFAULT_EMBEDDING = "BAAI/bge-m3"
"""The local model that stands in for API embeddings: AutoRAG's own Korean GPU samples use it
(huggingface_bge_m3) where the others call OpenAI."""

RETRIEVAL_NODES = ("retrieval", "lexical_retrieval", "sparse_retrieval", "semantic_retrieval", "dense_retrieval",
                   "hybrid_retrieval")
RERANKER_NODE = "passage_reranker"
OTHER_NODES = {
    "query_expansion": "it rewrites the questions with an LLM before retrieval; ragopt retrieves with the questions "
                       "as written",
    "passage_augmenter": "it adds neighbouring passages to the retrieved ones; ragopt scores the ranking the "
                         "retriever and reranker return",
    "passage_filter": "it drops retrieved passages under a score threshold or percentile; ragopt returns top_k "
                      "passages",
    "passage_compressor": "it summarizes or compresses the passages for the generator",
    "prompt_maker": "it writes the generator's prompt",
    "generator": "it generates answers with an LLM",
}
"""AutoRAG's node types outside retrieval optimization, and what each does."""

NODE_KEYS = ("node_type", "strategy", "modules")
"""A node's own keys; every other key of a node is a parameter of each of its modules."""

MODULE_ALIASES = {
    "BM25": "bm25", "VectorDB": "vectordb", "HybridRRF": "hybrid_rrf", "HybridCC": "hybrid_cc",
    "KoReranker": "koreranker", "PassReranker": "pass_reranker", "FlagEmbeddingReranker": "flag_embedding_reranker",
    "FlagEmbeddingLLMReranker": "flag_embedding_llm_reranker", "OpenVINOReranker": "openvino_reranker",
    "SentenceTransformerReranker": "sentence_transformer_reranker", "MonoT5": "monot5", "Tart": "tart", "Upr": "upr",
    "RankGPT": "rankgpt", "ColbertReranker": "colbert_reranker", "TimeReranker": "time_reranker",
    "CohereReranker": "cohere_reranker", "JinaReranker": "jina_reranker", "VoyageAIReranker": "voyageai_reranker",
    "MixedbreadAIReranker": "mixedbreadai_reranker", "NvidiaReranker": "nvidia_reranker",
    "FlashRankReranker": "flashrank_reranker",
}
"""AutoRAG's class names for modules (autorag/support.py), which configs may use as module_type."""

TOKENIZERS: dict[str, tuple[str | None, str]] = {
    "ko_kiwi": ("kiwi", ""),
    "space": ("whitespace", ""),
    "porter_stemmer": ("whitespace", "English stop-word removal and Porter stemming, which ragopt does not do "
                                     "(Korean words pass through them unchanged)"),
    "ko_okt": ("mecab", "konlpy's Okt analyser (Java), which ragopt does not bundle"),
    "ko_kkma": ("mecab", "konlpy's Kkma analyser (Java), which ragopt does not bundle"),
    "sudachipy": (None, "the Japanese analyser SudachiPy; ragopt's analysers are Korean "
                        "(try {type: char_ngram, n: 2})"),
}
"""AutoRAG's bm25_tokenizer names: the ragopt tokenizer used, and why it differs (empty: the same).
Any other name is a Hugging Face tokenizer, as in AutoRAG."""

TOKENIZER_LABELS = {"kiwi": "Kiwi morphemes", "mecab": "MeCab-ko morphemes", "whitespace": "words"}

BGE_QUERY_INSTRUCTIONS = {
    **{f"BAAI/bge-{size}-en{v}": "Represent this question for searching relevant passages: "
       for size in ("small", "base", "large") for v in ("", "-v1.5")},
    **{f"BAAI/bge-{size}-zh{v}": "为这个句子生成表示以用于检索相关文章："
       for size in ("small", "base", "large") for v in ("", "-v1.5")},
}
"""The query instruction llama-index's HuggingFaceEmbedding (AutoRAG's loader) puts before
each query for these models; none for any other."""

EMBEDDINGS: dict[str, dict[str, Any]] = {
    "huggingface_bge_m3": {"model": "BAAI/bge-m3"},
    "huggingface_multilingual_e5_large": {"model": "intfloat/multilingual-e5-large-instruct"},
    "huggingface_baai_bge_small": {"model": "BAAI/bge-small-en-v1.5",
                                   "query_prefix": BGE_QUERY_INSTRUCTIONS["BAAI/bge-small-en-v1.5"]},
    "huggingface_cointegrated_rubert_tiny2": {"model": "cointegrated/rubert-tiny2"},
    "huggingface_all_mpnet_base_v2": {"model": "sentence-transformers/all-mpnet-base-v2", "max_length": 512},
}
"""AutoRAG's named local embedding models (autorag/embedding/base.py) as dense settings."""

API_EMBEDDINGS = {
    "openai": "OpenAI's text-embedding-ada-002", "openai_embed_3_large": "OpenAI's text-embedding-3-large",
    "openai_embed_3_small": "OpenAI's text-embedding-3-small", "openai_like": "an OpenAI-compatible embedding API",
    "ollama": "a model served by Ollama", "vllm": "a model served by vLLM",
}
"""AutoRAG's embeddings served by an API, which ragopt does not call."""

DEFAULT_VECTORDB = {"embedding_model": "openai"}
"""AutoRAG's `default` vectordb (and the one used when a config lists none): OpenAI embeddings."""

RERANKER_TYPES = {
    "koreranker": ("cross_encoder", "Dongjin-kr/ko-reranker"),
    "sentence_transformer_reranker": ("cross_encoder", "cross-encoder/ms-marco-MiniLM-L-2-v2"),
    "openvino_reranker": ("cross_encoder", "BAAI/bge-reranker-large"),
    "flag_embedding_reranker": ("flag_reranker", "BAAI/bge-reranker-large"),
    "flag_embedding_llm_reranker": ("flag_llm_reranker", "BAAI/bge-reranker-v2-gemma"),
}
"""AutoRAG's local rerankers: ragopt's type and AutoRAG's default model."""

FIXED_MAX_LENGTH = {"koreranker": 512}
"""Rerankers whose AutoRAG module truncates pairs to a fixed number of tokens."""

UNMAPPED_RERANKERS = {
    "monot5": "a T5 sequence-to-sequence reranker; ragopt's rerankers are cross-encoders, FlagReranker and "
              "FlagLLMReranker",
    "tart": "TART, an instruction-following T5 reranker, which ragopt does not run",
    "upr": "UPR scores passages by T5's likelihood of the question, which ragopt does not do",
    "colbert_reranker": "ColBERT as a reranker; ragopt has ColBERT only as a retriever (type bge_m3, mode colbert)",
    "rankgpt": "an LLM ranking the passages through an LLM API, which ragopt does not call",
    "time_reranker": "it orders passages by the time in their metadata, not by relevance",
    "flashrank_reranker": "FlashRank's ONNX models, which ragopt does not run",
    "cohere_reranker": "Cohere's rerank API, which ragopt does not call",
    "jina_reranker": "Jina's rerank API, which ragopt does not call",
    "voyageai_reranker": "Voyage AI's rerank API, which ragopt does not call",
    "mixedbreadai_reranker": "Mixedbread's rerank API, which ragopt does not call",
    "nvidia_reranker": "NVIDIA's rerank API, which ragopt does not call",
}

NORMALIZATIONS = {"mm": "min_max", "tmm": "tmm", "z": "z_score", "dbsf": "dbsf"}
"""AutoRAG's hybrid_cc normalize_method names as ragopt's fusion normalizations."""

THEORETICAL_MINIMA = {"semantic_theoretical_min_value": -1.0, "lexical_theoretical_min_value": 0.0}
"""hybrid_cc's tmm floors; ragopt's are these (cosine -1, BM25 0)."""

RRF_RANGE = (4, 80)
CC_RANGE = (0.0, 1.0)
CC_WEIGHTS = 101
"""AutoRAG's defaults for the hybrid weights it tries."""

KNOWN_PARAMS = {
    "bm25": {"bm25_tokenizer"},
    "vectordb": {"vectordb", "embedding_model", "embedding_batch"},
    "hybrid_rrf": {"weight", "weight_range", "rrf_k", "target_modules", "target_module_params"},
    "hybrid_cc": {"weight", "weight_range", "test_weight_size", "normalize_method", "target_modules",
                  "target_module_params", *THEORETICAL_MINIMA},
    "reranker": {"batch", "model_name", "model", "max_length", "use_fp16"},
}
"""Module parameters the converter reads (top_k for all); others are listed as not mapped.
embedding_batch, batch and the hybrids' target modules change no ranking ragopt computes."""


PLACEHOLDER = "path/to/"
"""How the written data paths start when --qa and --corpus are not given."""


@dataclass(frozen=True)
class Note:
    """Something of the AutoRAG config ragopt does not reproduce: where, why, and what ragopt does instead."""

    where: str
    reason: str
    instead: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f"; {self.instead}" if self.instead else "")


@dataclass(frozen=True)
class Module:
    """One module of a node: its canonical type, its parameters (the node's own included) and where it is."""

    kind: str
    params: dict[str, Any]
    node: str
    top_k: list[int]

    @property
    def where(self) -> str:
        return f"{self.node} {self.kind}"


@dataclass
class Node:
    """A node of a node line: its type, modules and strategy, and where it is (line/type)."""

    kind: str
    where: str
    modules: list[Module]
    strategy: dict[str, Any]


@dataclass
class Conversion:
    """The ragopt config (plain data), the notes, and how many configurations AutoRAG evaluates."""

    config: dict[str, Any]
    notes: list[Note]
    source: Path
    evaluations: int

    def text(self) -> str:
        """The YAML file: the notes as comments at the top, then the config."""
        body = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, default_flow_style=None, width=110)
        return "".join(f"# {line}".rstrip() + "\n" for line in self._header()) + body

    def _header(self) -> list[str]:
        lines = [f"Converted from the AutoRAG config {self.source.name} by `ragopt import-autorag`.",
                 "AutoRAG picks the best module node by node; ragopt searches whole pipelines (retriever x reranker",
                 f"x top_k) at once. n_trials is what AutoRAG evaluates in these nodes ({self.evaluations}).",
                 "The objective is the equal-weight mean of the last node's strategy.metrics, as AutoRAG's 'mean'."]
        if PLACEHOLDER in str(self.config["data"]):
            lines.append("data: set qa and corpus to your AutoRAG qa.parquet and corpus.parquet (paths relative to "
                         "this file), or convert again with --qa and --corpus.")
        lines.append(f"Not mapped ({len(self.notes)}):" if self.notes else "Everything retrieval-related is mapped.")
        return lines + [f"  - {note}" for note in self.notes]


@dataclass
class _Converter:
    """Builds the ragopt config of one AutoRAG config, collecting notes as it goes."""

    path: Path
    embedding: str
    vectordbs: dict[str, Any]
    notes: list[Note] = field(default_factory=list)

    def note(self, where: str, reason: str, instead: str = "") -> None:
        self.notes.append(Note(where, reason, instead))

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: node {where}: {problem}")

    def tokenizers(self, modules: list[Module]) -> list[Any]:
        """Every bm25 module's tokenizers as ragopt tokenizers, once each."""
        found: list[Any] = []
        for module in modules:
            for name in _values(module.params.get("bm25_tokenizer", "porter_stemmer")):
                tokenizer = self.tokenizer(module, str(name))
                if tokenizer is not None and tokenizer not in found:
                    found.append(tokenizer)
        return found

    def tokenizer(self, module: Module, name: str) -> Any:
        """The ragopt tokenizer for an AutoRAG bm25_tokenizer (None where there is none)."""
        if name not in TOKENIZERS:
            return {"type": "huggingface", "model": name}
        mapped, reason = TOKENIZERS[name]
        if reason:
            instead = f"ragopt uses {mapped} ({TOKENIZER_LABELS[mapped]}) instead" if mapped else "left out"
            self.note(f"{module.where} {name}", reason, instead)
        return mapped

    def dense(self, modules: list[Module]) -> list[dict[str, Any]]:
        """One dense entry per distinct embedding model of the vectordb modules."""
        entries: list[dict[str, Any]] = []
        taken = {"bm25"}
        for module in modules:
            for name, embedding, similarity in self.embeddings(module):
                settings = self.embedding_settings(module, name, embedding)
                if settings is None:
                    continue
                settings.update(self.similarity(module, similarity))
                if all(e["model"] != settings["model"] for e in entries):
                    entries.append({"name": _unique(_model_name(settings["model"]), taken), "type": "dense",
                                    **settings})
        return entries

    def embeddings(self, module: Module) -> list[tuple[str, Any, str | None]]:
        """(name, embedding_model, similarity_metric) of each vectordb (or embedding_model) a module names."""
        if "embedding_model" in module.params:
            return [(str(e), e, None) for e in _values(module.params["embedding_model"])]
        return [(str(name), *self.vectordb(module, str(name))) for name in _values(module.params.get("vectordb",
                                                                                                     "default"))]

    def vectordb(self, module: Module, name: str) -> tuple[Any, str | None]:
        """A vectordb's embedding model and similarity metric, as AutoRAG resolves the name."""
        if name not in self.vectordbs and name != "default" and self.vectordbs:
            raise self.fail(module.where, f"vectordb {name!r} is not in the file's vectordb: list "
                            f"({', '.join(self.vectordbs)}); add it there or use one of those")
        entry = self.vectordbs.get(name, DEFAULT_VECTORDB)
        return entry.get("embedding_model", "openai"), entry.get("similarity_metric")

    def embedding_settings(self, module: Module, name: str, embedding: Any) -> dict[str, Any] | None:
        """Dense settings for an AutoRAG embedding model, or the stand-in for an API one (None: left out)."""
        if isinstance(embedding, list):
            if len(embedding) != 1:
                raise self.fail(module.where, f"vectordb {name!r}: AutoRAG takes one embedding_model; got {embedding}")
            embedding = embedding[0]
        if isinstance(embedding, dict):
            return self.embedding_dict(module, name, embedding)
        if embedding in EMBEDDINGS:
            return dict(EMBEDDINGS[embedding])
        if embedding in API_EMBEDDINGS:
            return self.stand_in(module, name, API_EMBEDDINGS[embedding])
        return self.left_out(module, name, embedding)

    def embedding_dict(self, module: Module, name: str, embedding: dict[str, Any]) -> dict[str, Any] | None:
        """Dense settings for an embedding given as {type, model_name, ...}."""
        kind, model = embedding.get("type"), embedding.get("model_name")
        if kind == "huggingface" and model:
            return _huggingface_settings(embedding)
        if kind == "vllm" and model:
            self.note(f"{module.where} {name}", f"AutoRAG serves {model} with vLLM",
                      "ragopt runs the same weights with sentence-transformers")
            return {"model": model}
        if kind in API_EMBEDDINGS:
            return self.stand_in(module, name, f"{API_EMBEDDINGS[kind]} ({model})")
        return self.left_out(module, name, kind)

    def left_out(self, module: Module, name: str, embedding: Any) -> None:
        """The note for an embedding ragopt has no counterpart of: AutoRAG's mock, or a name it does not know."""
        reason = ("random vectors (AutoRAG's test stand-in)" if embedding == "mock" else
                  f"embedding {embedding!r} is not one of AutoRAG's embedding models")
        self.note(f"{module.where} {name}", reason, "left out")

    def stand_in(self, module: Module, name: str, what: str) -> dict[str, Any]:
        """The local model that replaces an API embedding, with its note."""
        self.note(f"{module.where} {name}", f"{what} is an API, which ragopt does not call",
                  f"ragopt uses the local model {self.embedding} instead (--embedding)")
        return {"model": self.embedding}

    def similarity(self, module: Module, metric: str | None) -> dict[str, Any]:
        """The dense entry's `normalize` for a vectordb's similarity_metric (cosine by default)."""
        if metric == "ip":
            return {"normalize": False}
        if metric == "l2":
            self.note(module.where, "similarity_metric l2: ragopt ranks by cosine or inner product",
                      "ragopt uses cosine, which orders normalized embeddings as l2 does")
        return {}

    def fusion(self, module: Module) -> dict[str, Any]:
        """A hybrid module's fusion settings."""
        return self.rrf(module) if module.kind == "hybrid_rrf" else self.cc(module)

    def hybrids(self, fusions: list[tuple[Module, dict[str, Any]]], dense: list[dict[str, Any]], lexical: bool,
                depth: int) -> list[dict[str, Any]]:
        """One hybrid entry per hybrid module and semantic retriever, fusing it with BM25 (semantic first)."""
        if fusions and not (dense and lexical):
            missing = "lexical (bm25)" if dense else "semantic (vectordb)"
            for module, _ in fusions:
                self.note(module.where, f"nothing to fuse: no {missing} retriever was mapped", "left out")
            return []
        entries, taken = [], {"bm25", *(d["name"] for d in dense)}
        for module, fusion in fusions:
            for semantic in dense:
                name = _unique(module.kind if len(dense) == 1 else f"{module.kind}_{semantic['name']}", taken)
                entries.append({"name": name, "type": "hybrid", "retrievers": [semantic["name"], "bm25"], **fusion,
                                "depth": depth})
        return entries

    def rrf(self, module: Module) -> dict[str, Any]:
        """hybrid_rrf's rrf_k values: `weight` (or the older `rrf_k`), else every integer of weight_range."""
        params = module.params
        if "weight" in params or "rrf_k" in params:
            values = [int(v) for v in _values(params.get("weight", params.get("rrf_k")))]
        else:
            low, high = self.pair(module, params.get("weight_range", RRF_RANGE))
            values = {"low": int(low), "high": int(high)}
        if min(values if isinstance(values, list) else [values["low"]]) < 1:
            raise self.fail(module.where, f"rrf_k (weight) {values} must be at least 1")
        return {"fusion": "rrf", "rrf_k": values}

    def cc(self, module: Module) -> dict[str, Any]:
        """hybrid_cc's normalizations and the semantic retriever's share: AutoRAG's weight is the semantic
        module's (1.0: semantic only), and ragopt's `weight` the first retriever's, which is the semantic one."""
        params = module.params
        methods = [str(m) for m in _values(params.get("normalize_method", "mm"))]
        unknown = [m for m in methods if m not in NORMALIZATIONS]
        if unknown:
            raise self.fail(module.where, f"normalize_method {unknown} is not AutoRAG's; use mm, tmm, z or dbsf")
        self.theoretical_minima(module)
        return {"fusion": "convex", "normalization": [NORMALIZATIONS[m] for m in methods],
                "weight": self.weight(module)}

    def weight(self, module: Module) -> Any:
        """The semantic share: the values of `weight`, else weight_range's test_weight_size evenly spaced values."""
        params = module.params
        if "weight" in params:
            values = [float(v) for v in _values(params["weight"])]
            if not all(0.0 <= v <= 1.0 for v in values):
                raise self.fail(module.where, f"weight {params['weight']} must lie in [0, 1] (the semantic share)")
            return values
        low, high = self.pair(module, params.get("weight_range", CC_RANGE))
        if low < 0 or high > 1:
            raise self.fail(module.where, f"weight_range ({low}, {high}) must lie in [0, 1] (the semantic share)")
        size = int(params.get("test_weight_size", CC_WEIGHTS))
        if size < 2 or low == high:
            return [float(low)]
        return {"low": float(low), "high": float(high), "step": round((high - low) / (size - 1), 10)}

    def theoretical_minima(self, module: Module) -> None:
        """A note for each tmm floor that differs from ragopt's."""
        for key, ours in THEORETICAL_MINIMA.items():
            if key in module.params and float(module.params[key]) != ours:
                self.note(module.where, f"{key} {module.params[key]}: ragopt's tmm floors are fixed",
                          f"ragopt uses {ours} (cosine -1, BM25 0)")

    def pair(self, module: Module, value: Any) -> tuple[float, float]:
        """A (low, high) range written as AutoRAG does, "(4, 80)", or as a list."""
        if isinstance(value, str) and value.strip().startswith("("):
            value = ast.literal_eval(value.strip())
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)
                and value[0] <= value[1]):
            raise self.fail(module.where, f"weight_range must be a (low, high) pair such as (0.0, 1.0); got {value!r}")
        return value[0], value[1]

    def reranker(self, module: Module, taken: set[str]) -> list[Any]:
        """A passage_reranker module as ragopt reranker entries (one per model), `none`, or none at all."""
        if module.kind == "pass_reranker":
            return ["none"]
        if module.kind not in RERANKER_TYPES:
            reason = UNMAPPED_RERANKERS.get(module.kind, "not a passage_reranker module ragopt knows")
            self.note(module.where, reason, "left out")
            return []
        kind, default = RERANKER_TYPES[module.kind]
        if module.kind == "openvino_reranker":
            self.note(module.where, "OpenVINO runtime", "ragopt runs the same model in PyTorch (sentence-transformers)")
        models = _values(module.params.get("model_name", module.params.get("model", default)))
        return [self.reranker_entry(module, kind, str(model), _unique(module.kind, taken)) for model in models]

    def reranker_entry(self, module: Module, kind: str, model: str, name: str) -> dict[str, Any]:
        """One reranker entry: type, model and the AutoRAG settings ragopt shares."""
        params, entry = module.params, {"name": name, "type": kind, "model": model}
        max_length = FIXED_MAX_LENGTH.get(module.kind, params.get("max_length"))
        if max_length is not None:
            entry["max_length"] = int(max_length)
        if "batch" in params:
            entry["batch_size"] = int(params["batch"])
        if "use_fp16" in params and kind != "cross_encoder":
            entry["use_fp16"] = bool(params["use_fp16"])
        return entry

    def unknown_params(self, module: Module, family: str) -> None:
        """A note for each parameter of a mapped module that the converter does not read."""
        for key in sorted(set(module.params) - KNOWN_PARAMS[family] - {"top_k"}):
            self.note(module.where, f"parameter {key} is not mapped", "ragopt uses its own default")

    def top_k(self, modules: list[Module], node: str) -> list[int]:
        """The top_k values of a node's modules."""
        values = sorted({k for module in modules for k in module.top_k})
        if not values:
            raise self.fail(node, "no top_k; AutoRAG needs one for this node (e.g. top_k: 10)")
        return values

    def metrics(self, node: Node) -> list[str]:
        """A node's strategy.metrics as ragopt metric names; the others get a note."""
        names = [m.get("metric_name") if isinstance(m, dict) else m for m in _values(node.strategy.get("metrics", []))]
        mapped = [_metric(n) for n in names if _metric(n)]
        for name in names:
            if not _metric(name):
                self.note(node.where, f"metric {name} is not a ranking metric ragopt computes", "left out")
        if not mapped:
            raise self.fail(node.where, f"strategy.metrics {names} has no retrieval metric ragopt computes; use "
                            f"{', '.join('retrieval_' + m for m in METRICS if m != 'hit')}")
        return mapped

    def strategy(self, node: Node) -> None:
        """Notes for the strategy settings ragopt does not share: speed_threshold and rank strategies."""
        threshold = node.strategy.get("speed_threshold")
        if threshold is not None:
            self.note(node.where, f"strategy.speed_threshold {threshold}: AutoRAG drops this node's modules slower "
                      "than that many seconds per question", "ragopt measures each whole pipeline's seconds per "
                      "question (set study.latency_budget to keep a limit)")
        how = node.strategy.get("strategy", "mean")
        if how != "mean":
            self.note(node.where, f"strategy.strategy {how}: it ranks a module against the node's other candidates",
                      "ragopt scores each pipeline on its own, by the mean of the metrics")


def _huggingface_settings(embedding: dict[str, Any]) -> dict[str, Any]:
    """Dense settings of a llama-index HuggingFaceEmbedding, its query and text instructions included."""
    model = embedding["model_name"]
    settings: dict[str, Any] = {"model": model}
    instruction = embedding.get("query_instruction", BGE_QUERY_INSTRUCTIONS.get(model))
    if instruction:
        settings["query_prefix"] = instruction.rstrip() + " "
    if embedding.get("text_instruction"):
        settings["passage_prefix"] = embedding["text_instruction"].rstrip() + " "
    for key in ("max_length", "normalize", "trust_remote_code"):
        if key in embedding:
            settings[key] = embedding[key]
    return settings


def _metric(name: Any) -> str:
    """ragopt's name of an AutoRAG retrieval metric (retrieval_f1 -> f1); empty for any other metric."""
    metric = str(name).removeprefix("retrieval_")
    return metric if str(name).startswith("retrieval_") and metric in METRICS else ""


def _values(value: Any) -> list[Any]:
    """A parameter's values: AutoRAG tries every item of a list, and a single value is one."""
    return list(value) if isinstance(value, list) else [value]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _model_name(model: str) -> str:
    """An entry name for a model: its hub name, folder name or package, in letters, digits and underscores."""
    part = model.removeprefix("pkg:").split("/")[0] if model.startswith("pkg:") else model.rstrip("/").split("/")[-1]
    return "".join(c if c.isalnum() else "_" for c in part.lower()).strip("_") or "dense"


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or name_2, name_3, ... when it is taken; the result is taken from then on."""
    unique = next(n for n in (name, *(f"{name}_{i}" for i in range(2, len(taken) + 3))) if n not in taken)
    taken.add(unique)
    return unique


def _read(path: Path) -> dict[str, Any]:
    """The AutoRAG YAML as data (safe loader, no repeated keys), with `node_lines`."""
    raw, _ = _read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("node_lines"), list):
        raise ConfigError(f"{path}: not an AutoRAG config: expected a mapping with node_lines: [{{node_line_name, "
                          "nodes: [...]}}, ...]")
    return raw


def _nodes(path: Path, raw: dict[str, Any]) -> list[Node]:
    """Every node of every node line, its modules' parameters merged with the node's own."""
    nodes = []
    for i, line in enumerate(raw["node_lines"]):
        line_name = line.get("node_line_name", f"node_lines[{i}]") if isinstance(line, dict) else f"node_lines[{i}]"
        for j, node in enumerate(line.get("nodes", []) if isinstance(line, dict) else []):
            where = f"{line_name}/{node.get('node_type', f'nodes[{j}]') if isinstance(node, dict) else f'nodes[{j}]'}"
            if not isinstance(node, dict) or "node_type" not in node or not isinstance(node.get("modules"), list):
                raise ConfigError(f"{path}: node {where}: a node needs node_type and a list of modules")
            nodes.append(Node(node["node_type"], where, _modules(path, node, where), node.get("strategy") or {}))
    return nodes


def _modules(path: Path, node: dict[str, Any], where: str) -> list[Module]:
    """A node's modules, each with the node's parameters (top_k, ...) under its own."""
    shared = {k: v for k, v in node.items() if k not in NODE_KEYS}
    modules = []
    for module in node["modules"]:
        if not isinstance(module, dict) or "module_type" not in module:
            raise ConfigError(f"{path}: node {where}: every module needs a module_type; got {module!r}")
        params = {**shared, **{k: v for k, v in module.items() if k != "module_type"}}
        kind = MODULE_ALIASES.get(module["module_type"], module["module_type"])
        modules.append(Module(kind, params, where, _top_k(path, params.get("top_k"), where)))
    return modules


def _top_k(path: Path, value: Any, where: str) -> list[int]:
    """A module's top_k values (none when it has none)."""
    values = [] if value is None else _values(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{path}: node {where}: top_k must be a positive integer or a list of them; got {value!r}")
    return values


def _combinations(module: Module) -> int:
    """How many configurations AutoRAG makes of a module: every combination of its list parameters
    (top_k included); a hybrid's weights are counted by _weights_tried."""
    return math.prod(len(v) for k, v in module.params.items()
                     if isinstance(v, list) and k not in ("weight", "weight_range", "rrf_k"))


def _weights_tried(fusion: dict[str, Any]) -> int:
    """How many weights (rrf_k or convex weights) a hybrid tries: a list's length or a range's grid."""
    value = fusion["rrf_k"] if fusion["fusion"] == "rrf" else fusion["weight"]
    if isinstance(value, list):
        return len(value)
    return int(math.floor((value["high"] - value["low"]) / value.get("step", 1) + 1e-9)) + 1


def _data(qa: Path | None, corpus: Path | None, output: Path) -> dict[str, str]:
    """data: the given files relative to the written config's folder, or placeholders."""
    data = {}
    for key, given in (("qa", qa), ("corpus", corpus)):
        if given is not None and not given.is_file():
            raise DataError(f"--{key} {given}: no such file; give AutoRAG's {key}.parquet (or a .jsonl / .csv)")
        data[key] = (os.path.relpath(given.resolve(), output.resolve().parent) if given is not None
                     else f"{PLACEHOLDER}{key}.parquet")
    return data


def convert_file(path: Path, output: Path, qa: Path | None = None, corpus: Path | None = None,
                 embedding: str | None = None) -> Conversion:
    """The ragopt config of an AutoRAG config file, for writing at `output`; `embedding` stands in
    for API embeddings (DEFAULT_EMBEDDING when None)."""
    raw = _read(path)
    vectordbs = {str(v.get("name")): v for v in raw.get("vectordb") or [] if isinstance(v, dict)}
    converter = _Converter(path, embedding or DEFAULT_EMBEDDING, vectordbs)
    nodes = _nodes(path, raw)
    config, evaluations = _space(converter, nodes)
    config = {"data": _data(qa, corpus, output), **config}
    return Conversion(config, _in_node_order(converter.notes, nodes), path, evaluations)


def _in_node_order(notes: list[Note], nodes: list[Node]) -> list[Note]:
    """The notes in the order of the nodes they are about (the first one named)."""
    def first(note: Note) -> int:
        return next(i for i, node in enumerate(nodes) if note.where == node.where
                    or note.where.startswith((node.where + " ", node.where + ",")))

    return sorted(notes, key=first)


def _space(converter: _Converter, nodes: list[Node]) -> tuple[dict[str, Any], int]:
    """retrievers, rerankers, top_k, metrics, optimize and study from the nodes; and how many
    configurations AutoRAG evaluates in them."""
    retrieval, reranking = _mapped_nodes(converter, nodes)
    modules = [m for node in retrieval for m in node.modules]
    candidates = sorted({k for node in retrieval for k in converter.top_k(node.modules, node.where)})
    final = converter.top_k(reranking.modules, reranking.where) if reranking else candidates
    retrievers, count = _retrievers(converter, modules, max(candidates + final))
    rerankers = _rerankers(converter, reranking, candidates) if reranking else ["none"]
    count += sum(_combinations(m) for m in reranking.modules) if reranking else 0
    mapped = retrieval + ([reranking] if reranking else [])
    metrics = [converter.metrics(node) for node in mapped]
    for node in mapped:
        converter.strategy(node)
    _metric_note(converter, mapped, metrics)
    return {"retrievers": retrievers, "rerankers": rerankers, "top_k": final,
            "metrics": [m for m in METRICS if any(m in names for names in metrics)],
            "optimize": {m: 1.0 for m in metrics[-1]},
            "study": {"sampler": "tpe", "n_trials": count, "seed": 0}}, count


def _mapped_nodes(converter: _Converter, nodes: list[Node]) -> tuple[list[Node], Node | None]:
    """The retrieval nodes and the (first) passage_reranker node; a note for every other node."""
    retrieval = [n for n in nodes if n.kind in RETRIEVAL_NODES]
    rerankers = [n for n in nodes if n.kind == RERANKER_NODE]
    for node in nodes:
        if node.kind not in RETRIEVAL_NODES and node.kind != RERANKER_NODE:
            converter.note(node.where, "not part of retrieval optimization: " + OTHER_NODES.get(
                node.kind, "not an AutoRAG node type ragopt knows"))
    for extra in rerankers[1:]:
        converter.note(extra.where, "a second passage_reranker node: ragopt's pipeline reranks once", "left out")
    if not retrieval:
        raise ConfigError(f"{converter.path}: no retrieval node ({', '.join(RETRIEVAL_NODES)}) in node_lines; "
                          "ragopt converts the retrieval part of an AutoRAG config")
    return retrieval, rerankers[0] if rerankers else None


def _retrievers(converter: _Converter, modules: list[Module], depth: int) -> tuple[list[dict[str, Any]], int]:
    """The retriever entries of the retrieval modules, and how many configurations AutoRAG makes of them."""
    by_kind: dict[str, list[Module]] = {}
    for module in modules:
        if module.kind not in ("bm25", "vectordb", "hybrid_rrf", "hybrid_cc"):
            converter.note(module.where, "not a retrieval module ragopt knows (bm25, vectordb, hybrid_rrf, hybrid_cc)",
                           "left out")
            continue
        converter.unknown_params(module, module.kind)
        by_kind.setdefault(module.kind, []).append(module)
    tokenizers = converter.tokenizers(by_kind.get("bm25", []))
    lexical = [{"name": "bm25", "type": "bm25", "tokenizer": tokenizers, "method": "robertson", "k1": 1.5,
                "b": 0.75}] if tokenizers else []
    dense = converter.dense(by_kind.get("vectordb", []))
    if not lexical and not dense:
        raise ConfigError(f"{converter.path}: no retrieval module maps to a ragopt retriever:\n  "
                          + "\n  ".join(map(str, converter.notes)) + "\nadd a bm25 module or a vectordb with a "
                          "local embedding model")
    fusions = [(m, converter.fusion(m)) for m in by_kind.get("hybrid_rrf", []) + by_kind.get("hybrid_cc", [])]
    hybrids = converter.hybrids(fusions, dense, bool(lexical), depth)
    count = sum(_combinations(m) for kind in ("bm25", "vectordb") for m in by_kind.get(kind, []))
    return lexical + dense + hybrids, count + sum(_combinations(m) * _weights_tried(f) for m, f in fusions)


def _rerankers(converter: _Converter, node: Node, candidates: list[int]) -> list[Any]:
    """The reranker choices of a passage_reranker node; each reorders the retrieval nodes' top_k candidates."""
    taken = {"none"}
    entries: list[Any] = []
    for module in node.modules:
        if module.kind in RERANKER_TYPES:
            converter.unknown_params(module, "reranker")
        entries += [e if e == "none" else {**e, "depth": _one_or_all(candidates)}
                    for e in converter.reranker(module, taken)]
    if not entries:
        converter.note(node.where, "none of its modules maps to a ragopt reranker", "ragopt does not rerank")
    return _distinct(entries) or ["none"]


def _one_or_all(values: list[int]) -> int | list[int]:
    """A searchable setting written plainly: one value alone, several as a list."""
    return values[0] if len(values) == 1 else values


def _distinct(entries: list[Any]) -> list[Any]:
    """The entries without repeats (`none` once)."""
    kept: list[Any] = []
    for entry in entries:
        if entry not in kept:
            kept.append(entry)
    return kept


def _metric_note(converter: _Converter, nodes: list[Node], metrics: list[list[str]]) -> None:
    """A note when earlier nodes judge by other metrics than the last one, whose ragopt optimizes."""
    others = [node.where for node, names in zip(nodes, metrics) if names != metrics[-1]]
    if others:
        converter.note(nodes[-1].where, f"{', '.join(others)} pick their modules by other strategy.metrics than this "
                       "node's, one node after another", f"ragopt optimizes whole pipelines by this node's "
                       f"({', '.join(metrics[-1])}) and reports the others")


def write(conversion: Conversion, output: Path) -> None:
    """Write the converted config with its notes as comments."""
    write_text(output, conversion.text())
