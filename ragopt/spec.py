"""Concrete pipeline specifications: one value per setting, nothing left to search.

A PipelineSpec is what a trial evaluates and what best.yaml stores. Its JSON form is the cache
key of everything derived from it, so two equal specs always share their results.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """A model that rejects unknown keys with the list of allowed ones (pydantic's own message
    does not say what would have been right)."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
        return data

    def key(self) -> str:
        """A short content hash of this spec, stable across runs and machines."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


CONTENT_POS = ("NNG", "NNP", "NNB", "NR", "NP", "VV", "VA", "MAG", "XR", "SL", "SH", "SN")
"""Content-bearing Sejong POS tags (nouns, verbs, adjectives, adverbs, roots, foreign words,
hanja, numbers), shared by Kiwi and MeCab-ko; particles, endings and affixes are dropped."""


class _MorphemeTokenizer(StrictModel):
    """Morphemes of a Korean analyser; pos='content' keeps only CONTENT_POS."""

    type: str
    pos: Literal["all", "content"] = "all"

    @property
    def label(self) -> str:
        return self.type if self.pos == "all" else f"{self.type}:content"


class KiwiTokenizer(_MorphemeTokenizer):
    """Kiwi morphemes (kiwipiepy, multi-threaded)."""

    type: Literal["kiwi"] = "kiwi"


class MecabTokenizer(_MorphemeTokenizer):
    """MeCab-ko morphemes (python-mecab-ko, which ships its dictionary)."""

    type: Literal["mecab"] = "mecab"


class WhitespaceTokenizer(StrictModel):
    """Whitespace-separated words, punctuation stripped; one-character words are kept."""

    type: Literal["whitespace"] = "whitespace"
    lowercase: bool = True

    @property
    def label(self) -> str:
        return "whitespace" if self.lowercase else "whitespace:cased"


class CharNgramTokenizer(StrictModel):
    """Character n-grams inside each word (a word shorter than n is one token)."""

    type: Literal["char_ngram"] = "char_ngram"
    n: int = Field(2, ge=1, le=6)

    @property
    def label(self) -> str:
        return f"char_ngram:{self.n}"


class HuggingFaceTokenizer(StrictModel):
    """The subword tokenizer of a Hugging Face model (hub id or local path)."""

    type: Literal["huggingface"] = "huggingface"
    model: str

    @property
    def label(self) -> str:
        return f"huggingface:{self.model}"


def _tokenizer_shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


Tokenizer = Annotated[
    Union[KiwiTokenizer, MecabTokenizer, WhitespaceTokenizer, CharNgramTokenizer, HuggingFaceTokenizer],
    Field(discriminator="type"),
    BeforeValidator(_tokenizer_shorthand),
]

BM25Method = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]
Normalization = Literal["min_max", "tmm", "z_score", "dbsf"]


class BM25Spec(StrictModel):
    type: Literal["bm25"] = "bm25"
    tokenizer: Tokenizer
    method: BM25Method = "lucene"
    k1: float = 1.5
    b: float = 0.75
    delta: float = 0.5


Precision = Literal["auto", "float32", "float16", "bfloat16"]
"""Weights' precision for sentence-transformers models; auto is bfloat16 on CUDA (float16 where
the GPU lacks bfloat16), float16 on Apple's mps and float32 on the CPU."""


class DenseSpec(StrictModel):
    """A sentence-transformers bi-encoder. Prefixes are prepended to the text (KoE5 and E5 need
    'query: ' / 'passage: '); prompt names select prompts stored with the model instead. A
    different `query_model` encodes the queries (asymmetric encoders with two towers)."""

    type: Literal["dense"] = "dense"
    model: str
    query_model: str | None = None
    query_prefix: str = ""
    passage_prefix: str = ""
    query_prompt_name: str | None = None
    passage_prompt_name: str | None = None
    max_length: int | None = Field(None, ge=1)
    normalize: bool = True
    batch_size: int = Field(32, ge=1)
    dtype: Precision = "auto"
    trust_remote_code: bool = False


BGEM3Mode = Literal["dense", "sparse", "colbert"]


class BGEM3Spec(StrictModel):
    """BGE-M3 through FlagEmbedding's BGEM3FlagModel: one encoding pass yields the dense vector,
    the sparse lexical weights and the ColBERT token vectors; `mode` picks which one ranks."""

    type: Literal["bge_m3"] = "bge_m3"
    model: str = "BAAI/bge-m3"
    mode: BGEM3Mode = "dense"
    max_length: int = Field(8192, ge=1)
    query_max_length: int = Field(512, ge=1)
    batch_size: int = Field(32, ge=1)
    use_fp16: bool | None = None
    trust_remote_code: bool = False

    def encoder_key(self) -> str:
        """What the encoding depends on: everything but the mode, so all modes share one pass."""
        return self.model_copy(update={"mode": "dense"}).key()


class HybridSpec(StrictModel):
    """Fusion of the rankings of two or more retrievers, each taken to `depth` candidates."""

    type: Literal["hybrid"] = "hybrid"
    retrievers: list[Annotated[Union[BM25Spec, DenseSpec, BGEM3Spec], Field(discriminator="type")]]
    fusion: Literal["rrf", "convex"]
    rrf_k: int | None = None
    normalization: Normalization | None = None
    weights: list[float] | None = None
    depth: int = Field(100, ge=1)


RetrieverSpec = Annotated[Union[BM25Spec, DenseSpec, BGEM3Spec, HybridSpec], Field(discriminator="type")]


class _RerankerSpec(StrictModel):
    """A pair scorer that reorders the first `depth` candidates."""

    model: str
    depth: int = Field(20, ge=1)
    max_length: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    trust_remote_code: bool = False


class CrossEncoderSpec(_RerankerSpec):
    """A sentence-transformers CrossEncoder."""

    type: Literal["cross_encoder"] = "cross_encoder"
    dtype: Precision = "auto"


class FlagRerankerSpec(_RerankerSpec):
    """FlagEmbedding's FlagReranker (bge-reranker-v2-m3 and its Korean fine-tunes)."""

    type: Literal["flag_reranker"] = "flag_reranker"
    max_length: int | None = Field(512, ge=1)
    use_fp16: bool | None = None


class FlagLLMRerankerSpec(_RerankerSpec):
    """FlagEmbedding's FlagLLMReranker (bge-reranker-v2-gemma): a decoder asked whether the
    passage answers the query, scored by the logit of 'Yes'."""

    type: Literal["flag_llm_reranker"] = "flag_llm_reranker"
    max_length: int | None = Field(512, ge=1)
    batch_size: int = Field(16, ge=1)
    use_fp16: bool | None = None


RerankerSpec = Annotated[Union[CrossEncoderSpec, FlagRerankerSpec, FlagLLMRerankerSpec], Field(discriminator="type")]


class PipelineSpec(StrictModel):
    """A runnable pipeline: retrieve, optionally rerank, return top_k passages."""

    retriever: RetrieverSpec
    reranker: RerankerSpec | None = None
    top_k: int = Field(ge=1)

    def describe(self) -> str:
        """A one-line human summary for tables and progress bars."""
        text = describe_retriever(self.retriever)
        if self.reranker is not None:
            text += f" > {self.reranker.model}@{self.reranker.depth}"
        return f"{text} k={self.top_k}"


def describe_retriever(spec: BM25Spec | DenseSpec | BGEM3Spec | HybridSpec) -> str:
    if isinstance(spec, BM25Spec):
        return f"bm25[{spec.tokenizer.label},{spec.method},k1={spec.k1:.3g},b={spec.b:.3g}]"
    if isinstance(spec, DenseSpec):
        return f"dense[{spec.model}]"
    if isinstance(spec, BGEM3Spec):
        return f"bge_m3[{spec.model},{spec.mode}]"
    parts = "+".join(describe_retriever(r) for r in spec.retrievers)
    how = f"rrf(k={spec.rrf_k})" if spec.fusion == "rrf" else (
        f"cc({spec.normalization},w={','.join(f'{w:.2f}' for w in spec.weights or [])})")
    return f"{how}({parts})"
