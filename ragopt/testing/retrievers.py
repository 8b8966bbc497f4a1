"""The contract every retriever type passes. A test module subclasses RetrieverContract and
provides a `case` fixture:

    class TestBM25(RetrieverContract):
        @pytest.fixture
        def case(self, ko_mini):
            qa, corpus = ko_mini
            return RetrieverCase(BM25Spec(tokenizer=KiwiTokenizer()), corpus, qa.queries,
                                 unmatched=Queries(["zzqx"]), cache_kinds=("tokens",),
                                 variants=[BM25Spec(tokenizer=KiwiTokenizer(pos="content"))])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from ragopt.stages import cache as cache_module
from ragopt.stages.cache import Cache
from ragopt.data.qa import Corpus, Queries
from ragopt.stages.engine import Engine
from ragopt.stages.ranking import Ranking
from ragopt.stages.retrievers import RetrieverSpec


@dataclass
class RetrieverCase:
    """A retriever spec with the data to check it on."""

    spec: RetrieverSpec
    corpus: Corpus
    queries: Queries
    unmatched: Queries | None = None
    """Queries sharing nothing with the corpus, which must retrieve nothing (lexical retrievers)."""
    variants: list[RetrieverSpec] = field(default_factory=list)
    """Specs whose cached outputs must differ from `spec`'s (another tokenizer option, model...)."""
    cache_kinds: tuple[str, ...] = ()
    """The cache kinds its index and queries are stored under (their schema versions are bumped)."""
    depth: int = 12


def doc_ids(ranking: Ranking, corpus: Corpus) -> list[list[str]]:
    return [[corpus.doc_ids[i] for i in row if i >= 0] for row in ranking.ids]


class RetrieverContract:
    @pytest.fixture
    def case(self) -> RetrieverCase:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def shared(self, tmp_path_factory) -> Cache:
        """One cache for the tests that do not test caching: entries are keyed by all that made
        them, so sharing them only saves encoding the same texts again."""
        return Cache(tmp_path_factory.mktemp("contract-cache"))

    def _search(self, case: RetrieverCase, depth: int, cache: Cache, corpus: Corpus | None = None,
                spec: RetrieverSpec | None = None, queries: Queries | None = None) -> Ranking:
        engine = Engine(corpus or case.corpus, cache, device="cpu")
        return engine.retrieve(spec or case.spec, queries or case.queries, depth)

    def test_rankings_hold_only_retrieved_passages_best_first(self, case: RetrieverCase, shared: Cache) -> None:
        ranking = self._search(case, case.depth, shared)
        assert ranking.ids.shape == ranking.scores.shape == (len(case.queries), case.depth)
        found = ranking.ids >= 0
        assert np.all(np.isfinite(ranking.scores[found])) and np.all(ranking.scores[~found] == -np.inf)
        assert np.all(found[:, :-1] >= found[:, 1:])  # padding only after the last retrieved passage
        assert np.all(ranking.ids < len(case.corpus))
        for row in ranking.ids:
            kept = row[row >= 0]
            assert len(set(kept.tolist())) == len(kept)
        with np.errstate(invalid="ignore"):
            steps = np.diff(ranking.scores, axis=1)
        assert np.all(steps[found[:, 1:]] <= 0)

    def test_ties_are_broken_by_corpus_row(self, case: RetrieverCase, shared: Cache) -> None:
        ranking = self._search(case, len(case.corpus), shared)
        same = (ranking.scores[:, 1:] == ranking.scores[:, :-1]) & (ranking.ids[:, 1:] >= 0)
        assert np.all(ranking.ids[:, 1:][same] > ranking.ids[:, :-1][same])

    def test_copies_of_a_passage_are_ordered_by_doc_id(self, case: RetrieverCase, shared: Cache) -> None:
        """Exact copies of passages under ids that sort before and after the originals: where a
        copy and its original score alike, the lower doc id ranks first, at every depth."""
        base = case.corpus
        copies = range(0, len(base), max(1, len(base) // 6))
        corpus = Corpus(base.doc_ids + [f"{prefix}{base.doc_ids[i]}" for i in copies for prefix in ("!", "~")],
                        base.contents + [base.contents[i] for i in copies for _ in range(2)])
        deep = self._search(case, len(corpus), shared, corpus=corpus)
        same = (deep.scores[:, 1:] == deep.scores[:, :-1]) & (deep.ids[:, 1:] >= 0)
        assert np.all(deep.ids[:, 1:][same] > deep.ids[:, :-1][same])
        for depth in (1, 5, case.depth):
            np.testing.assert_array_equal(self._search(case, depth, shared, corpus=corpus).ids, deep.ids[:, :depth])

    def test_a_query_sharing_nothing_retrieves_nothing(self, case: RetrieverCase, shared: Cache) -> None:
        if case.unmatched is None:
            pytest.skip("this retriever scores every passage")
        ranking = self._search(case, case.depth, shared, queries=case.unmatched)
        assert np.all(ranking.ids == -1) and np.all(ranking.scores == -np.inf)
        if ranking.stats is not None:
            assert np.all(ranking.stats.count == 0)

    def test_a_shallow_search_is_a_prefix_of_a_deep_one(self, case: RetrieverCase, shared: Cache) -> None:
        deep = self._search(case, len(case.corpus) + 3, shared)
        for depth in (1, 3, case.depth):
            shallow = self._search(case, depth, shared)
            np.testing.assert_array_equal(shallow.ids, deep.ids[:, :depth])
            np.testing.assert_array_equal(shallow.scores, deep.scores[:, :depth])
            if deep.stats is not None:
                for name in ("count", "min", "max", "mean", "std"):
                    np.testing.assert_array_equal(getattr(shallow.stats, name), getattr(deep.stats, name))

    def test_statistics_cover_every_retrieved_passage(self, case: RetrieverCase, shared: Cache) -> None:
        whole = self._search(case, len(case.corpus), shared)
        if whole.stats is None:
            pytest.skip("a composite ranking carries no score statistics")
        found = whole.ids >= 0
        np.testing.assert_array_equal(whole.stats.count, found.sum(axis=1))
        scores = np.where(found, whole.scores.astype(np.float64), np.nan)
        some = found.any(axis=1)
        np.testing.assert_allclose(whole.stats.max[some], np.nanmax(scores[some], axis=1), rtol=1e-6)
        np.testing.assert_allclose(whole.stats.min[some], np.nanmin(scores[some], axis=1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(whole.stats.mean[some], np.nanmean(scores[some], axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(whole.stats.std[some], np.nanstd(scores[some], axis=1), rtol=1e-4, atol=1e-6)

    def test_results_do_not_depend_on_the_order_of_corpus_rows(self, case: RetrieverCase, shared: Cache) -> None:
        order = np.random.default_rng(7).permutation(len(case.corpus))
        shuffled = Corpus([case.corpus.doc_ids[i] for i in order], [case.corpus.contents[i] for i in order])
        ranking, again = self._search(case, case.depth, shared), self._search(case, case.depth, shared, corpus=shuffled)
        assert doc_ids(again, shuffled) == doc_ids(ranking, case.corpus)
        np.testing.assert_array_equal(again.scores, ranking.scores)

    def test_cached_outputs_are_reused_and_invalidated(self, case: RetrieverCase, tmp_path, monkeypatch) -> None:
        first = Cache(tmp_path)
        ranking = self._search(case, case.depth, first)
        assert {kind for kind, _ in first.misses} == set(case.cache_kinds)
        second = Cache(tmp_path)
        np.testing.assert_array_equal(self._search(case, case.depth, second).ids, ranking.ids)
        assert second.misses == []  # nothing recomputed: every expensive output came from disk
        for variant in case.variants:
            changed = Cache(tmp_path)
            self._search(case, case.depth, changed, spec=variant)
            assert changed.misses, f"{variant.describe()} reused the cached outputs of {case.spec.describe()}"
        for kind in case.cache_kinds:
            monkeypatch.setitem(cache_module.SCHEMA, kind, cache_module.SCHEMA[kind] + 1)
            bumped = Cache(tmp_path)
            np.testing.assert_array_equal(self._search(case, case.depth, bumped).ids, ranking.ids)
            assert kind in {k for k, _ in bumped.misses}
