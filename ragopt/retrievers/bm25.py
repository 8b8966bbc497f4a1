"""BM25 whose k1, b and variant can change every trial at the cost of a sparse product.

The corpus is tokenized once per tokenizer and the tokens cached on disk; their term-frequency
matrix, built in milliseconds, is the index. A trial weights that matrix with bm25s's own scoring
functions (the formulas bm25s.BM25 uses, which the tests check score for score) instead of
rebuilding a bm25s index per (k1, b).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer

from ragopt.cache import Cache, cache_key
from ragopt.data import Corpus, Queries
from ragopt.retrievers._base import Ranking, top_k
from ragopt.retrievers.tokenizers import tokenize
from ragopt.spec import BM25Spec

NONOCCURRENCE_METHODS = ("bm25l", "bm25+")
SCORE_BLOCK = 1 << 25
"""Queries are scored in blocks of at most this many (query, document) scores (128 MiB)."""


def _token_arrays(tokens: list[list[str]]) -> dict[str, np.ndarray]:
    vocab: dict[str, int] = {}
    flat = np.fromiter((vocab.setdefault(t, len(vocab)) for doc in tokens for t in doc), dtype=np.int64)
    offsets = np.cumsum([0] + [len(doc) for doc in tokens], dtype=np.int64)
    return {"vocab": np.array(list(vocab), dtype=str), "ids": flat, "offsets": offsets}


def tokens_of(spec: BM25Spec, texts: list[str], texts_key: str, cache: Cache, progress: bool = False
              ) -> dict[str, np.ndarray]:
    """Tokens of a text set as (vocab, flat ids, offsets), cached per tokenizer and content."""
    key = cache_key("tokens", spec.tokenizer.model_dump(), texts_key)
    return cache.arrays("tokens", key, lambda: _token_arrays(tokenize(spec.tokenizer, texts, progress)))


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

    def idf(self, method: str) -> np.ndarray:
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
        """BM25 scores (queries x docs); a query term repeated n times counts n times, as in bm25s."""
        weighted, nonoccurrence = weights
        scores = np.asarray((queries @ weighted.T).todense(), dtype=np.float32)
        if nonoccurrence is not None:
            scores += (queries @ nonoccurrence)[:, None].astype(np.float32)
        return scores


class BM25Retriever:
    """BM25 over one tokenizer's view of the corpus; cheap to search with new parameters."""

    def __init__(self, tokenizer_spec: BM25Spec, corpus: Corpus, cache: Cache, progress: bool = False) -> None:
        self.cache = cache
        self.tokenizer_spec = tokenizer_spec
        self.index = TermIndex.build(tokens_of(tokenizer_spec, corpus.contents, corpus.key, cache, progress))
        self._idf: dict[str, np.ndarray] = {}
        self._queries: dict[str, sp.csr_matrix] = {}

    def theoretical_min(self, spec: BM25Spec) -> float:
        """The lowest score any passage can get (for 'tmm' normalization in fusion)."""
        return 0.0

    def search(self, spec: BM25Spec, queries: Queries, depth: int) -> Ranking:
        if queries.key not in self._queries:
            self._queries[queries.key] = self.index.query_matrix(
                tokens_of(self.tokenizer_spec, queries.texts, queries.key, self.cache))
        if spec.method not in self._idf:
            self._idf[spec.method] = self.index.idf(spec.method)
        weights = self.index.weights(spec.method, spec.k1, spec.b, spec.delta, self._idf[spec.method])
        matrix = self._queries[queries.key]
        block = max(1, SCORE_BLOCK // max(1, self.index.tf.shape[0]))
        parts = [top_k(self.index.scores(matrix[i:i + block], weights), depth)
                 for i in range(0, matrix.shape[0], block)]
        return Ranking(np.concatenate([p.ids for p in parts]), np.concatenate([p.scores for p in parts]))
