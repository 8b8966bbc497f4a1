"""Metrics against hand-computed cases and against pytrec_eval (trec_eval) on random runs."""

import numpy as np
import pytest
import pytrec_eval

from ragopt.scoring.metrics import METRICS, at_k, relevance


def score(ranked, groups, ks, n_docs=10):
    gains, n_rel = relevance(np.asarray(ranked), groups, n_docs)
    return {name: values for name, values in at_k(gains, n_rel, ks).items()}


def test_hand_computed_case():
    # ranking d3, d1, d2, d5 with relevant d1 and d2 (two single-id groups)
    m = score([[3, 1, 2, 5]], [[[1], [2]]], [1, 3])
    expected = {
        "precision@1": 0.0, "recall@1": 0.0, "f1@1": 0.0, "map@1": 0.0, "mrr@1": 0.0, "ndcg@1": 0.0, "hit@1": 0.0,
        "precision@3": 2 / 3, "recall@3": 1.0, "f1@3": 0.8, "map@3": (1 / 2 + 2 / 3) / 2, "mrr@3": 0.5,
        "ndcg@3": (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), "hit@3": 1.0,
    }
    for name, value in expected.items():
        assert m[name][0] == pytest.approx(value, abs=1e-12), name


def test_map_divides_by_all_relevant_not_by_k():
    # three relevant, one retrieved at rank 1, cut at 1: AP@1 = 1/3 (trec_eval), not 1
    m = score([[4, 1, 2]], [[[4], [5], [6]]], [1])
    assert m["map@1"][0] == pytest.approx(1 / 3)
    assert m["ndcg@1"][0] == pytest.approx(1.0)


def test_group_alternatives_count_once():
    # one group of alternatives {1, 2}: retrieving both satisfies one required group once
    m = score([[2, 1, 3]], [[[1, 2]]], [3])
    assert m["precision@3"][0] == pytest.approx(1 / 3)
    assert m["recall@3"][0] == pytest.approx(1.0)
    assert m["map@3"][0] == pytest.approx(1.0)
    # two required groups, only the second one retrieved: recall 1/2, first hit at rank 2
    m = score([[7, 5, 6]], [[[1, 2], [5]]], [3])
    assert m["recall@3"][0] == pytest.approx(0.5)
    assert m["mrr@3"][0] == pytest.approx(0.5)


def test_short_rankings_are_padded_like_trec_eval():
    # only one passage retrieved; P@3 still divides by 3
    m = score([[1, -1, -1]], [[[1]]], [3])
    assert m["precision@3"][0] == pytest.approx(1 / 3)
    assert m["ndcg@3"][0] == pytest.approx(1.0)


def test_every_metric_matches_pytrec_eval_on_random_runs():
    rng = np.random.default_rng(0)
    n_queries, n_docs, depth, ks = 200, 40, 12, [1, 3, 5, 10]
    lengths = rng.integers(depth - 4, depth + 1, size=n_queries)  # some queries retrieve fewer passages
    ranked = np.stack([np.concatenate([rng.permutation(n_docs)[:n], -np.ones(depth - n, int)]) for n in lengths])
    groups = [[[int(d)] for d in rng.choice(n_docs, size=rng.integers(1, 5), replace=False)] for _ in range(n_queries)]
    ours = score(ranked, groups, ks, n_docs)

    qrels = {f"q{q}": {f"d{g[0]}": 1 for g in gs} for q, gs in enumerate(groups)}
    measures = {f"P.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}",
                f"map_cut.{','.join(map(str, ks))}", f"ndcg_cut.{','.join(map(str, ks))}",
                f"success.{','.join(map(str, ks))}"}
    run = {f"q{q}": {f"d{d}": float(depth - r) for r, d in enumerate(row) if d >= 0} for q, row in enumerate(ranked)}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    names = {"precision": "P_{}", "recall": "recall_{}", "map": "map_cut_{}", "ndcg": "ndcg_cut_{}",
             "hit": "success_{}"}
    for k in ks:
        cut = {q: {d: s for d, s in docs.items() if s > depth - k} for q, docs in run.items()}
        cut_eval = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "set_F"}).evaluate(cut)
        for q in range(n_queries):
            for name, trec_name in names.items():
                assert ours[f"{name}@{k}"][q] == pytest.approx(trec[f"q{q}"][trec_name.format(k)], abs=1e-9)
            assert ours[f"mrr@{k}"][q] == pytest.approx(cut_eval[f"q{q}"]["recip_rank"], abs=1e-9)
            p, r = trec[f"q{q}"][f"P_{k}"], trec[f"q{q}"][f"recall_{k}"]
            assert ours[f"f1@{k}"][q] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-9)
    assert set(METRICS) == {name.split("@")[0] for name in ours}
