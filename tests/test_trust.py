"""Whether generated questions rank pipelines as real ones do (ragopt.analysis.trust): Kendall's tau-b
against scipy, distinct pipelines counted once, the bootstrap interval, the winners' real scores;
and a study with data.generated_qa end to end (trials.csv value.generated, study.json, summary.md,
`ragopt compare`)."""

import json

import numpy as np
import pandas as pd
import pytest
import pytrec_eval
from scipy.stats import kendalltau
from typer.testing import CliRunner

from ragopt.stages.cache import Cache
from ragopt.stages.chunkers import ChunkContext, chunk_documents
from ragopt.scoring.chunkings import Chunkings
from ragopt.cli import app
from ragopt.search.config import ConfigError, load_config
from ragopt.data.documents import Document, Documents, load_documents, load_span_qa
from ragopt.stages.engine import Engine
from ragopt.scoring.spans import span_qrels
from ragopt.stages.spec import PipelineSpec
from ragopt.analysis.stats import bootstrap_ci, paired_test
from ragopt.study import optimize
from ragopt.analysis.summary import trust_lines
from ragopt.analysis.trust import agreement, distinct_pipelines, kendall_tau, resampled_taus, winner_gap


@pytest.mark.parametrize(("x", "y", "expected"), [
    ([1, 2, 3], [1, 3, 2], 1 / 3),  # 2 concordant pairs, 1 discordant, no ties
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 1, 2, 3], [1, 2, 3, 4], 5 / np.sqrt(5 * 6)),  # one tie in x: (5 - 0) / sqrt((6 - 1) * 6)
    ([1, 1, 2, 2], [1, 2, 1, 2], 0.0),
])
def test_kendall_tau_is_tau_b_by_hand_and_by_scipy(x, y, expected):
    assert kendall_tau(x, y) == pytest.approx(expected, abs=1e-12)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y, variant="b").statistic, abs=1e-12)


def test_kendall_tau_has_no_order_to_compare_in_a_constant_or_single_vector():
    assert np.isnan(kendall_tau([0.5, 0.5, 0.5], [1, 2, 3]))
    assert np.isnan(kendall_tau([1.0], [2.0]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_tau_over_random_trials_is_scipys_on_the_means_of_distinct_pipelines():
    rng = np.random.default_rng(3)
    real, generated = rng.random((40, 12)), rng.random((70, 12))
    real[:, 7], generated[:, 7] = real[:, 2], generated[:, 2]  # trial 7 is trial 2 again: counted once
    real[:, 9] = real[:, 4]  # the same real values, other generated ones: another pipeline
    assert distinct_pipelines(real, generated).tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    kept = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    found = agreement(real, generated, n_resamples=500)
    assert found.pipelines == 11
    assert found.tau == pytest.approx(kendalltau(real[:, kept].mean(0), generated[:, kept].mean(0)).statistic,
                                      abs=1e-12)
    with_twin = kendalltau(real.mean(0), generated.mean(0)).statistic
    assert found.tau != pytest.approx(with_twin)  # the twin would count its pair with trial 2 as a tie


def test_means_equal_up_to_rounding_tie():
    """Pipelines with different questions right but the same mean tie, however their sums round."""
    real = np.array([[0.1, 0.3, 0.0, 0.5], [0.2, 0.0, 0.5, 0.5], [0.3, 0.3, 0.1, 0.5]])
    assert len(set(real.mean(axis=0)[:3])) > 1  # 0.2 three ways, unequal in the last bits
    generated = np.array([[0.1, 0.2, 0.3, 0.9], [0.4, 0.5, 0.6, 0.2]])
    expected = kendalltau([0.2, 0.2, 0.2, 0.5], generated.mean(axis=0), variant="b").statistic
    assert agreement(real, generated, n_resamples=200).tau == pytest.approx(expected, abs=1e-12)
    assert np.isnan(agreement(real[:, :3], generated[:, :3], n_resamples=200).tau)  # every real mean ties


def _study_like(rng, pipelines, n_real, n_generated, shift=0.3):
    """Per-question 0/1 scores of pipelines whose quality the two sets share up to a shift of the
    generated set, with question difficulty common to all pipelines, as in a study."""
    skill = np.sort(rng.normal(0, 0.5, pipelines))
    offset = rng.normal(0, shift, pipelines)

    def scores(n, extra):
        return (rng.normal(0, 1, (n, 1)) + skill + extra + rng.normal(0, 0.8, (n, pipelines)) > 0).astype(float)

    return scores(n_real, 0.0), scores(n_generated, offset)


def test_the_interval_covers_the_point_and_shrinks_with_more_questions():
    rng = np.random.default_rng(0)
    small = agreement(*_study_like(rng, 30, 60, 150), n_resamples=1000, seed=1)
    large = agreement(*_study_like(np.random.default_rng(0), 30, 960, 2400), n_resamples=1000, seed=1)
    for found in (small, large):
        assert found.low < found.tau < found.high
        assert -1 <= found.low and found.high <= 1
    assert large.high - large.low < 0.5 * (small.high - small.low)  # 16x the questions: about a quarter as wide
    assert agreement(*_study_like(np.random.default_rng(0), 30, 60, 150), n_resamples=1000, seed=1) == small


def test_the_interval_is_the_resampled_taus_spread_around_the_observed_tau():
    """Drawn by hand: resample both sets' questions (the same draw for every pipeline), tau of the
    resampled means, z times their standard deviation on either side of the observed tau."""
    real, generated = _study_like(np.random.default_rng(5), 8, 25, 40)
    found = agreement(real, generated, n_resamples=300, seed=9, confidence=0.9)
    rng = np.random.default_rng(9)
    drawn_real, drawn_generated = rng.integers(0, 25, (300, 25)), rng.integers(0, 40, (300, 40))  # one block
    taus = [kendalltau(np.round(real[r].mean(0), 9), np.round(generated[g].mean(0), 9)).statistic
            for r, g in zip(drawn_real, drawn_generated)]
    assert resampled_taus(real, generated, n_resamples=300, seed=9) == pytest.approx(taus, abs=1e-12)
    spread = 1.6448536269514722 * np.std(taus, ddof=1)
    assert (found.low, found.high) == pytest.approx((max(-1, found.tau - spread), min(1, found.tau + spread)))


def test_winner_gap_scores_both_winners_on_real_questions_and_their_paired_difference():
    rng = np.random.default_rng(2)
    real = rng.random((50, 4))
    gap = winner_gap(real, 1, 3, n_resamples=2000, seed=4)
    means, lows, highs = bootstrap_ci(real[:, [1, 3]], n_resamples=2000, seed=4)
    assert (gap.real.mean, gap.real.low, gap.real.high) == pytest.approx((means[0], lows[0], highs[0]))
    assert (gap.generated.mean, gap.generated.low, gap.generated.high) == pytest.approx((means[1], lows[1], highs[1]))
    assert gap.difference == paired_test(real[:, 3], real[:, 1], n_resamples=2000, seed=4)
    assert gap.difference.difference == pytest.approx(real[:, 3].mean() - real[:, 1].mean())
    same = winner_gap(real, 2, 2)
    assert (same.difference.difference, same.difference.low, same.difference.high) == (0.0, 0.0, 0.0)


def test_bad_inputs_say_what_to_change():
    with pytest.raises(ValueError, match="same trials"):
        agreement(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        agreement(np.array([[np.nan, 1.0]]), np.ones((1, 2)))


# A study with data.generated_qa over four small documents.
TEXTS = {
    "cats.txt": "Cats sleep most of the day in warm places. A cat purrs when it is content and calm. "
                "Kittens learn to hunt by watching their mother closely. The tabby cat chased a red laser dot "
                "across the kitchen floor. Whiskers help a cat judge whether it fits through a gap.",
    "ships.txt": "Ships carry most of the goods traded between continents. A container ship can hold thousands "
                 "of steel boxes. Sailors once navigated by the stars at night. The harbour pilot guided the "
                 "freighter past the rocky breakwater. Lighthouses warn ships away from dangerous coasts.",
    "apples.txt": "Apple trees bloom in spring with white and pink flowers. Orchards need bees to pollinate the "
                  "blossoms. Farmers pick the fruit in autumn when it is crisp. A cider press crushed the bruised "
                  "apples into sweet juice. Some apples keep for months in a cool cellar.",
    "rivers.txt": "Rivers carve valleys over thousands of years. Melting snow swells the river every spring. Fish "
                  "swim upstream to lay their eggs in gravel. The old mill wheel turned slowly in the current "
                  "beside the bridge. Deltas form where a river meets the sea.",
}
REAL = [("r1", "why does a cat purr", "cats.txt", "A cat purrs"), ("r2", "container ship steel boxes", "ships.txt",
        "A container ship"), ("r3", "bees pollinate orchards", "apples.txt", "Orchards need bees"),
        ("r4", "fish lay eggs upstream", "rivers.txt", "Fish swim"), ("r5", "stars navigation sailors",
        "ships.txt", "Sailors once")]
GENERATED = [("g1", "cats.txt", "The tabby cat"), ("g2", "ships.txt", "The harbour pilot"),
             ("g3", "apples.txt", "A cider press"), ("g4", "rivers.txt", "The old mill")]
"""Inverse cloze: a sentence is the question, the sentence before it to the one after it the evidence, and the
sentence is blanked from the documents the generated questions are scored on."""


def _sentence(text: str, start_with: str) -> tuple[int, int]:
    start = text.index(start_with)
    return start, text.index(".", start) + 1


def _write_data(folder):
    docs = folder / "docs"
    docs.mkdir()
    for name, text in TEXTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    with open(folder / "qa.jsonl", "w", encoding="utf-8") as out:
        for qid, query, doc, start_with in REAL:
            start, end = _sentence(TEXTS[doc], start_with)
            out.write(json.dumps({"qid": qid, "query": query, "evidence": [{"document": doc, "start": start,
                                                                             "end": end}]}) + "\n")
    with open(folder / "gen.jsonl", "w", encoding="utf-8") as out:
        for qid, doc, start_with in GENERATED:
            text = TEXTS[doc]
            start, end = _sentence(text, start_with)
            before = text.rindex(". ", 0, start - 2) + 2
            after = text.index(".", end + 1) + 1
            out.write(json.dumps({"qid": qid, "query": text[start:end], "kind": "cloze",
                                  "evidence": [{"document": doc, "start": before, "end": after}],
                                  "masked": [{"document": doc, "start": start, "end": end}]}) + "\n")


CONFIG = """
data: {documents: docs, qa: qa.jsonl, generated_qa: gen.jsonl}
chunkers:
  - {name: window, type: token_window, size: [60, 140], overlap: 0, tokenizer: characters}
  - {name: whole, type: as_given}
retrievers:
  - {name: bm25, type: bm25, tokenizer: whitespace, k1: 1.2, b: 0.75}
top_k: [3]
metrics: [ndcg, recall]
optimize: {ndcg: 1.0}
study: {sampler: grid, seed: 3, latency: off}
"""


@pytest.fixture(scope="module")
def generated_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated")
    _write_data(folder)
    (folder / "study.yaml").write_text(CONFIG, encoding="utf-8")
    return folder, optimize(folder / "study.yaml", progress=False)


WINDOW = {"type": "token_window", "overlap": 0.0, "tokenizer": "characters"}
CHUNKERS = {"window": lambda row: {**WINDOW, "size": int(row["param.window.size"])}, "whole": lambda row: {
    "type": "as_given"}}


def _ndcg_at_3_by_hand(folder, chunker: dict, blank: bool) -> float:
    """The generated questions' mean nDCG@3 for one chunker, from documents blanked here by hand,
    BM25 through an engine of its own, span relevance and pytrec_eval."""
    texts = dict(TEXTS)
    if blank:
        for _, doc, start_with in GENERATED:
            start, end = _sentence(texts[doc], start_with)
            texts[doc] = texts[doc][:start] + " " * (end - start) + texts[doc][end:]
    documents = Documents([Document(name, text, {}) for name, text in texts.items()], "by hand")
    spec = PipelineSpec.model_validate({"chunker": chunker, "top_k": 3, "retriever": {
        "type": "bm25", "tokenizer": {"type": "whitespace"}, "k1": 1.2, "b": 0.75}})
    chunking = chunk_documents(spec.chunker, documents, ChunkContext())
    qa = load_span_qa(folder / "gen.jsonl", load_documents(folder / "docs"))
    qrels = span_qrels(qa.evidence, chunking.spans, documents.index_of(), 0.5)
    ranking = Engine(chunking.corpus, device="cpu").run(spec, qa.queries)
    run = {qid: {chunking.corpus.doc_ids[row]: float(3 - rank) for rank, row in enumerate(ids) if row >= 0}
           for qid, ids in zip(qa.qids, ranking.ids)}  # scores by rank: ties kept in the engine's order
    truth = {qid: {chunking.corpus.doc_ids[group[0]]: 1 for group in groups} for qid, groups in zip(qa.qids, qrels)}
    per_query = pytrec_eval.RelevanceEvaluator(truth, {"ndcg_cut.3"}).evaluate(run)
    return float(np.mean([per_query[qid]["ndcg_cut_3"] for qid in qa.qids]))


def test_each_trial_is_scored_on_the_generated_questions_of_blanked_documents(generated_study):
    folder, outcome = generated_study
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert len(trials) == 3 and list(trials.columns[:3]) == ["trial", "value", "value.generated"]
    for row in trials.to_dict("records"):
        chunker = CHUNKERS[row["param.chunker"]](row)
        assert row["value.generated"] == pytest.approx(_ndcg_at_3_by_hand(folder, chunker, True), abs=1e-6), row
    row = trials[trials["param.window.size"] == 140].iloc[0]
    assert row["value.generated"] != pytest.approx(_ndcg_at_3_by_hand(folder, CHUNKERS["window"](row), False))


def test_study_json_summary_and_compare_show_generated_vs_real(generated_study):
    folder, outcome = generated_study
    out = outcome.output
    trust = json.loads((out / "study.json").read_text(encoding="utf-8"))["trust"]
    trials = pd.read_csv(out / "trials.csv")
    per_question = pd.read_parquet(out / "per_question.parquet")
    real = per_question.pivot(index="qid", columns="trial", values="objective")[trials["trial"]].to_numpy()
    assert trust["questions"] == {"real": 5, "generated": 4, "scored_on": 5}
    assert trust["real_winner"]["trial"] == json.loads((out / "study.json").read_text())["best_trial"]
    generated_best = trials.sort_values(["value.generated", "trial"], ascending=[False, True]).iloc[0]
    assert trust["generated_winner"]["trial"] == generated_best["trial"]
    position = trials.index[trials["trial"] == generated_best["trial"]][0]
    assert trust["generated_winner"]["real"] == pytest.approx(real[:, position].mean(), abs=1e-6)
    distinct = trials.drop_duplicates(["value", "value.generated"])
    if trust["tau"] is not None:
        assert trust["tau"] == pytest.approx(kendalltau(distinct["value"], distinct["value.generated"]).statistic,
                                             abs=1e-6)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Generated questions vs real" in summary
    assert f"generated set's winner, trial {trust['generated_winner']['trial']}" in summary
    result = CliRunner().invoke(app, ["compare", str(out), "--resamples", "200"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "generated questions vs real" in result.output
    assert f"real set's winner, trial {trust['real_winner']['trial']}" in result.output


def test_generated_chunkings_share_the_engine_and_blank_their_own_masked_sentences(tmp_path):
    _write_data(tmp_path)
    documents = load_documents(tmp_path / "docs")
    real = Chunkings(documents, load_span_qa(tmp_path / "qa.jsonl", documents), Cache(None), "cpu")
    generated = real.sharing(documents, load_span_qa(tmp_path / "gen.jsonl", documents))
    assert generated.engine is real.engine  # one cache, one pool of loaded models
    whole = PipelineSpec.model_validate({"chunker": {"type": "as_given"}, "top_k": 3, "retriever": {
        "type": "bm25", "tokenizer": {"type": "whitespace"}}})
    for chunked, shown in ((real.get(whole.chunker), True), (generated.get(whole.chunker), False)):
        contents = " ".join(chunked.corpus.contents)
        assert all((start_with in contents) == shown for _, _, start_with in GENERATED)
        assert "A cat purrs" in contents  # a real question's evidence stays in both


def test_the_section_says_what_tau_and_the_winners_mean():
    winner = {"trial": 3, "pipeline": "a", "real": 0.74, "interval": [0.7, 0.78], "generated": 0.6}
    trust = {"generated_qa": "gen.jsonl", "confidence": 0.95, "questions": {"real": 114, "generated": 300,
             "scored_on": 114}, "scored_on": "selection", "pipelines": 40, "tau": 0.62, "interval": [0.48, 0.74],
             "real_winner": winner, "generated_winner": {**winner, "trial": 9, "real": 0.71, "generated": 0.66},
             "difference": {"value": -0.03, "interval": [-0.05, -0.01], "p": 0.01}}
    assert trust_lines(trust)[1] == ("**tau 0.62 [0.48, 0.74]: the generated set orders pipelines mostly as the real "
                                     "one does; its winner scores 0.7100 on real questions against the real winner's "
                                     "0.7400 (significantly worse: -0.0300 [-0.050, -0.010]).**\n")
    trust.update(tau=0.1, interval=[-0.1, 0.3], difference={"value": -0.03, "interval": [-0.06, 0.01], "p": 0.2})
    assert "no better than chance" in trust_lines(trust)[1] and "(worse, within the noise:" in trust_lines(trust)[1]


def test_generated_qa_needs_documents(tmp_path):
    (tmp_path / "c.yaml").write_text("""
data: {qa: qa.jsonl, corpus: corpus.jsonl, generated_qa: gen.jsonl}
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace}]
""", encoding="utf-8")
    with pytest.raises(ConfigError, match="generated_qa .*give 'documents'"):
        load_config(tmp_path / "c.yaml")
