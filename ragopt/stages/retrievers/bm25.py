"""BM25 whose k1, b and variant can change every trial at the cost of a sparse product.

The corpus is tokenized once per tokenizer and the tokens cached on disk; their term-frequency
matrix (term-major, in tiles of passages), built in a fraction of the tokenizing time, is the
index. A trial weights that matrix with bm25s's own scoring
functions (the formulas bm25s.BM25 uses, which the tests check score for score) instead of
rebuilding a bm25s index per (k1, b). A passage is retrieved when it shares at least one term
with the query, as in Lucene; the others never appear in a ranking, whatever their score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import field_validator

from ragopt.stages.cache import Memo, entry_key
from ragopt.data.qa import Queries
from ragopt.stages.params import Chooser, bounded_floats, choices
from ragopt.stages.ranking import Ranking, blockwise
from ragopt.stages.retrievers._base import Context, Retriever, RetrieverEntry, RetrieverSpec, register
from ragopt.stages.retrievers.tokenizers import Tokenizer, token_stream

BM25Method = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]
NONOCCURRENCE_METHODS = ("bm25l", "bm25+")
NEGATIVE_IDF_METHODS = ("robertson",)
"""Robertson's idf is negative for terms in more than half of the passages, so its scores have
no lower bound of 0."""
QUERY_SETS_KEPT = 64
"""Query sets whose term matrices a BM25 index keeps (a served pipeline sees a new set per request)."""
WEIGHTS_KEPT = 2
"""Weighted term matrices (one per method, k1, b, delta) kept: a served pipeline weights once."""
ID_BATCH = 1 << 20
"""Token ids gathered in a Python list before they move into a numpy array."""
WEIGHT_SLICE = 1 << 22
"""Postings weighted at a time."""
QUERY_GROUP = 8
"""Queries scored together: each reads the postings of its terms once for all of them."""
DOC_TILE = 1 << 16
"""Passages per tile of the postings (and of the scores one group of queries adds to at a time)."""


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


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Terms as one UTF-8 buffer and each term's (start, end) in it, so that memory and cache bytes
    grow with the text (a numpy unicode array gives every term the longest one's width: 20,000
    terms and one 5,000-character token took 400 MB). Stored as two plain arrays, read without pickle."""

    text: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, terms: Iterable[str]) -> "Vocabulary":
        encoded = [term.encode() for term in terms]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.array([len(e) for e in encoded], dtype=np.int64), out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    @classmethod
    def of_arrays(cls, arrays: dict[str, np.ndarray]) -> "Vocabulary":
        return cls(arrays["terms"], arrays["term_offsets"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"terms": self.text, "term_offsets": self.offsets}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, term_id: int) -> str:
        return self.text[self.offsets[term_id]:self.offsets[term_id + 1]].tobytes().decode()

    def _encoded(self) -> list[bytes]:
        text, bounds = self.text.tobytes(), self.offsets.tolist()
        return [text[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    @cached_property
    def _ids(self) -> dict[bytes, int]:
        """Term id by the term's UTF-8 bytes, built at the first lookup."""
        return {term: i for i, term in enumerate(self._encoded())}

    def lookup(self, other: "Vocabulary") -> np.ndarray:
        """The id here of each of `other`'s terms, -1 for a term not here."""
        return np.array([self._ids.get(term, -1) for term in other._encoded()], dtype=np.int64)


def _token_arrays(tokens: Iterable[list[str]]) -> dict[str, np.ndarray]:
    """Flat int32 ids, their offsets per text and the vocabulary's arrays of a stream of token
    lists, consumed one text at a time: a corpus's tokens never exist as Python strings all at once."""
    vocab: dict[str, int] = {}
    lengths: list[int] = []
    parts: list[np.ndarray] = []
    pending: list[int] = []
    for doc in tokens:
        pending += [vocab.setdefault(t, len(vocab)) for t in doc]
        lengths.append(len(doc))
        if len(pending) >= ID_BATCH:
            parts.append(np.array(pending, dtype=np.int32))
            pending = []
    parts.append(np.array(pending, dtype=np.int32))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {"ids": np.concatenate(parts), "offsets": offsets, **Vocabulary.of(vocab).arrays()}


def tokens_of(tokenizer: Any, texts: list[str], texts_key: str, context: Context, progress: bool = False,
              keep: bool = True) -> dict[str, np.ndarray]:
    """Tokens of a text set as (vocab, flat ids, offsets), cached per tokenizer, its library and
    dictionary versions, and the texts' content; `keep=False` leaves them out of the cache's
    in-memory copy (a corpus's tokens, which its index replaces)."""
    key = entry_key("tokens", tokenizer.model_dump(), tokenizer.provenance(context.locate), texts_key)
    return context.cache.arrays("tokens", key, lambda: _token_arrays(
        token_stream(tokenizer, texts, context.locate, progress)), keep=keep)


@dataclass
class TermIndex:
    """Term frequencies of a corpus, term-major and in tiles: for each run of DOC_TILE
    consecutive passages a (vocab x passages) CSR matrix whose row t lists the passages of the
    tile holding term t (ascending) with its count; and the vocabulary. Scoring a query visits
    only its terms' postings, one tile at a time, so the scores it adds to stay in the CPU's
    cache (on 1M passages whole rows made scoring 2.5 times slower)."""

    tiles: list[sp.csr_matrix]
    vocab: Vocabulary

    @classmethod
    def build(cls, arrays: dict[str, np.ndarray]) -> "TermIndex":
        ids, offsets, vocab = arrays["ids"], arrays["offsets"], Vocabulary.of_arrays(arrays)
        n_docs, shape = len(offsets) - 1, (len(offsets) - 1, len(vocab))
        by_doc = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), ids, offsets), shape=shape)
        by_doc.sum_duplicates()
        tiles = [by_doc[first:first + DOC_TILE].T.tocsr() for first in range(0, max(1, n_docs), DOC_TILE)]
        return cls(tiles, vocab)

    @property
    def n_docs(self) -> int:
        return sum(tile.shape[1] for tile in self.tiles)

    @property
    def n_terms(self) -> int:
        return self.tiles[0].shape[0]

    @cached_property
    def doc_len(self) -> np.ndarray:
        return np.concatenate([np.bincount(tile.indices, tile.data, minlength=tile.shape[1])
                               for tile in self.tiles]).astype(np.float32)

    @cached_property
    def doc_freq(self) -> np.ndarray:
        return sum(np.diff(tile.indptr) for tile in self.tiles)

    def idf(self, method: str) -> np.ndarray:
        from bm25s.scoring import _select_idf_scorer

        scorer = _select_idf_scorer(method)
        n_docs = self.n_docs
        return np.array([scorer(df, N=n_docs) if df else 0.0 for df in self.doc_freq.tolist()], dtype=np.float32)

    def query_matrix(self, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
        """Query term counts over the corpus vocabulary; unseen terms score nothing and are dropped."""
        to_corpus = self.vocab.lookup(Vocabulary.of_arrays(arrays))
        ids, offsets = to_corpus[arrays["ids"]] if len(arrays["ids"]) else arrays["ids"], arrays["offsets"]
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        keep = ids >= 0
        shape = (len(offsets) - 1, self.n_terms)
        matrix = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (rows[keep], ids[keep])), shape=shape)
        matrix.sum_duplicates()
        return matrix

    def weights(self, method: str, k1: float, b: float, delta: float, idf: np.ndarray) -> "Weights":
        """The BM25 weight of each term in each document (tiles like the postings) and, for bm25l
        and bm25+, the score every query term adds to documents without it (bm25s's
        non-occurrence array). Computed a slice of postings at a time, so that bm25s's formulas
        never hold more than WEIGHT_SLICE values' temporaries."""
        from bm25s.scoring import _select_tfc_scorer

        tfc_fn = _select_tfc_scorer(method)
        avg_len = float(self.doc_len.mean())
        nonoccurrence = None
        if method in NONOCCURRENCE_METHODS:
            nonoccurrence = (idf * tfc_fn(tf_array=0, l_d=avg_len, l_avg=avg_len, k1=k1, b=b, delta=delta)
                             ).astype(np.float32)
        tiles, first_doc = [], 0
        for tile in self.tiles:
            values = np.empty(len(tile.data), dtype=np.float32)
            for lo in range(0, len(values), WEIGHT_SLICE):
                part = slice(lo, lo + WEIGHT_SLICE)
                terms = np.searchsorted(tile.indptr, np.arange(lo, min(lo + WEIGHT_SLICE, len(values))), "right") - 1
                weight = idf[terms] * tfc_fn(tf_array=tile.data[part], l_d=self.doc_len[first_doc + tile.indices[part]],
                                             l_avg=avg_len, k1=k1, b=b, delta=delta)
                if nonoccurrence is not None:
                    weight = weight - nonoccurrence[terms]
                values[part] = weight
            tiles.append(sp.csr_matrix((values, tile.indices, tile.indptr), shape=tile.shape))
            first_doc += tile.shape[1]
        return Weights(tiles, nonoccurrence, all(tile.data.min(initial=1.0) > 0 for tile in tiles))

    @staticmethod
    def scores(queries: sp.csr_matrix, weights: "Weights") -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores (queries x docs) of every passage, as bm25s gives them (a query term
        repeated n times counts n times, as in bm25s), and whether each passage shares a term
        with each query. Only the postings of the queries' terms are read, QUERY_GROUP queries
        and one tile at a time: their terms' weight rows times their term counts, summed in
        float32 in term order (the sums a sparse product of queries and weights gives, at a
        quarter of its cost on 100k passages: no sparse result, and the postings shared by a
        group read once)."""
        n_queries = queries.shape[0]
        scores = np.empty((n_queries, sum(tile.shape[1] for tile in weights.tiles)), dtype=np.float32)
        shares = np.empty(scores.shape, dtype=bool)
        for first in range(0, n_queries, QUERY_GROUP):
            group = queries[first:first + QUERY_GROUP]
            terms, column = np.unique(group.indices, return_inverse=True)
            counts = np.zeros((len(terms), group.shape[0]), dtype=np.float32)
            counts[column, np.repeat(np.arange(group.shape[0]), np.diff(group.indptr))] = group.data
            used = (counts > 0).astype(np.float32)
            first_doc = 0
            for tile in weights.tiles:
                rows = tile[terms]
                where = (slice(first, first + QUERY_GROUP), slice(first_doc, first_doc + tile.shape[1]))
                scores[where] = (rows.T @ counts).T
                if weights.positive:  # every shared term adds a positive weight
                    np.greater(scores[where], 0, out=shares[where])
                else:
                    presence = sp.csr_matrix((np.ones_like(rows.data), rows.indices, rows.indptr), shape=rows.shape)
                    shares[where] = (presence.T @ used).T > 0
                first_doc += tile.shape[1]
        if weights.nonoccurrence is not None:
            scores += (queries @ weights.nonoccurrence)[:, None].astype(np.float32)
        return scores, shares


@dataclass(frozen=True)
class Weights:
    """BM25 weights in the postings' tiles, bm25l's and bm25+'s non-occurrence score per term,
    and whether every weight is positive (then a passage shares a term with a query exactly
    when its summed weight is above 0)."""

    tiles: list[sp.csr_matrix]
    nonoccurrence: np.ndarray | None
    positive: bool


class BM25Retriever(Retriever):
    """BM25 over one tokenizer's view of the corpus; cheap to search with new parameters."""

    def __init__(self, spec: BM25Spec, context: Context) -> None:
        super().__init__(spec, context)
        self.tokenizer = spec.tokenizer
        self.index = TermIndex.build(tokens_of(spec.tokenizer, context.corpus.contents, context.corpus.key, context,
                                               context.progress, keep=False))
        self._idf: dict[str, np.ndarray] = {}
        self._queries: Memo[sp.csr_matrix] = Memo(QUERY_SETS_KEPT, size=lambda m: m.data.nbytes * 3)
        self._weights: Memo[Weights] = Memo(WEIGHTS_KEPT, size=lambda w: sum(t.data.nbytes for t in w.tiles))

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
            block, shares = self.index.scores(matrix[rows], weights)
            block[~shares] = -np.inf
            return block

        return blockwise(matrix.shape[0], self.index.n_docs, scores, depth)


register(BM25Config, BM25Spec, BM25Retriever)
