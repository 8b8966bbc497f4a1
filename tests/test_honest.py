"""Honest selection end to end on the bundled example: a stratified holdout the search never
sees, k-fold selection, one config per domain, latency measured and optimized, and the
comparison command."""

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import KO_MINI, write_config
from ragopt import load_pipeline
from ragopt.stages.cache import Cache
from ragopt.cli import app
from ragopt.analysis.compare import StudyResults, runner_ups, winners
from ragopt.search.config import load_config
from ragopt.data.qa import load_dataset
from ragopt.stages.engine import Engine
from ragopt.errors import ConfigError, StudyError
from ragopt.serving.export import read_best
from ragopt.stages.retrievers import bm25 as bm25_module
from ragopt.analysis.selection import pareto_front
from ragopt.search.space import suggest_pipeline
from ragopt.analysis.splits import HOLDOUT
from ragopt.study import optimize

SPACE = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl", domain_column: domain}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, kiwi, {type: char_ngram, n: 2}], method: [lucene, bm25+],
     k1: {low: 0.5, high: 2.0}, b: {low: 0.3, high: 1.0}}
  - {name: dense, type: dense, model: "@TINY_BERT@"}
  - {name: hybrid, type: hybrid, retrievers: [bm25, dense], fusion: [rrf, convex], depth: 20}
top_k: [1, 3, 5]
optimize: {f1: 1.0, ndcg: 1.0}
study: {seed: 5, @STUDY@}
"""


def config(folder: Path, tiny_bert: Path, study: str) -> Path:
    study = study if "n_trials" in study else f"n_trials: 25, {study}"
    return write_config(folder / "space.yaml", SPACE.replace("@TINY_BERT@", str(tiny_bert)).replace("@STUDY@", study))


def chosen(means: pd.Series, cost_rank: pd.Series) -> int:
    """The trial the tie rule picks from `means` (indexed by trial): the highest mean, among equal
    means the cheapest pipeline (lowest cost_rank), then the earliest trial."""
    frame = pd.DataFrame({"mean": means.round(9), "cost": cost_rank.loc[means.index]}).sort_index()
    return int(frame.sort_values(["mean", "cost"], ascending=[False, True], kind="stable").index[0])


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, tiny_bert):
    path = config(tmp_path_factory.mktemp("holdout"), tiny_bert,
                  "holdout: 0.3, folds: 3, per_domain: true, min_domain_questions: 8")
    return optimize(path, progress=False)


def test_the_holdout_is_stratified_and_never_steers_the_search(held_out):
    out = held_out.output
    per_question = pd.read_parquet(out / "per_question.parquet")
    questions = per_question[per_question["trial"] == per_question["trial"].iloc[0]]
    # 12 questions per domain: round(0.3 x 12) = 4 held out of each
    assert questions.groupby("domain")["split"].apply(lambda s: (s == "holdout").sum()).tolist() == [4, 4, 4, 4]
    trials = pd.read_csv(out / "trials.csv")
    means = per_question.groupby(["trial", "split"])["objective"].mean().unstack()
    assert np.allclose(trials.set_index("trial")["value"], means["selection"], atol=1e-6)
    assert np.allclose(trials.set_index("trial")["value.holdout"], means["holdout"], atol=1e-6)
    stored = optuna.load_study(study_name="space", storage=f"sqlite:///{out / 'study.db'}")
    assert np.allclose([t.value for t in stored.trials], trials["value"], atol=1e-6)
    by_domain = per_question[per_question["split"] == "selection"].groupby(["trial", "domain"])["objective"].mean()
    assert np.allclose(trials.set_index("trial")["domain.law"], by_domain.unstack()["law"], atol=1e-9)


def test_best_yaml_records_the_held_out_score_next_to_the_selection_score(held_out):
    evaluation = yaml.safe_load((held_out.output / "best.yaml").read_text())["evaluation"]
    trials = pd.read_csv(held_out.output / "trials.csv").set_index("trial")
    best = trials.loc[evaluation["trial"]]
    assert evaluation["value"] == pytest.approx(best["value"], abs=1e-6) == held_out.best_value
    assert evaluation["holdout"]["value"] == pytest.approx(best["value.holdout"], abs=1e-6)
    assert evaluation["holdout"]["value"] == pytest.approx(held_out.holdout_value, abs=1e-6)
    assert evaluation["holdout"]["value"] != evaluation["value"]
    assert evaluation["holdout"]["questions"] == 16 and evaluation["questions"] == 32
    low, high = evaluation["holdout"]["interval"]
    assert low <= evaluation["holdout"]["value"] <= high and low < high
    per_question = pd.read_parquet(held_out.output / "per_question.parquet")
    rows = per_question[per_question["trial"] == evaluation["trial"]]
    k = read_best(held_out.output / "best.yaml").top_k
    for side in ("selection", "holdout"):
        means = rows[rows["split"] == side][[f"ndcg@{k}", f"hit@{k}"]].mean()
        assert evaluation["metrics_at_k"][side][f"ndcg@{k}"] == pytest.approx(means[f"ndcg@{k}"], abs=1e-6)
        assert evaluation["metrics_at_k"][side][f"hit@{k}"] == pytest.approx(means[f"hit@{k}"], abs=1e-6)


def test_kfold_selection_by_hand(held_out):
    per_question = pd.read_parquet(held_out.output / "per_question.parquet")
    trials = pd.read_csv(held_out.output / "trials.csv")
    wide = per_question.pivot(index="qid", columns="trial", values="objective")[trials["trial"]]
    folds = per_question.drop_duplicates("qid").set_index("qid")["fold"].loc[wide.index].to_numpy()
    scores = []
    for fold in range(3):
        train = (folds != HOLDOUT) & (folds != fold)
        pick = chosen(wide[train].mean(), trials.set_index("trial")["cost_rank"])
        scores.append((wide.loc[folds == fold, pick].mean(), (folds == fold).sum()))
    expected = sum(s * n for s, n in scores) / sum(n for _, n in scores)
    evaluation = yaml.safe_load((held_out.output / "best.yaml").read_text())["evaluation"]
    assert evaluation["folds"]["k"] == 3 and sorted(set(folds.tolist())) == [HOLDOUT, 0, 1, 2]
    assert evaluation["folds"]["score"] == pytest.approx(expected, abs=1e-6) == pytest.approx(held_out.folds_value)


def test_one_config_per_domain_chosen_on_its_own_questions(held_out):
    folder = held_out.output / "per_domain"
    assert sorted(p.name for p in folder.glob("*.yaml")) == ["finance.yaml", "law.yaml", "medical.yaml", "tech.yaml"]
    per_question = pd.read_parquet(held_out.output / "per_question.parquet")
    trials = pd.read_csv(held_out.output / "trials.csv").drop_duplicates("pipeline_key")
    for path in folder.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        evaluation = document["evaluation"]
        rows = per_question[(per_question["domain"] == path.stem) & (per_question["split"] == "selection")
                            & per_question["trial"].isin(trials["trial"])]
        means = rows.groupby("trial")["objective"].mean()
        assert evaluation["domain"] == path.stem and evaluation["questions"] == 8
        assert evaluation["value"] == pytest.approx(means.max(), abs=1e-6)
        assert evaluation["trial"] == chosen(means, trials.set_index("trial")["cost_rank"])
        k = read_best(path).top_k
        domain = rows[rows["trial"] == evaluation["trial"]]
        assert evaluation["metrics_at_k"]["selection"][f"f1@{k}"] == pytest.approx(domain[f"f1@{k}"].mean(), abs=1e-6)
        assert read_best(path).describe() == trials.set_index("trial").loc[evaluation["trial"], "pipeline"]
    hits = load_pipeline(folder / "law.yaml", KO_MINI / "corpus.jsonl").retrieve("전세 계약")[0]
    assert hits and hits[0].rank == 1


def test_per_domain_flag_on_the_command_line(tmp_path, tiny_bert):
    path = config(tmp_path, tiny_bert, "n_trials: 4, holdout: 0.3, min_domain_questions: 8")
    result = CliRunner().invoke(app, ["optimize", str(path), "-q", "--per-domain"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "space-output" / "per_domain").glob("*.yaml"))) == 4
    assert "held-out" in result.output


def test_compare_command_writes_tables_and_marks_each_domains_best(held_out):
    result = CliRunner().invoke(app, ["compare", str(held_out.output), "--by", "tokenizer", "--metric", "ndcg@3",
                                      "--resamples", "2000"])
    assert result.exit_code == 0, result.output
    matrix = pd.read_csv(held_out.output / "compare" / "matrix-tokenizer.ndcg@3.csv")
    assert (matrix.groupby("domain")["best"].sum() == 1).all()
    assert set(matrix["domain"]) == {"(all)", "finance", "law", "medical", "tech"}
    assert {"kiwi", "whitespace", "char_ngram:2", "none"} >= set(matrix["choice"])
    page = (held_out.output / "compare" / "compare-tokenizer.ndcg@3.md").read_text()
    assert "★" in page and "held-out" in page
    bad = CliRunner().invoke(app, ["compare", str(held_out.output), "--by", "colour"])
    assert bad.exit_code == 2 and "--by must be one of" in bad.output


def test_latency_pareto_front_is_exported(tmp_path, tiny_bert):
    outcome = optimize(config(tmp_path, tiny_bert, "latency: pareto"), progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert (trials["seconds_per_query"] > 0).all()
    front = pareto_front(trials["value"].to_numpy(), trials["seconds_per_query"].to_numpy(),
                         cost=trials["cost_rank"].to_numpy())
    assert trials["pareto"].tolist() == front.tolist()
    exported = sorted(p.name for p in (outcome.output / "pareto").glob("*.yaml"))
    assert exported == sorted(f"trial-{t}.yaml" for t in trials.loc[front, "trial"])
    stored = optuna.load_study(study_name="space", storage=f"sqlite:///{outcome.output / 'study.db'}")
    assert [d.name for d in stored.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert outcome.best_value == trials.loc[front, "value"].max()
    winner = yaml.safe_load((outcome.output / "best.yaml").read_text())["evaluation"]["trial"]
    assert trials.set_index("trial").loc[winner, "pareto"]  # the best quality of the front, not a slower equal
    results = StudyResults.load(outcome.output)
    assert winners(results)["trial"].iloc[0] == winner == runner_ups(results)["trial"].iloc[0]


def test_latency_budget_keeps_the_winner_under_it(tmp_path, tiny_bert):
    for name in "abc":
        (tmp_path / name).mkdir()
    first = optimize(config(tmp_path / "a", tiny_bert, ""), progress=False)
    trials = pd.read_csv(first.output / "trials.csv")
    budget = float(trials["seconds_per_query"].median())
    outcome = optimize(config(tmp_path / "b", tiny_bert, f"latency_budget: {budget}"), progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv")
    best = trials.set_index("trial").loc[yaml.safe_load((outcome.output / "best.yaml").read_text())
                                         ["evaluation"]["trial"]]
    assert best["seconds_per_query"] <= budget and best["feasible"]
    assert best["value"] == trials.loc[trials["feasible"], "value"].max()
    with pytest.raises(StudyError, match="latency_budget"):
        optimize(config(tmp_path / "c", tiny_bert, "latency_budget: 1.0e-12, n_trials: 4"), progress=False)
    assert len(pd.read_csv(tmp_path / "c" / "space-output" / "trials.csv")) == 4  # what the trials cost is kept


def test_latency_probe_redoes_query_work_without_caching_it(tmp_path, tiny_bert, monkeypatch):
    path = config(tmp_path, tiny_bert, "")
    loaded, _ = load_config(path)
    qa, corpus = load_dataset(loaded.data.qa, loaded.data.corpus)
    engine = Engine(corpus, Cache(tmp_path / "cache"), "cpu")
    spec = suggest_pipeline(loaded, lambda name, options: "hybrid" if name == "retriever" else
                            options[0] if isinstance(options, list) else options.low)
    engine.run(spec, qa.queries)
    files = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    tokenized = []
    original = bm25_module.tokens_of
    monkeypatch.setattr(bm25_module, "tokens_of", lambda tokenizer, texts, key, *rest: tokenized.append(key)
                        or original(tokenizer, texts, key, *rest))
    seconds = engine.seconds_per_query(spec, qa.queries, np.arange(8))
    assert seconds > 0
    assert len(tokenized) == 4 and all(key.startswith("unseen:") for key in tokenized)  # a warm-up and 3 runs
    assert sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file()) == files
    bm25 = spec.retriever.components()[0]
    other = spec.model_copy(update={"retriever": spec.retriever.model_copy(update={
        "rrf_k": 7, "retrievers": [bm25.model_copy(update={"k1": bm25.k1 + 0.3}), spec.retriever.components()[1]]})})
    assert other.key() != spec.key()
    assert engine.seconds_per_query(other, qa.queries, np.arange(8)) == seconds  # the same work, measured once
    assert len(tokenized) == 4


def test_bad_study_settings_are_refused(tmp_path, tiny_bert):
    for study, message in (("folds: 1", "folds: give 0"), ("latency: pareto, pruner: wilcoxon", "single-objective"),
                           ("holdout: 1.0", "holdout")):
        with pytest.raises(ConfigError, match=message):
            load_config(config(tmp_path, tiny_bert, study))


def test_report_command_renders_the_study_with_every_plot_visible(held_out):
    from browser import inspect, require_chromium
    from test_report import CHECK

    browser = require_chromium()
    result = CliRunner().invoke(app, ["report", str(held_out.output), "--by", "tokenizer"])
    assert result.exit_code == 0, result.output
    path = held_out.output / "report.html"
    assert f"report: {path}" in result.output.replace("\n", "")
    verdict = inspect(browser, path, CHECK, held_out.output / "report.png")
    plots = {plot["id"]: plot for plot in verdict["plots"]}
    assert list(plots) == ["fig-matrix", "fig-curves", "fig-pareto", "fig-history", "fig-importance"]
    for plot in plots.values():
        assert plot["shown"] and plot["width"] > 600 and plot["height"] > 150 and plot["svgs"] >= 2, plot
    assert verdict["errors"] == []
    matrix = pd.read_csv(held_out.output / "trials.csv")
    choices = matrix["choice.tokenizer"].nunique()
    assert len(plots["fig-matrix"]["cells"]) == choices * 5  # (all) and four domains
    assert sum("★" in cell for cell in plots["fig-matrix"]["cells"]) == 5
    assert plots["fig-history"]["points"] == len(matrix)
    assert plots["fig-pareto"]["points"] == len(matrix) + 1  # and the exported winner's star
    assert f"exported winner (trial {held_out_winner(held_out)})" in plots["fig-pareto"]["legend"]
    assert len(plots["fig-curves"]["legend"]) == 5
    page = path.read_text(encoding="utf-8")
    assert "<dt>objective</dt><dd>mean of f1 and ndcg at each trial&#x27;s k</dd>" in page
    assert len(verdict["pipelines"]) == len(matrix)


def held_out_winner(outcome) -> int:
    return yaml.safe_load((outcome.output / "best.yaml").read_text())["evaluation"]["trial"]


def test_summary_gives_every_metric_per_domain_with_intervals_on_held_out_questions(held_out):
    summary = (held_out.output / "summary.md").read_text()
    assert "objective: mean of f1 and ndcg at each trial's k (higher is better)" in summary
    section = summary.split("### The winner's scores per domain, at k=")[1].split("##")[0]
    assert "each domain's share of the held-out questions" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "[" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == ["(all)", "finance", "law", "medical", "tech"]
    assert all(row.split(" | ")[1] == "4" for row in rows[1:])  # four held-out questions per domain


def test_latency_off_measures_nothing(tmp_path, tiny_bert, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the latency probe ran")

    monkeypatch.setattr(Engine, "seconds_per_query", refuse)
    outcome = optimize(config(tmp_path, tiny_bert, "latency: off, n_trials: 6"), progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert trials["seconds_per_query"].isna().all() and not trials["pareto"].any()
    assert "latency not measured (study.latency: off)" in (outcome.output / "summary.md").read_text()
    with pytest.raises(ConfigError, match="latency_budget needs the latency measured"):
        load_config(config(tmp_path, tiny_bert, "latency: off, latency_budget: 0.1"))


def test_studies_that_cannot_work_stop_before_any_trial(tmp_path, tiny_bert):
    with pytest.raises(StudyError, match="study.folds: 40 folds need at least 40 selection questions"):
        optimize(config(tmp_path, tiny_bert, "holdout: 0.3, folds: 40"), progress=False)
    assert not list((tmp_path / "space-output" / "runs").glob("*"))  # no trial ran: no ranking stored
    no_domains = SPACE.replace(", domain_column: domain", "")
    path = write_config(tmp_path / "plain.yaml", no_domains.replace("@TINY_BERT@", str(tiny_bert)).replace(
        "@STUDY@", "n_trials: 3, per_domain: true"))
    with pytest.raises(StudyError, match="per_domain needs each question's domain"):
        optimize(path, progress=False)


def test_a_resumed_study_refuses_another_holdout_split(tmp_path, tiny_bert):
    no_domains = SPACE.replace(", domain_column: domain", "").replace("@TINY_BERT@", str(tiny_bert))
    path = write_config(tmp_path / "space.yaml", no_domains.replace("@STUDY@", "n_trials: 3, holdout: 0.3"))
    optimize(path, progress=False)
    config(tmp_path, tiny_bert, "n_trials: 4, holdout: 0.3")  # the same study, now stratified by domain
    with pytest.raises(StudyError, match="different data set or search space"):
        optimize(path, progress=False)


def test_compare_and_report_errors_are_one_line(held_out, tmp_path):
    runner = CliRunner()
    for args, message in ((["--metric", "split"], "unknown metric 'split'"), (["--confidence", "1.5"], "confidence"),
                          (["--top", "0"], "--top must be at least 1"), (["--resamples", "5"], "resamples")):
        result = runner.invoke(app, ["compare", str(held_out.output), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    for command in ("compare", "report"):
        result = runner.invoke(app, [command, str(tmp_path)])
        assert result.exit_code == 2 and "ragopt optimize" in result.output.replace("\n", "")


def test_a_second_run_on_the_same_output_refuses(tmp_path, tiny_bert):
    from filelock import FileLock

    path = config(tmp_path, tiny_bert, "n_trials: 3")
    (tmp_path / "space-output").mkdir()
    with FileLock(tmp_path / "space-output" / ".ragopt.lock"):  # as a running `ragopt optimize` holds it
        with pytest.raises(StudyError, match="another `ragopt optimize` is running on"):
            optimize(path, progress=False)
    assert optimize(path, progress=False).n_trials == 3


def test_a_failing_pipeline_fails_its_trial_and_the_study_goes_on(tmp_path, tiny_bert, monkeypatch):
    from ragopt.scoring.evaluation import Evaluator

    evaluate = Evaluator.evaluate

    def broken(self, spec):
        if spec.retriever.type == "dense":
            raise RuntimeError("weights file is truncated")
        return evaluate(self, spec)

    monkeypatch.setattr(Evaluator, "evaluate", broken)
    outcome = optimize(config(tmp_path, tiny_bert, "n_trials: 12"), progress=False)
    assert outcome.failures and all(f["error"] == "RuntimeError: weights file is truncated" for f in outcome.failures)
    assert all(f["pipeline"].startswith("dense[") for f in outcome.failures)
    assert outcome.n_trials + len(outcome.failures) == 12
    summary = (outcome.output / "summary.md").read_text()
    assert f"{len(outcome.failures)} trials failed and were left out" in summary


def test_of_pipelines_that_score_alike_the_study_exports_the_cheapest(tmp_path, tiny_bert):
    """Recall@60 over 60 passages is 1 on every question for each pipeline that retrieves them
    all: the hybrid, tried first, and the dense retriever it fuses. The study exports the cheaper
    one (no fusion, one retriever less), not the earlier trial, and compare agrees."""
    path = write_config(tmp_path / "alike.yaml", f"""
data: {{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl", domain_column: domain}}
retrievers:
  - {{name: hybrid, type: hybrid, retrievers: [dense, bm25], depth: 60}}
  - {{name: dense, type: dense, model: "{tiny_bert}"}}
  - {{name: bm25, type: bm25, tokenizer: whitespace}}
top_k: [60]
optimize: {{recall: 1.0}}
study: {{sampler: grid, latency: off}}
""")
    outcome = optimize(path, progress=False)
    trials = pd.read_csv(outcome.output / "trials.csv").set_index("trial")
    assert trials.loc[0, "choice.retriever"] == "hybrid(dense+bm25)" and trials.loc[0, "value"] == 1.0
    assert trials.loc[1, "choice.retriever"] == "dense" and trials.loc[1, "value"] == 1.0
    assert trials.loc[1, "cost_rank"] < trials.loc[0, "cost_rank"]
    winner = held_out_winner(outcome)
    assert winner == chosen(trials["value"], trials["cost_rank"]) != 0
    results = StudyResults.load(outcome.output)
    top = runner_ups(results)
    assert top["trial"].iloc[0] == winner and winners(results)["trial"].iloc[0] == winner
    assert top["ties"].iloc[0] >= 1 and "0" in top["tied_trials"].iloc[0].split()  # the hybrid is in its row


def test_best_yaml_says_how_to_run_it_on_the_corpus_the_study_searched(held_out):
    best = held_out.output / "best.yaml"
    header = [line for line in best.read_text().splitlines() if line.startswith("#")]
    corpus = KO_MINI / "corpus.jsonl"  # in another tree than the temp output folder: named in full
    assert f'#   ragopt query best.yaml --corpus {corpus} "question"' in header
    trials = pd.read_csv(held_out.output / "trials.csv").set_index("trial")
    assert header[0] == (f"# The best pipeline found by ragopt: {trials.loc[held_out_winner(held_out), 'pipeline']} "
                         f"(trial {held_out_winner(held_out)}).")
    assert "--corpus corpus.parquet" not in best.read_text()
