"""Holdout and folds: stratified by domain, seeded, disjoint; and how a winner is selected."""

import numpy as np
import pytest

from ragopt.errors import StudyError
from ragopt.analysis.selection import best_index, kfold_selection, pareto_front
from ragopt.analysis.splits import HOLDOUT, fold_ids, holdout_mask

DOMAINS = ["finance"] * 10 + ["law"] * 7 + ["medical"] * 3 + ["tech"] * 1


def test_holdout_takes_each_domains_share():
    held = holdout_mask(DOMAINS, len(DOMAINS), 0.3, seed=0)
    labels = np.asarray(DOMAINS)
    # round(0.3 x size), at least one of a domain of two or more, never all of it: 10 -> 3, 7 -> 2, 3 -> 1, 1 -> 0
    assert {d: int(held[labels == d].sum()) for d in sorted(set(DOMAINS))} == {
        "finance": 3, "law": 2, "medical": 1, "tech": 0}


def test_holdout_is_seeded():
    first = holdout_mask(DOMAINS, len(DOMAINS), 0.3, seed=0)
    assert np.array_equal(first, holdout_mask(DOMAINS, len(DOMAINS), 0.3, seed=0))
    assert not np.array_equal(first, holdout_mask(DOMAINS, len(DOMAINS), 0.3, seed=1))
    assert not holdout_mask(DOMAINS, len(DOMAINS), 0.0, seed=0).any()
    assert holdout_mask(None, 10, 0.5, seed=0).sum() == 5


def test_folds_cover_the_selection_questions_once_and_balance_domains():
    held = holdout_mask(DOMAINS, len(DOMAINS), 0.3, seed=0)
    folds = fold_ids(DOMAINS, held, 3, seed=0)
    assert np.array_equal(folds == HOLDOUT, held)
    sizes = np.bincount(folds[folds != HOLDOUT])
    assert sizes.tolist() == [5, 5, 5]  # 15 selection questions dealt round-robin
    finance = np.asarray(DOMAINS) == "finance"
    assert np.bincount(folds[finance & ~held], minlength=3).tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        fold_ids(DOMAINS, held, 1, seed=0)


def test_best_index_respects_the_budget_and_takes_the_earliest_of_equals():
    values = np.array([0.5, 0.9, 0.9, 0.7])
    seconds = np.array([0.01, 0.2, 0.1, 0.05])
    assert best_index(values, seconds) == 1
    assert best_index(values, seconds, by_speed=True) == 2  # latency: pareto prefers the faster of equals
    assert best_index(values, seconds, budget=0.15) == 2
    assert best_index(values, seconds, budget=0.06) == 3
    with pytest.raises(StudyError, match="fastest took 0.01"):
        best_index(values, seconds, budget=0.001)


def test_pareto_front_by_hand():
    values = np.array([0.5, 0.9, 0.9, 0.7, 0.6, 0.7])
    seconds = np.array([0.01, 0.2, 0.1, 0.05, 0.05, 0.05])
    # 0: fastest; 3: better and slower; 5 equals 3 (later: out); 4 is beaten by 3 at the same time;
    # 2 beats 1 (same value, faster)
    assert np.flatnonzero(pareto_front(values, seconds)).tolist() == [0, 2, 3]
    assert np.flatnonzero(pareto_front(values, seconds, budget=0.06)).tolist() == [0, 3]


def test_kfold_selection_scores_each_choice_on_the_fold_it_did_not_see():
    # 4 questions, 2 folds; trial 0 is best on fold 1's questions, trial 1 on fold 0's
    objective = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.6], [0.0, 0.6]])
    folds = np.array([0, 0, 1, 1])
    result = kfold_selection(objective, folds, np.zeros(2))
    # fold 0 held out: chosen on questions 2-3 -> trial 1, which scores 0.0 on questions 0-1;
    # fold 1 held out: chosen on questions 0-1 -> trial 0, which scores 0.0 on questions 2-3
    assert result.chosen == [1, 0]
    assert result.held_out == [0.0, 0.0]
    assert result.score == 0.0  # while the best trial's in-sample value is 0.5


def test_means_equal_up_to_the_last_bits_tie_and_the_earliest_wins():
    values = np.array([0.3, 0.1 + 0.2])  # 0.3 and 0.30000000000000004
    assert best_index(values, np.zeros(2)) == 0
    assert pareto_front(values, np.array([0.1, 0.1])).tolist() == [True, False]
