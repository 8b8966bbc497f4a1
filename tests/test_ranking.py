"""Rankings: the numpy top-k and the device scan's running top-k agree on every tie (by corpus
row), rankings hold only retrieved passages, and score statistics cover the whole scan."""

import numpy as np
import pytest
import torch

from ragopt.stages import ranking as ranking_module
from ragopt.stages.ranking import ScoreStats, top_k
from ragopt.stages.retrievers import _scan


def reference(scores: np.ndarray, depth: int) -> np.ndarray:
    """Rows by score, then corpus row, the finite ones only, padded with -1."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :depth]
    kept = np.isfinite(np.take_along_axis(scores, order, axis=1))
    ids = np.where(kept, order, -1)
    return np.pad(ids, ((0, 0), (0, max(0, depth - ids.shape[1]))), constant_values=-1)


def test_top_k_orders_ties_by_corpus_row_and_pads():
    ranking = top_k(np.array([[0.5, 0.9, 0.5, 0.1]], dtype=np.float32), 6)
    assert ranking.ids[0].tolist() == [1, 0, 2, 3, -1, -1]
    assert ranking.head(2).ids.shape == (1, 2)


def test_top_k_returns_only_retrieved_passages():
    scores = np.array([[-np.inf, 2.0, -np.inf, 0.0], [-np.inf] * 4], dtype=np.float32)
    ranking = top_k(scores, 3)
    assert ranking.ids.tolist() == [[1, 3, -1], [-1, -1, -1]]
    assert ranking.scores[0, :2].tolist() == [2.0, 0.0] and np.all(ranking.scores[1] == -np.inf)


def test_shallow_rankings_are_prefixes_of_deep_ones_even_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(20, 50)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    deep = top_k(scores, 60)
    np.testing.assert_array_equal(deep.ids, reference(scores, 60))
    for depth in (1, 4, 17):
        np.testing.assert_array_equal(top_k(scores, depth).ids, deep.ids[:, :depth])


@pytest.mark.parametrize("chunk", [7, 16, 1000])
def test_the_running_top_k_breaks_ties_by_row_like_numpy(monkeypatch, chunk):
    """torch.topk leaves the order of equal scores unspecified; the scan must not."""
    rng = np.random.default_rng(chunk)
    scores = rng.integers(0, 4, size=(9, 60)).astype(np.float32)
    best = {}
    for depth in (1, 5, 23, 70):
        scan = _scan.RunningTopK(9, depth, "cpu")
        for start in range(0, 60, chunk):
            scan.add(torch.from_numpy(scores[:, start:start + chunk]), start)
        best[depth] = scan.ranking()
        np.testing.assert_array_equal(best[depth].ids, reference(scores, depth))
        np.testing.assert_array_equal(best[depth].ids, top_k(scores, depth).ids)
    for depth in (1, 5, 23):
        np.testing.assert_array_equal(best[depth].ids, best[70].ids[:, :depth])


def test_the_scan_keeps_statistics_of_every_score(monkeypatch):
    rng = np.random.default_rng(1)
    corpus, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    monkeypatch.setattr(_scan, "CORPUS_CHUNK", 7)
    ranking = _scan.exact_search(queries, corpus, 10, "cpu")
    full = queries @ corpus.T
    np.testing.assert_array_equal(ranking.ids, np.argsort(-full, axis=1)[:, :10])
    expected = ScoreStats.of(full)
    for name in ("count", "min", "max", "mean", "std"):
        np.testing.assert_allclose(getattr(ranking.stats, name), getattr(expected, name), rtol=1e-5, atol=1e-6)


def test_score_statistics_by_hand():
    stats = ScoreStats.of(np.array([[1.0, 3.0, -np.inf], [-np.inf] * 3]))
    assert stats.count.tolist() == [2, 0]
    assert (stats.min[0], stats.max[0], stats.mean[0], stats.std[0]) == (1.0, 3.0, 2.0, 1.0)
    assert np.all(np.isnan([stats.min[1], stats.max[1], stats.mean[1], stats.std[1]]))


def test_a_nan_score_counts_as_not_retrieved():
    scores = np.array([[np.nan, 1.0, 2.0], [np.nan] * 3], dtype=np.float32)
    assert top_k(scores, 3).ids.tolist() == [[2, 1, -1], [-1, -1, -1]]
    scan = _scan.RunningTopK(2, 3, "cpu")
    scan.add(torch.from_numpy(scores), 0)
    ranking = scan.ranking()
    assert ranking.ids.tolist() == [[2, 1, -1], [-1, -1, -1]] and ranking.stats.count.tolist() == [2, 0]


def test_queries_and_colbert_tokens_are_scanned_in_blocks_with_the_same_answers(monkeypatch):
    rng = np.random.default_rng(2)
    corpus, queries = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(9, 6)).astype(np.float32)
    d_lengths, q_lengths = rng.integers(1, 6, size=40), rng.integers(1, 4, size=9)
    d_vectors = rng.normal(size=(d_lengths.sum(), 6)).astype(np.float32)
    q_vectors = rng.normal(size=(q_lengths.sum(), 6)).astype(np.float32)
    d_offsets, q_offsets = np.concatenate([[0], d_lengths.cumsum()]), np.concatenate([[0], q_lengths.cumsum()])
    whole_dense = _scan.exact_search(queries, corpus, 8, "cpu")
    whole_colbert = _scan.colbert_search(q_vectors, q_offsets, d_vectors, d_offsets, 8, "cpu")
    expected = np.array([[(q_vectors[q_offsets[i]:q_offsets[i + 1]] @ d_vectors[d_offsets[j]:d_offsets[j + 1]].T)
                          .max(axis=1).mean() for j in range(40)] for i in range(9)])
    np.testing.assert_array_equal(whole_colbert.ids, reference(expected, 8))
    monkeypatch.setattr(ranking_module, "SCORE_BLOCK", 12)  # a few queries (or query tokens) at a time
    monkeypatch.setattr(_scan, "CORPUS_CHUNK", 6)
    monkeypatch.setattr(_scan, "TOKEN_CHUNK", 4)
    blocks_dense = _scan.exact_search(queries, corpus, 8, "cpu")
    blocks_colbert = _scan.colbert_search(q_vectors, q_offsets, d_vectors, d_offsets, 8, "cpu")
    for whole, blocks in ((whole_dense, blocks_dense), (whole_colbert, blocks_colbert)):
        np.testing.assert_array_equal(blocks.ids, whole.ids)
        np.testing.assert_allclose(blocks.scores, whole.scores, rtol=1e-6)
        np.testing.assert_allclose(blocks.stats.mean, whole.stats.mean, rtol=1e-6)


@pytest.mark.parametrize("slices", [1, 4])
def test_top_k_finds_the_best_among_clustered_ties_and_unretrieved_runs(monkeypatch, slices):
    """The candidate threshold may be -inf (most column slices hold nothing retrieved) or sit on
    a run of equal scores; the answer is the full sort's either way."""
    monkeypatch.setattr(ranking_module, "CANDIDATE_SLICES", slices)
    rng = np.random.default_rng(slices)
    scores = rng.integers(0, 3, size=(12, 200)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0, 20:] = -np.inf  # retrieved passages clustered at the start of the corpus
    scores[1, :190] = -np.inf
    scores[2] = 1.0  # one long tie
    scores[3] = -np.inf
    for depth in (1, 3, 10, 50, 250):
        ranking = top_k(scores, depth)
        np.testing.assert_array_equal(ranking.ids, reference(scores, depth))
        expected = np.take_along_axis(scores, np.maximum(ranking.ids, 0), axis=1)
        np.testing.assert_array_equal(ranking.scores, np.where(ranking.ids >= 0, expected, -np.inf))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_statistics_equal_numpy_on_the_finite_entries(dtype):
    rng = np.random.default_rng(4)
    scores = (rng.normal(size=(8, 300)) * 5 + 2).astype(dtype)
    scores[rng.random(scores.shape) < 0.4] = -np.inf
    scores[1, :7], scores[2, :3], scores[3], scores[4] = np.nan, np.inf, -np.inf, -1.5
    stats = ScoreStats.of(scores)
    for q, row in enumerate(scores):
        kept = row[np.isfinite(row)].astype(np.float64)
        assert stats.count[q] == len(kept)
        if len(kept) == 0:
            assert np.isnan([stats.min[q], stats.max[q], stats.mean[q], stats.std[q]]).all()
            continue
        assert (stats.min[q], stats.max[q]) == (kept.min(), kept.max())
        np.testing.assert_allclose([stats.mean[q], stats.std[q]], [kept.mean(), kept.std()], rtol=1e-12, atol=1e-12)
    assert stats.std[4] == 0.0 and stats.mean[4] == -1.5


def test_blockwise_scores_a_block_of_queries_at_a_time_with_the_same_answers(monkeypatch):
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 5, size=(23, 40)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.5] = -np.inf
    shapes = []

    def rows(block: slice) -> np.ndarray:
        shapes.append(scores[block].shape)
        return scores[block].copy()

    whole = ranking_module.blockwise(23, 40, rows, 7)
    monkeypatch.setattr(ranking_module, "SCORE_BLOCK", 3 * 40 + 5)  # 3 queries at a time
    shapes.clear()
    blocks = ranking_module.blockwise(23, 40, rows, 7)
    assert max(n for n, _ in shapes) == 3 and sum(n for n, _ in shapes) == 23
    np.testing.assert_array_equal(blocks.ids, whole.ids)
    np.testing.assert_array_equal(blocks.scores, whole.scores)
    for name in ("count", "min", "max", "mean", "std"):
        np.testing.assert_array_equal(getattr(blocks.stats, name), getattr(whole.stats, name))


def test_the_dense_scan_never_holds_more_scores_than_a_block(monkeypatch):
    rng = np.random.default_rng(7)
    corpus, queries = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    whole = _scan.exact_search(queries, corpus, 5, "cpu")
    monkeypatch.setattr(ranking_module, "SCORE_BLOCK", 200)
    monkeypatch.setattr(_scan, "CORPUS_CHUNK", 40)
    sizes = []
    add = _scan.RunningTopK.add
    monkeypatch.setattr(_scan.RunningTopK, "add", lambda self, block, first: sizes.append(block.numel())
                        or add(self, block, first))
    blocks = _scan.exact_search(queries, corpus, 5, "cpu")
    assert max(sizes) <= 200 and sum(sizes) == 50 * 300  # every score, 5 queries x 40 passages at a time
    np.testing.assert_array_equal(blocks.ids, whole.ids)


H200_SPARSE_ROW = np.array([2.245399, 1.8469771, 1.8467927, 1.8465292, 1.8464988, 1.8464645, 1.8463815, 1.8461394,
                            1.7403783, 1.7403097], dtype=np.float32)
"""A BGE-M3 sparse ranking of the GPU test on an H200 (tolerance 2e-2): two tie clusters, whose
passages the GPU and the CPU ordered differently at every rank from 1 to 9."""


def test_rankings_may_differ_only_by_near_ties_swapping():
    """tests/test_gpu.py's helper (its module runs only on a GPU): passages swap only within
    clusters of scores closer than the tolerance, also with a passage from beyond the last rank;
    a passage moved away from its score fails, though the scores at each rank still agree."""
    from test_gpu import assert_only_near_ties_differ

    expected = np.arange(10)
    within_clusters = [0, 3, 1, 2, 7, 5, 6, 4, 10, 8]  # 10: beyond the last rank, a near-tie of 8 and 9
    assert_only_near_ties_differ(within_clusters, expected, H200_SPARSE_ROW, 2e-2)
    full = np.concatenate([H200_SPARSE_ROW, [1.7402, 0.5]])
    assert_only_near_ties_differ(within_clusters, expected, H200_SPARSE_ROW, 2e-2, full.__getitem__)
    with pytest.raises(AssertionError, match="rank 1: 8 "):
        assert_only_near_ties_differ([0, 8, 2, 3, 4, 5, 6, 7, 1, 9], expected, H200_SPARSE_ROW, 2e-2)
    with pytest.raises(AssertionError, match="rank 7: 9 "):  # a passage of the lower cluster in the upper one
        assert_only_near_ties_differ([0, 1, 2, 3, 4, 5, 6, 9, 8, 7], expected, H200_SPARSE_ROW, 2e-2)
    with pytest.raises(AssertionError, match="rank 9: 11 "):  # its score is known: far below the last rank's
        assert_only_near_ties_differ([*range(9), 11], expected, H200_SPARSE_ROW, 2e-2, full.__getitem__)
    with pytest.raises(AssertionError, match="rank 5: 10 "):  # from beyond the last rank, far above it
        assert_only_near_ties_differ([0, 1, 2, 3, 4, 10, 6, 7, 8, 9], expected, H200_SPARSE_ROW, 2e-2)
    partial, scores = [0, 1, -1], np.array([1.0, 0.99, -np.inf])  # nothing more was retrieved
    with pytest.raises(AssertionError, match="rank 1: 5 "):
        assert_only_near_ties_differ([0, 5, -1], partial, scores, 2e-2)
    assert_only_near_ties_differ(["b", "a"], ["a", "b"], np.array([0.7, 0.69]), 2e-2)  # serving hits: doc ids
