"""The contract every reranker type's pair scorer passes. A test module subclasses
PairScorerContract and provides a `case` fixture:

    class TestCrossEncoder(PairScorerContract):
        @pytest.fixture
        def case(self, ko_mini, tiny_xlmr_reranker):
            spec = CrossEncoderSpec(model=str(tiny_xlmr_reranker), depth=4)
            reference = CrossEncoder(str(tiny_xlmr_reranker), device="cpu")
            return ScorerCase(spec, ko_mini[1], ko_mini[0].queries, lambda pairs: reference.predict(pairs))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from ragopt.stages.cache import Cache
from ragopt.data.qa import Corpus, Queries
from ragopt.stages.engine import Engine
from ragopt.stages.models import Locator, ModelPool
from ragopt.stages.rerankers import REGISTRY, PairScorer, RerankerSpec
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.tokenizers import WhitespaceTokenizer
from ragopt.stages.spec import PipelineSpec


@dataclass
class ScorerCase:
    """A reranker spec, data to rerank, and the library's own scoring of (query, passage) pairs."""

    spec: RerankerSpec
    corpus: Corpus
    queries: Queries
    reference: Callable[[list[tuple[str, str]]], np.ndarray]
    rtol: float = 1e-4
    atol: float = 1e-5

    def pairs(self, n: int = 12) -> list[tuple[str, str]]:
        texts = self.queries.texts
        return [(texts[i % len(texts)], self.corpus.contents[(7 * i) % len(self.corpus)]) for i in range(n)]


def scorer_of(spec: RerankerSpec, batch_size: int | None = None) -> PairScorer:
    """The registered pair scorer of a spec, loaded on the CPU."""
    if batch_size is not None:
        spec = spec.model_copy(update={"batch_size": batch_size})
    return REGISTRY[spec.type].implementation(spec, Locator()(spec.model), "cpu", ModelPool(), "contract")


class PairScorerContract:
    @pytest.fixture
    def case(self) -> ScorerCase:
        raise NotImplementedError

    def test_one_finite_score_per_pair_equal_to_the_library(self, case: ScorerCase) -> None:
        pairs = case.pairs()
        scores = scorer_of(case.spec).score(pairs)
        assert scores.dtype == np.float32 and scores.shape == (len(pairs),) and np.all(np.isfinite(scores))
        np.testing.assert_allclose(scores, np.asarray(case.reference(pairs), dtype=np.float32),
                                   rtol=case.rtol, atol=case.atol)

    def test_scores_do_not_depend_on_order_or_batch(self, case: ScorerCase) -> None:
        pairs = case.pairs()
        scores = scorer_of(case.spec).score(pairs)
        order = np.random.default_rng(3).permutation(len(pairs))
        again = scorer_of(case.spec, batch_size=3).score([pairs[i] for i in order])
        np.testing.assert_allclose(again, scores[order], rtol=case.rtol, atol=case.atol)

    def test_no_pairs_no_scores(self, case: ScorerCase) -> None:
        assert scorer_of(case.spec).score([]).shape == (0,)

    def test_reranking_reorders_the_head_and_keeps_the_tail(self, case: ScorerCase, tmp_path) -> None:
        bm25 = BM25Spec(tokenizer=WhitespaceTokenizer())
        depth = case.spec.depth
        engine = Engine(case.corpus, Cache(tmp_path), "cpu")
        first = engine.retrieve(bm25, case.queries, depth + 2)
        reranked = engine.run(PipelineSpec(retriever=bm25, reranker=case.spec, top_k=depth + 2), case.queries)
        for q in range(len(case.queries)):
            head = first.ids[q, :depth]
            head = head[head >= 0]
            expected = np.asarray(case.reference([(case.queries.texts[q], case.corpus.contents[d]) for d in head]))
            np.testing.assert_allclose(reranked.scores[q, :len(head)], np.sort(expected)[::-1].astype(np.float32),
                                       rtol=case.rtol, atol=case.atol)
            assert sorted(reranked.ids[q, :len(head)].tolist()) == sorted(head.tolist())
            np.testing.assert_array_equal(reranked.ids[q, depth:], first.ids[q, depth:])
        fresh = Cache(tmp_path)
        again = Engine(case.corpus, fresh, "cpu").run(PipelineSpec(retriever=bm25, reranker=case.spec,
                                                                   top_k=depth + 2), case.queries)
        np.testing.assert_array_equal(again.ids, reranked.ids)
        assert fresh.misses == []  # every score read from disk: the model was never needed

