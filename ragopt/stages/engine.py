"""The Engine: runs pipeline specs over one corpus, for the trials and for the exported pipeline
alike, so the winner reproduces its trial's ranking exactly.

It owns the corpus, the disk cache, the model locator and the loaded models. Each expensive
thing (tokens, embeddings, reranker scores) is built once and cached; recent rankings stay in
memory, so a trial whose models are cached costs a sparse product, a fusion and a sort. Every
retriever and reranker type is reached through its registry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ragopt.stages.cache import Cache, Memo, cache_key, entry_key
from ragopt.data.qa import Corpus, Queries
from ragopt.stages.models import Locator, ModelPool, device_type, pick_device
from ragopt.provenance import versions
from ragopt.stages.ranking import Ranking
from ragopt.stages.rerankers import REGISTRY as RERANKERS
from ragopt.stages.rerankers import RerankerSpec
from ragopt.stages.rerankers._base import rerank, text_hashes
from ragopt.stages.retrievers import REGISTRY as RETRIEVERS
from ragopt.stages.retrievers import Context, Retriever, RetrieverSpec
from ragopt.stages.spec import PipelineSpec
from ragopt.stages.protocol import run_stages

RANKINGS_KEPT = 512
RANKING_BYTES = 1 << 30
"""Recent rankings kept in memory: at most this many, holding at most this many bytes."""


class Engine:
    """Evaluates retriever and pipeline specs over one corpus, reusing everything it can.

    Example:
        engine = Engine(ragopt.load_corpus("corpus.jsonl"), Cache("cache"), device="cpu")
        ranking = engine.run(spec, Queries(["질문"]), depth=10)
    """

    def __init__(self, corpus: Corpus, cache: Cache | None = None, device: str = "auto", progress: bool = False,
                 exact_search_max: int = 1_000_000, shared: "Engine | None" = None) -> None:
        """`shared`: an engine whose cache, loaded models, model locator and device this one uses
        (see `sibling`); `cache` and `device` are then its."""
        self.corpus = corpus
        self.cache = shared.cache if shared else cache or Cache(None)
        self.device = shared.device if shared else pick_device(device)
        self.progress, self.exact_search_max = progress, exact_search_max
        self.pool = shared.pool if shared else ModelPool()
        self.locate = shared.locate if shared else Locator(
            None if self.cache.root is None else self.cache.root / "file-hashes")
        self.context = Context(corpus, self.cache, self.pool, self.locate, self.device, progress, exact_search_max,
                               self.retrieve, self.retriever)
        self._retrievers: dict[tuple[str, str], Retriever] = {}
        self._rankings: Memo[Ranking] = Memo(RANKINGS_KEPT, RANKING_BYTES, size=lambda r: r.nbytes)
        self._doc_hashes: np.ndarray | None = None
        self._latency: dict[tuple[str, ...], float] = {}

    def sibling(self, corpus: Corpus) -> "Engine":
        """An engine over another corpus (another chunking of the same documents) that shares this
        one's cache, loaded models and device: a model is loaded once for every chunking."""
        return Engine(corpus, progress=self.progress, exact_search_max=self.exact_search_max, shared=self)

    def retriever(self, spec: RetrieverSpec) -> Retriever:
        """The index that serves a spec, built on first use (one per spec's index key)."""
        key = (spec.type, spec.index_key())
        if key not in self._retrievers:
            self._retrievers[key] = RETRIEVERS[spec.type].implementation(spec, self.context)
        return self._retrievers[key]

    def retrieve(self, spec: RetrieverSpec, queries: Queries, depth: int) -> Ranking:
        """The first `depth` passages for each query."""
        return self._rankings.get((spec.key(), queries.key, depth),
                                  lambda: self.retriever(spec).search(spec, queries, depth))[0]

    def run(self, spec: PipelineSpec, queries: Queries, depth: int | None = None) -> Ranking:
        """The pipeline's query-time stages (ragopt.stages.protocol: retrieve, rerank if the spec says so)
        in order, returning `depth` ranks (default: top_k)."""
        return run_stages(self, spec, queries, depth or spec.top_k)

    def memo(self, key: tuple[str | int, ...], compute: Callable[[], Ranking]) -> Ranking:
        """A ranking kept in memory under `key` (the stages' keys, the queries' and the depth)."""
        return self._rankings.get(key, compute)[0]

    def seconds_per_query(self, spec: PipelineSpec, queries: Queries, rows: np.ndarray) -> float:
        """What answering the questions `rows` of `queries` costs per question once the models are
        loaded and the corpus indexed, with nothing query-side cached (tokens, embeddings, reranker
        scores). The retrievers are timed together on the same unseen questions (so parts of a
        hybrid that share an encoding pay it once), once per combination of cost keys (BM25's k1
        and b, a hybrid's weights do not change what a query costs); the reranker is timed per
        pair once per setting and charged for the pairs this pipeline hands it. Fusion, which
        costs microseconds, is not counted."""
        texts = [queries.texts[i] for i in rows]
        leaves = spec.retriever.components() or [spec.retriever]

        def search(n: int) -> int:
            unseen = Queries.unseen(texts[:n])
            for leaf in leaves:
                self.retriever(leaf).search(leaf, unseen, spec.top_k)
            return n

        key = ("retrieve", *sorted(f"{leaf.type}:{leaf.cost_key()}" for leaf in leaves))
        total = self._timed(key, len(texts), search)
        if spec.reranker is not None:
            reranker = spec.reranker
            candidates = self.retrieve(spec.retriever, queries, max(spec.top_k, reranker.depth)).rows(rows)
            pairs = (candidates.ids[:, :reranker.depth] >= 0).sum(axis=1)

            def rerank(n: int) -> int:
                self.rerank(reranker, candidates.rows(np.arange(n)), Queries.unseen(texts[:n]))
                return int(pairs[:n].sum())

            total += self._timed(("rerank", reranker.key()), len(texts), rerank) * pairs.mean()
        return total

    def _timed(self, key: tuple[str, ...], n: int, run: Callable[[int], int], repeats: int = 3) -> float:
        """Seconds per unit of work (questions, pairs: what run(n) returns for the first n
        questions), memoized by `key`: the fastest of up to `repeats` runs on every question with
        nothing new cached, after one on a single question that loads what is not loaded yet; a
        third run is skipped when the first two took a second or more."""
        if key not in self._latency:
            best, units = float("inf"), 1
            with self.cache.unstored():
                run(1)
                for attempt in range(repeats):
                    start = time.perf_counter()
                    units = run(n)
                    best = min(best, time.perf_counter() - start)
                    if attempt >= 1 and best >= 1.0:
                        break
            self._latency[key] = best / max(units, 1)
        return self._latency[key]

    def rerank_rows(self, spec: PipelineSpec, queries: Queries, rows: np.ndarray, depth: int) -> Ranking:
        """The reranked ranking of some queries only (rows of `queries`): a trial scored on a
        growing subset of questions pays the reranker only for the questions it reaches."""
        assert spec.reranker is not None
        candidates = self.retrieve(spec.retriever, queries, max(depth, spec.reranker.depth))
        return self.rerank(spec.reranker, candidates.rows(rows), Queries([queries.texts[i] for i in rows])).head(depth)

    def rerank(self, spec: RerankerSpec, candidates: Ranking, queries: Queries,
               passages: Sequence[str] | None = None) -> Ranking:
        """Rerank the candidates' first spec.depth passages. Their ids are corpus rows, or positions
        in `passages` (texts from outside the corpus: another retriever's nodes); scores go through
        the same score table either way, keyed by the texts."""
        scorer_class = RERANKERS[spec.type].implementation
        located = self.locate(spec.model)
        scores_key = entry_key("rerank", spec.type, located.identity, spec.score_settings(),
                               scorer_class.precision(spec, self.device), device_type(self.device),
                               versions(*scorer_class.libraries))
        model_key = cache_key(scores_key, spec.model_dump(exclude={"depth"}), self.device)
        if passages is None:
            if self._doc_hashes is None:
                self._doc_hashes = text_hashes(self.corpus.contents)
            texts, hashes = self.corpus.contents, self._doc_hashes
        else:
            texts, hashes = passages, text_hashes(passages)

        def load() -> Any:
            return self.pool.get(model_key, lambda: scorer_class(spec, located, self.device, self.pool, model_key))

        return rerank(candidates, spec.depth, queries.texts, text_hashes(queries.texts), texts, hashes, load,
                      self.cache.scores("rerank", scores_key))

    def provenance(self, models: list[str], tokenizers: list[Any]) -> dict[str, Any]:
        """What the rankings of these models and tokenizers depend on beyond their settings: each
        model's revision or content hash, each tokenizer's library and dictionary versions."""
        return {"models": {name: self.locate(name).identity for name in models},
                "tokenizers": {t.label: t.provenance(self.locate) for t in tokenizers}}
