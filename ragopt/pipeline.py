"""Running pipeline specs: the Engine that trials share, and the Pipeline a user loads.

The Engine owns one corpus, the disk cache and the loaded models. It builds each expensive thing
(tokens, embeddings, reranker scores) once and keeps recent rankings in memory, so a trial whose
models are cached costs a sparse product, a fusion and a sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragopt import fusion
from ragopt.cache import Cache, Memo, cache_key
from ragopt.data import Corpus, Queries, load_corpus
from ragopt.models import ModelPool, half_on_gpu, model_fingerprint, pick_device, torch_dtype
from ragopt.rerankers._base import PairScorer, rerank, text_hashes
from ragopt.rerankers.cross_encoder import CrossEncoderScorer
from ragopt.rerankers.flag import FlagScorer
from ragopt.retrievers._base import Ranking
from ragopt.retrievers.bge_m3 import BGEM3Retriever
from ragopt.retrievers.bm25 import BM25Retriever
from ragopt.retrievers.dense import DenseRetriever
from ragopt.spec import BGEM3Spec, BM25Spec, CrossEncoderSpec, DenseSpec, HybridSpec, PipelineSpec, RerankerSpec

RANKINGS_KEPT = 512
Component = BM25Retriever | DenseRetriever | BGEM3Retriever


class Engine:
    """Evaluates retriever and pipeline specs over one corpus, reusing everything it can."""

    def __init__(self, corpus: Corpus, cache: Cache | None = None, device: str = "auto", progress: bool = False,
                 exact_search_max: int = 1_000_000) -> None:
        self.corpus, self.progress, self.exact_search_max = corpus, progress, exact_search_max
        self.cache = cache or Cache(None)
        self.device = pick_device(device)
        self.pool = ModelPool()
        self._retrievers: dict[str, Component] = {}
        self._rankings: Memo[Ranking] = Memo(RANKINGS_KEPT)
        self._doc_hashes = None
        self._weights: dict[str, dict] = {}

    def _component(self, spec: BM25Spec | DenseSpec | BGEM3Spec) -> Component:
        """The retriever that serves a spec: one per tokenizer (BM25), per model and settings
        (dense), per model for all three BGE-M3 modes."""
        if isinstance(spec, BM25Spec):
            key = cache_key("bm25", spec.tokenizer.model_dump())
            build = lambda: BM25Retriever(spec, self.corpus, self.cache, self.progress)  # noqa: E731
        elif isinstance(spec, BGEM3Spec):
            key = spec.encoder_key()
            build = lambda: BGEM3Retriever(spec, self.corpus, self.cache, self.pool, self.device,  # noqa: E731
                                           self.progress)
        else:
            key = spec.key()
            build = lambda: DenseRetriever(spec, self.corpus, self.cache, self.pool, self.device,  # noqa: E731
                                           self.progress, self.exact_search_max)
        if key not in self._retrievers:
            self._retrievers[key] = build()
        return self._retrievers[key]

    def retrieve(self, spec: BM25Spec | DenseSpec | BGEM3Spec | HybridSpec, queries: Queries, depth: int
                 ) -> Ranking:
        """The first `depth` passages for each query."""
        return self._rankings.get((spec.key(), queries.key, depth), lambda: self._retrieve(spec, queries, depth))[0]

    def _retrieve(self, spec: BM25Spec | DenseSpec | BGEM3Spec | HybridSpec, queries: Queries, depth: int
                  ) -> Ranking:
        if not isinstance(spec, HybridSpec):
            return self._component(spec).search(spec, queries, depth)
        parts = [self.retrieve(r, queries, max(spec.depth, depth)) for r in spec.retrievers]
        n_docs = len(self.corpus)
        if spec.fusion == "rrf":
            return fusion.rrf(parts, spec.rrf_k or 60, n_docs, depth)
        mins = [self._component(r).theoretical_min(r) for r in spec.retrievers]
        return fusion.convex(parts, list(spec.weights or []), spec.normalization or "min_max", mins, n_docs, depth)

    def run(self, spec: PipelineSpec, queries: Queries, depth: int | None = None) -> Ranking:
        """Retrieve, rerank if the spec says so, and return `depth` ranks (default: top_k)."""
        depth = depth or spec.top_k
        if spec.reranker is None:
            return self.retrieve(spec.retriever, queries, depth)
        candidates = self.retrieve(spec.retriever, queries, max(depth, spec.reranker.depth))
        key = (spec.retriever.key(), spec.reranker.key(), queries.key, depth)
        return self._rankings.get(key, lambda: self._rerank(spec.reranker, candidates, queries).head(depth))[0]

    def rerank_rows(self, spec: PipelineSpec, queries: Queries, rows: np.ndarray, depth: int) -> Ranking:
        """The reranked ranking of some queries only (rows of `queries`): a trial scored on a
        growing subset of questions pays the reranker only for the questions it reaches."""
        assert spec.reranker is not None
        candidates = self.retrieve(spec.retriever, queries, max(depth, spec.reranker.depth))
        subset = Ranking(candidates.ids[rows], candidates.scores[rows])
        return self._rerank(spec.reranker, subset, Queries([queries.texts[i] for i in rows])).head(depth)

    def _rerank(self, spec: RerankerSpec, candidates: Ranking, queries: Queries) -> Ranking:
        precision = (str(torch_dtype(spec.dtype, self.device)) if isinstance(spec, CrossEncoderSpec)
                     else half_on_gpu(spec.use_fp16, self.device))
        if spec.model not in self._weights:  # once per process, like the retrievers' own fingerprints
            self._weights[spec.model] = model_fingerprint(spec.model)
        scores_key = cache_key(spec.type, self._weights[spec.model], spec.max_length, precision)
        model_key = cache_key(scores_key, spec.model_dump(exclude={"depth"}), self.device)
        if self._doc_hashes is None:
            self._doc_hashes = text_hashes(self.corpus.contents)

        def scorer() -> PairScorer:
            if isinstance(spec, CrossEncoderSpec):
                return CrossEncoderScorer(spec, self.device, self.pool, model_key)
            return FlagScorer(spec, self.device, self.pool, model_key)

        return rerank(candidates, spec.depth, queries.texts, text_hashes(queries.texts), self.corpus.contents,
                      self._doc_hashes, lambda: self.pool.get(model_key, scorer),
                      self.cache.scores("rerank", scores_key))


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    contents: str


class Pipeline:
    """A tuned retrieval pipeline over a corpus.

    Example:
        pipeline = ragopt.load_pipeline("out/best.yaml", "corpus.parquet")
        for hit in pipeline.retrieve("시중은행 전환 요건은?")[0]:
            print(hit.rank, hit.doc_id, hit.score)
    """

    def __init__(self, spec: PipelineSpec, corpus: Corpus, cache: Cache | None = None, device: str = "auto",
                 progress: bool = False) -> None:
        self.spec = spec
        self.engine = Engine(corpus, cache, device, progress)

    def retrieve(self, queries: str | list[str], k: int | None = None) -> list[list[Hit]]:
        """The top-k passages (default: the tuned k) for each query."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        ranking = self.engine.run(self.spec, Queries(texts), k or self.spec.top_k)
        corpus = self.engine.corpus
        return [[Hit(r + 1, corpus.doc_ids[i], float(s), corpus.contents[i])
                 for r, (i, s) in enumerate(zip(ids, scores)) if i >= 0]
                for ids, scores in zip(ranking.ids, ranking.scores)]


def load_pipeline(best: str | Path, corpus: str | Path | Corpus, cache_dir: str | Path | None = None,
                  device: str = "auto", progress: bool = False) -> Pipeline:
    """Load an exported best.yaml and bind it to a corpus (a file path or a Corpus). With a
    cache_dir, corpus embeddings and tokens are reused from an earlier run."""
    from ragopt.export import read_best

    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    return Pipeline(read_best(best), corpus, Cache(cache_dir) if cache_dir else None, device, progress)
