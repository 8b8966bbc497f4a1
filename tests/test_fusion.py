"""Fusion against hand-computed scores."""

import numpy as np
import pytest

from ragopt.fusion import convex, normalize, rrf
from ragopt.retrievers._base import Ranking, top_k

A = Ranking(np.array([[0, 1, 2]]), np.array([[3.0, 2.0, 1.0]], dtype=np.float32))
B = Ranking(np.array([[2, 3, -1]]), np.array([[0.9, 0.5, -np.inf]], dtype=np.float32))


def test_rrf():
    fused = rrf([A, B], k=60, n_docs=5, depth=4)
    expected = {0: 1 / 61, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 3: 1 / 62}
    assert fused.ids[0].tolist() == [2, 0, 1, 3]  # 1 and 3 tie: lower corpus row first
    np.testing.assert_allclose(fused.scores[0], [expected[d] for d in fused.ids[0]], rtol=1e-6)


@pytest.mark.parametrize("method, expected_a", [
    ("min_max", [1.0, 0.5, 0.0]),
    ("tmm", [1.0, 2 / 3, 1 / 3]),             # BM25's theoretical minimum 0
    ("z_score", [1.224744871, 0.0, -1.224744871]),
    ("dbsf", [0.5 + 1.224744871 / 6, 0.5, 0.5 - 1.224744871 / 6]),
])
def test_normalizations(method, expected_a):
    np.testing.assert_allclose(normalize(A, method, 0.0)[0], expected_a, rtol=1e-6)


def test_convex_min_max_with_a_passage_missing_from_one_list():
    fused = convex([A, B], [0.7, 0.3], "min_max", [0.0, -1.0], n_docs=5, depth=5)
    # B normalized: doc2 -> 1, doc3 -> 0; a passage missing from a list gets that list's lowest (0)
    expected = {0: 0.7 * 1.0, 1: 0.7 * 0.5, 2: 0.7 * 0.0 + 0.3 * 1.0, 3: 0.0}
    assert fused.ids[0].tolist() == [0, 1, 2, 3, -1]
    np.testing.assert_allclose(fused.scores[0][:4], [expected[d] for d in [0, 1, 2, 3]], atol=1e-6)


def test_top_k_orders_ties_by_corpus_row_and_pads():
    ranking = top_k(np.array([[0.5, 0.9, 0.5, 0.1]], dtype=np.float32), 6)
    assert ranking.ids[0].tolist() == [1, 0, 2, 3, -1, -1]
    assert ranking.head(2).ids.shape == (1, 2)


def test_shallow_rankings_are_prefixes_of_deep_ones_even_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(20, 50)).astype(np.float32)  # many ties
    deep = top_k(scores, 30)
    for depth in (1, 4, 17):
        np.testing.assert_array_equal(top_k(scores, depth).ids, deep.ids[:, :depth])
    expected = np.lexsort((np.broadcast_to(np.arange(50), scores.shape), -scores), axis=1)[:, :30]
    np.testing.assert_array_equal(deep.ids, expected)
