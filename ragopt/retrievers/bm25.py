"""BM25 whose k1, b and variant can change every trial at the cost of a sparse product.

The corpus is tokenized once per tokenizer and the tokens cached on disk; their term-frequency
matrix, built in milliseconds, is the index. A trial weights that matrix with bm25s's own scoring
functions (the formulas bm25s.BM25 uses, which the tests check score for score) instead of
rebuilding a bm25s index per (k1, b). A passage is retrieved when it shares at least one term
with the query, as in Lucene; the others never appear in a ranking, whatever their score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import field_validator

from ragopt.cache import Memo, entry_key
from ragopt.data import Queries
from ragopt.params import Chooser, bounded_floats, choices
from ragopt.ranking import Ranking, blockwise
from ragopt.retrievers._base import Context, Retriever, RetrieverEntry, RetrieverSpec, register
from ragopt.retrievers.tokenizers import Tokenizer, tokenize

BM25Method = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]
NONOCCURRENCE_METHODS = ("bm25l", "bm25+")
NEGATIVE_IDF_METHODS = ("robertson",)
"""Robertson's idf is negative for terms in more than half of the passages, so its scores have
no lower bound of 0."""
QUERY_SETS_KEPT = 64
"""Query sets whose term matrices a BM25 index keeps (a served pipeline sees a new set per request)."""
WEIGHTS_KEPT = 2
"""Weighted term matrices (one per method, k1, b, delta) kept: a served pipeline weights once."""


class BM25Spec(RetrieverSpec):
    """BM25 over one tokenizer's tokens with one variant and k1, b (and delta for bm25l, bm25+)."""

    type: Literal["bm25"] = "bm25"
    tokenizer: Tokenizer
    method: BM25Method = "lucene"
    k1: float = 1.5
    b: float = 0.75
    delta: float = 0.5

    def describe(self) -> str:
        return f"bm25[{self.tokenizer.label},{self.method},k1={self.k1:.3g},b={self.b:.3g}]"

    def index_key(self) -> str:
        return self.tokenizer.key()

    def cost_key(self) -> str:
        """k1, b and delta change the weights, not the work of a query."""
        return f"{self.index_key()}:{self.method}"

    def models(self) -> list[str]:
        return [self.tokenizer.model] if self.tokenizer.type == "huggingface" else []

    def tokenizers(self) -> list[Any]:
        return [self.tokenizer]


class BM25Config(RetrieverEntry):
    """BM25 over the tokens of one or more tokenizers; method, k1, b and delta are searchable."""

    type: Literal["bm25"]
    tokenizer: choices(Tokenizer)
    method: choices(BM25Method) = ["lucene"]
    k1: bounded_floats(0.0, math.inf) = [1.5]
    b: bounded_floats(0.0, 1.0) = [0.75]
    delta: bounded_floats(0.0, math.inf) = [0.5]

    @field_validator("tokenizer")
    @classmethod
    def _distinct_tokenizers(cls, value: list) -> list:
        labels = [t.label for t in value]
        if len(set(labels)) != len(labels):
            raise ValueError(f"tokenizers must differ; got {labels}")
        return value

    def suggest(self, choose: Chooser, resolve: Callable[[str], RetrieverSpec]) -> BM25Spec:
        tokenizers = {t.label: t for t in self.tokenizer}
        method = choose(f"{self.name}.method", self.method)
        return BM25Spec(tokenizer=tokenizers[choose(f"{self.name}.tokenizer", list(tokenizers))], method=method,
                        k1=choose(f"{self.name}.k1", self.k1), b=choose(f"{self.name}.b", self.b),
                        delta=choose(f"{self.name}.delta", self.delta) if method in NONOCCURRENCE_METHODS else 0.5)

    def warm_up_specs(self) -> list[RetrieverSpec]:
        return [BM25Spec(tokenizer=t) for t in self.tokenizer]

    def models(self) -> list[str]:
        return [t.model for t in self.tokenizer if t.type == "huggingface"]

    def tokenizers(self) -> list[Any]:
        return list(self.tokenizer)

    def localized(self, local: Callable[[str], str]) -> "BM25Config":
        return self.model_copy(update={"tokenizer": [t.model_copy(update={"model": local(t.model)})
                                                     if t.type == "huggingface" else t for t in self.tokenizer]})


def _token_arrays(tokens: list[list[str]]) -> dict[str, np.ndarray]:
    vocab: dict[str, int] = {}
    flat = np.fromiter((vocab.setdefault(t, len(vocab)) for doc in tokens for t in doc), dtype=np.int64)
    offsets = np.cumsum([0] + [len(doc) for doc in tokens], dtype=np.int64)
    return {"vocab": np.array(list(vocab), dtype=str), "ids": flat, "offsets": offsets}


def tokens_of(tokenizer: Any, texts: list[str], texts_key: str, context: Context, progress: bool = False
              ) -> dict[str, np.ndarray]:
    """Tokens of a text set as (vocab, flat ids, offsets), cached per tokenizer, its library and
    dictionary versions, and the texts' content."""
    key = entry_key("tokens", tokenizer.model_dump(), tokenizer.provenance(context.locate), texts_key)
    return context.cache.arrays("tokens", key, lambda: _token_arrays(
        tokenize(tokenizer, texts, context.locate, progress)))


@dataclass
class TermIndex:
    """Term frequencies of a corpus: a (docs x vocab) CSR matrix and the vocabulary."""

    tf: sp.csr_matrix
    vocab: dict[str, int]

    @classmethod
    def build(cls, arrays: dict[str, np.ndarray]) -> "TermIndex":
        ids, offsets = arrays["ids"], arrays["offsets"]
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        shape = (len(offsets) - 1, len(arrays["vocab"]))
        tf = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), (rows, ids)), shape=shape)
        tf.sum_duplicates()
        return cls(tf, {t: i for i, t in enumerate(arrays["vocab"].tolist())})

    @cached_property
    def doc_len(self) -> np.ndarray:
        return np.asarray(self.tf.sum(axis=1)).ravel()

    @cached_property
    def doc_freq(self) -> np.ndarray:
        return np.bincount(self.tf.indices, minlength=self.tf.shape[1])

    @cached_property
    def presence(self) -> sp.csr_matrix:
        """1 where a passage has a term: which passages a query retrieves."""
        return sp.csr_matrix((np.ones_like(self.tf.data), self.tf.indices, self.tf.indptr), shape=self.tf.shape)

    def idf(self, method: str) -> np.ndarray:
        from bm25s.scoring import _select_idf_scorer

        scorer = _select_idf_scorer(method)
        n_docs = self.tf.shape[0]
        return np.array([scorer(df, N=n_docs) if df else 0.0 for df in self.doc_freq.tolist()], dtype=np.float32)

    def query_matrix(self, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
        """Query term counts over the corpus vocabulary; unseen terms score nothing and are dropped."""
        to_corpus = np.array([self.vocab.get(t, -1) for t in arrays["vocab"].tolist()], dtype=np.int64)
        ids, offsets = to_corpus[arrays["ids"]] if len(arrays["ids"]) else arrays["ids"], arrays["offsets"]
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        keep = ids >= 0
        shape = (len(offsets) - 1, self.tf.shape[1])
        matrix = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (rows[keep], ids[keep])), shape=shape)
        matrix.sum_duplicates()
        return matrix

    def weights(self, method: str, k1: float, b: float, delta: float, idf: np.ndarray
                ) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """The BM25 weight of each term in each document (docs x vocab) and, for bm25l and bm25+,
        the score every query term adds to documents without it (bm25s's non-occurrence array)."""
        from bm25s.scoring import _select_tfc_scorer

        tfc_fn = _select_tfc_scorer(method)
        avg_len = float(self.doc_len.mean())
        row_len = np.repeat(self.doc_len, np.diff(self.tf.indptr))
        values = idf[self.tf.indices] * tfc_fn(tf_array=self.tf.data, l_d=row_len, l_avg=avg_len, k1=k1, b=b,
                                                delta=delta)
        nonoccurrence = None
        if method in NONOCCURRENCE_METHODS:
            nonoccurrence = (idf * tfc_fn(tf_array=0, l_d=avg_len, l_avg=avg_len, k1=k1, b=b, delta=delta)
                             ).astype(np.float32)
            values = values - nonoccurrence[self.tf.indices]
        weighted = sp.csr_matrix((values.astype(np.float32), self.tf.indices, self.tf.indptr), shape=self.tf.shape)
        return weighted, nonoccurrence

    @staticmethod
    def scores(queries: sp.csr_matrix, weights: tuple[sp.csr_matrix, np.ndarray | None]) -> np.ndarray:
        """BM25 scores (queries x docs) of every passage, as bm25s gives them; a query term
        repeated n times counts n times, as in bm25s."""
        weighted, nonoccurrence = weights
        scores = np.asarray((queries @ weighted.T).todense(), dtype=np.float32)
        if nonoccurrence is not None:
            scores += (queries @ nonoccurrence)[:, None].astype(np.float32)
        return scores

    def retrieved(self, queries: sp.csr_matrix) -> np.ndarray:
        """Whether each passage shares a term with each query (queries x docs)."""
        return (queries @ self.presence.T).toarray() > 0


class BM25Retriever(Retriever):
    """BM25 over one tokenizer's view of the corpus; cheap to search with new parameters."""

    def __init__(self, spec: BM25Spec, context: Context) -> None:
        super().__init__(spec, context)
        self.tokenizer = spec.tokenizer
        self.index = TermIndex.build(tokens_of(spec.tokenizer, context.corpus.contents, context.corpus.key, context,
                                               context.progress))
        self._idf: dict[str, np.ndarray] = {}
        self._queries: Memo[sp.csr_matrix] = Memo(QUERY_SETS_KEPT, size=lambda m: m.data.nbytes * 3)
        self._weights: Memo[tuple[sp.csr_matrix, np.ndarray | None]] = Memo(
            WEIGHTS_KEPT, size=lambda w: w[0].data.nbytes * 2 + w[0].indptr.nbytes)

    def theoretical_min(self, spec: BM25Spec) -> float | None:
        return None if spec.method in NEGATIVE_IDF_METHODS else 0.0

    def search(self, spec: BM25Spec, queries: Queries, depth: int) -> Ranking:
        matrix = self._queries.get(queries.key, lambda: self.index.query_matrix(
            tokens_of(self.tokenizer, queries.texts, queries.key, self.context)))[0]
        if spec.method not in self._idf:
            self._idf[spec.method] = self.index.idf(spec.method)
        weights = self._weights.get((spec.method, spec.k1, spec.b, spec.delta), lambda: self.index.weights(
            spec.method, spec.k1, spec.b, spec.delta, self._idf[spec.method]))[0]

        def scores(rows: slice) -> np.ndarray:
            block = self.index.scores(matrix[rows], weights)
            block[~self.index.retrieved(matrix[rows])] = -np.inf
            return block

        return blockwise(matrix.shape[0], self.index.tf.shape[0], scores, depth)


register(BM25Config, BM25Spec, BM25Retriever)
