"""Fusion: hand-computed scores, the missing-candidate convention, empty lists and constant
scores, invariance to the candidate depth, ranx.fuse where the conventions match, and the
config's checks of fusion settings."""

import numpy as np
import pytest

from conftest import write_config
from ragopt.search.config import ConfigError, load_config
from ragopt.stages.fusion import NORMALIZATIONS, convex, normalize, rrf
from ragopt.stages.ranking import Ranking, ScoreStats, top_k
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.hybrid import HybridSpec
from ragopt.stages.retrievers.tokenizers import WhitespaceTokenizer

A = Ranking(np.array([[0, 1, 2]]), np.array([[3.0, 2.0, 1.0]], dtype=np.float32))
B = Ranking(np.array([[2, 3, -1]]), np.array([[0.9, 0.5, -np.inf]], dtype=np.float32))


def ranking_of(scores: np.ndarray, depth: int) -> Ranking:
    """A retriever's ranking of a (queries x docs) score matrix (-inf: not retrieved), with its
    statistics over every retrieved passage."""
    head = top_k(scores, depth)
    return Ranking(head.ids, head.scores, ScoreStats.of(scores))


def test_rrf_by_hand():
    fused = rrf([A, B], k=60, n_docs=5, depth=4)
    expected = {0: 1 / 61, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 3: 1 / 62}
    assert fused.ids[0].tolist() == [2, 0, 1, 3]  # 1 and 3 tie: lower corpus row first
    np.testing.assert_allclose(fused.scores[0], [expected[d] for d in fused.ids[0]], rtol=1e-6)


def test_rrf_gives_nothing_to_passages_a_retriever_did_not_retrieve():
    """The issue's example: BM25 matches only passage 7, a dense retriever returns 9, 8, 3, 2, 1.
    Passage 1 (a corpus-order BM25 filler at rank 3 in the old code) must rank below both real top hits."""
    lexical = np.full((1, 10), -np.inf)
    lexical[0, 7] = 2.5
    dense = np.full((1, 10), -1.0)
    dense[0, [9, 8, 3, 2, 1]] = [0.9, 0.8, 0.7, 0.6, 0.5]
    bm25 = ranking_of(lexical, 5)
    assert bm25.ids[0].tolist() == [7, -1, -1, -1, -1]
    fused = rrf([bm25, ranking_of(dense, 5)], k=60, n_docs=10, depth=6)
    assert fused.ids[0].tolist() == [7, 9, 8, 3, 2, 1]  # 7 and 9 tie at 1/61: lower row first
    np.testing.assert_allclose(fused.scores[0, :2], [1 / 61, 1 / 61], rtol=1e-6)


SD = np.sqrt(0.5)  # population std of 3, 2.5, 2, 1.5, 1 (mean 2)


@pytest.mark.parametrize("method, expected, floor", [
    ("min_max", [1.0, 0.75, 0.5], 0.0),                     # over all retrieved: min 1 (passage 4), max 3
    ("tmm", [1.0, 2.5 / 3, 2 / 3], 0.0),                    # theoretical minimum 0
    ("z_score", [1 / SD, 0.5 / SD, 0.0], -1 / SD),          # floor: the lowest retrieved score's z
    ("dbsf", [(s - (2 - 3 * SD)) / (6 * SD) for s in (3.0, 2.5, 2.0)], 0.0),
])
def test_normalizations_use_every_retrieved_score(method, expected, floor):
    """A retriever retrieved passages 0..4 with scores 3, 2.5, 2, 1.5, 1; the hybrid took the
    first three, and they are normalized with the statistics of all five."""
    head = ranking_of(np.array([[3.0, 2.5, 2.0, 1.5, 1.0]]), 3)
    values, floors = normalize(head, method, 0.0)
    np.testing.assert_allclose(values[0], expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(floors, [floor], rtol=1e-6)


def test_convex_min_max_with_a_passage_missing_from_one_list():
    fused = convex([A, B], [0.7, 0.3], "min_max", [0.0, -1.0], n_docs=5, depth=5)
    # stats of the lists' own entries (no retriever stats): A 1..3, B 0.5..0.9; missing counts 0
    expected = {0: 0.7 * 1.0, 1: 0.7 * 0.5, 2: 0.7 * 0.0 + 0.3 * 1.0, 3: 0.0}
    assert fused.ids[0].tolist() == [0, 1, 2, 3, -1]
    np.testing.assert_allclose(fused.scores[0][:4], [expected[d] for d in [0, 1, 2, 3]], atol=1e-6)


def test_z_score_gives_a_missing_passage_the_lowest_z_of_its_list():
    first = ranking_of(np.array([[3.0, 2.0, 1.0, -np.inf]]), 3)
    second = ranking_of(np.array([[-np.inf, -np.inf, 4.0, 2.0]]), 2)
    fused = convex([first, second], [0.5, 0.5], "z_score", [None, None], n_docs=4, depth=4)
    z = np.sqrt(1.5)  # first: mean 2, std sqrt(2/3); second: mean 3, std 1
    expected = {0: 0.5 * z + 0.5 * -1.0, 1: 0.0 + 0.5 * -1.0, 2: 0.5 * -z + 0.5 * 1.0, 3: 0.5 * -z + 0.5 * -1.0}
    for doc, score in zip(fused.ids[0], fused.scores[0]):
        assert score == pytest.approx(expected[doc], abs=1e-6)


@pytest.mark.parametrize("method", NORMALIZATIONS)
def test_an_empty_list_adds_nothing_and_constant_scores_still_mark_what_was_retrieved(method):
    nothing = ranking_of(np.full((1, 5), -np.inf), 3)
    dense = ranking_of(np.array([[0.1, 0.5, 0.3, 0.9, 0.2]]), 3)
    alone = convex([dense], [1.0], method, [-1.0], n_docs=5, depth=3)
    with_empty = convex([dense, nothing], [0.6, 0.4], method, [-1.0, 0.0], n_docs=5, depth=3)
    np.testing.assert_array_equal(with_empty.ids, alone.ids)
    np.testing.assert_allclose(with_empty.scores, 0.6 * alone.scores, rtol=1e-6, atol=1e-7)
    constant = ranking_of(np.array([[2.0, -np.inf, 2.0, -np.inf, -np.inf]]), 3)
    values, floor = normalize(constant, method, 0.0)
    assert values[0, :2].tolist() == ([0.0, 0.0] if method == "z_score" else [1.0, 1.0])
    assert floor.tolist() == [0.0]
    fused = convex([constant, dense], [0.9, 0.1], method, [0.0, -1.0], n_docs=5, depth=5)
    if method == "z_score":  # no scale: the constant list adds nothing, the dense order stands
        assert fused.ids[0].tolist() == [3, 1, 2, 0, -1]
    else:  # the two passages the constant list retrieved come first, in the dense list's order
        assert fused.ids[0].tolist() == [2, 0, 3, 1, -1]


@pytest.mark.parametrize("fusion", ["rrf", *NORMALIZATIONS])
def test_fused_order_of_passages_in_every_list_does_not_depend_on_the_candidate_depth(fusion):
    rng = np.random.default_rng(11)
    lexical = np.where(rng.random((30, 40)) < 0.6, rng.gamma(2.0, 2.0, (30, 40)), -np.inf)
    dense = rng.normal(0.3, 0.2, (30, 40))

    def fuse(depth):
        lists = [ranking_of(lexical, depth), ranking_of(dense, depth)]
        if fusion == "rrf":
            return lists, rrf(lists, 60, 40, 2 * depth)
        return lists, convex(lists, [0.4, 0.6], fusion, [0.0, -1.0], 40, 2 * depth)

    (short_lists, short), (_, deep) = fuse(10), fuse(25)
    for q in range(30):
        everywhere = set(short_lists[0].ids[q]) & set(short_lists[1].ids[q]) - {-1}
        assert [d for d in short.ids[q] if d in everywhere] == [d for d in deep.ids[q] if d in everywhere]


def _ranx_runs(scores: np.ndarray):
    from ranx import Run

    return Run({f"q{q}": {f"d{d}": float(s) for d, s in enumerate(row) if np.isfinite(s)}
                for q, row in enumerate(scores)})


def _assert_matches_ranx(ours: Ranking, reference, n_queries: int) -> None:
    expected = reference.to_dict()
    for q in range(n_queries):
        got = {f"d{d}": float(s) for d, s in zip(ours.ids[q], ours.scores[q]) if d >= 0}
        assert set(got) == set(expected[f"q{q}"])
        for doc, score in got.items():
            assert score == pytest.approx(expected[f"q{q}"][doc], abs=1e-5)


def test_min_max_rrf_and_z_score_equal_ranx_fuse_on_random_runs():
    """ranx normalizes over each run's documents and counts a missing document as 0: the same
    conventions as ragopt's when a run holds everything its retriever retrieved (min_max, RRF), and
    for z_score when every run holds every document."""
    from ranx import fuse

    rng = np.random.default_rng(5)
    n_queries, n_docs = 15, 25
    partial = [np.where(rng.random((n_queries, n_docs)) < 0.5, rng.normal(size=(n_queries, n_docs)), -np.inf)
               for _ in range(3)]
    for rows in partial:
        rows[:, :2] = rng.normal(size=(n_queries, 2))  # at least two scores each: no constant list
    lists = [ranking_of(s, n_docs) for s in partial]
    runs = [_ranx_runs(s) for s in partial]
    weights = [0.5, 0.3, 0.2]
    _assert_matches_ranx(convex(lists, weights, "min_max", [None] * 3, n_docs, n_docs),
                         fuse(runs, norm="min-max", method="wsum", params={"weights": weights}), n_queries)
    _assert_matches_ranx(rrf(lists, 20, n_docs, n_docs), fuse(runs, method="rrf", params={"k": 20}), n_queries)
    full = [rng.normal(size=(n_queries, n_docs)) for _ in range(2)]
    _assert_matches_ranx(convex([ranking_of(s, n_docs) for s in full], [0.6, 0.4], "z_score", [None] * 2, n_docs,
                                n_docs),
                         fuse([_ranx_runs(s) for s in full], norm="zmuv", method="wsum",
                              params={"weights": [0.6, 0.4]}), n_queries)


HYBRID = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: a, type: bm25, tokenizer: whitespace}
  - {name: b, type: bm25, tokenizer: kiwi}
  - {name: h, type: hybrid, retrievers: [a, b], fusion: [rrf, convex], SETTING}
top_k: [1, 3]
"""


@pytest.mark.parametrize("setting, message", [
    ("rrf_k: 0", "rrf_k: every value must be finite and at least 1"),
    ("rrf_k: {low: 0, high: 10}", "rrf_k: every value must be finite and at least 1"),
    ("weight: [0.5, 1.5]", "weight: every value must be in [0.0, 1.0]"),
    ("weight: {low: -0.1, high: 1.0}", "weight: every value must be in [0.0, 1.0]"),
    ("weight: [.nan]", "weight: every value must be in [0.0, 1.0]"),
])
def test_fusion_settings_are_checked(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write_config(tmp_path / "c.yaml", HYBRID.replace("SETTING", setting)))
    load_config(write_config(tmp_path / "ok.yaml", HYBRID.replace("SETTING", "rrf_k: 1, weight: [0.0, 1.0]")))


def test_a_pipeline_spec_refuses_rrf_k_0_and_weights_outside_0_1():
    parts = [BM25Spec(tokenizer=WhitespaceTokenizer()), BM25Spec(tokenizer=WhitespaceTokenizer(lowercase=False))]
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        HybridSpec(retrievers=parts, fusion="rrf", rrf_k=0)
    with pytest.raises(ValueError, match="weights must lie in"):
        HybridSpec(retrievers=parts, fusion="convex", normalization="tmm", weights=[1.2, -0.2])
