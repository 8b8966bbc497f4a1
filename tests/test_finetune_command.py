"""`ragopt finetune`: one tuned model trained without a study on the questions that are not held
out, judged against its base on the held-out ones, and exported as a tuned.yaml that loads anywhere."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import KO_MINI, write_config
from ragopt.analysis.splits import holdout_mask
from ragopt.analysis.stats import bootstrap_ci, paired_test
from ragopt.cli import app
from ragopt.data.qa import Queries, load_dataset
from ragopt.scoring.evaluation import Evaluator
from ragopt.serving.pipeline import load_pipeline
from ragopt.stages.cache import Cache
from ragopt.stages.engine import Engine
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.spec import PipelineSpec
from ragopt.study.finetune import ONE_MODEL, finetune
from ragopt.tune.crossfit import read_tuning, trained_on

SEED = 7
HOLDOUT = 0.3
CONFIG = """
data:
  qa: @KO_MINI@/qa.jsonl
  corpus: @KO_MINI@/corpus.jsonl
  domain_column: domain
retrievers:
  - name: bm25
    type: bm25
    tokenizer: whitespace
  - name: tiny
    type: dense
    model: {model}
    finetune:
      loss: {loss}
      epochs: 2
      learning_rate: 1.0e-3
      batch_size: 8
      negatives: 0
top_k: [1, 5]
optimize: ndcg
study: {{holdout: {holdout}, seed: {seed}}}
"""
runner = CliRunner()


def _config(folder, model, loss="mnrl", holdout=HOLDOUT):
    return write_config(folder / "space.yaml", CONFIG.format(model=model, loss=loss, holdout=holdout, seed=SEED))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_bert):
    """The command run once on ko-mini with 30% of each domain held out."""
    folder = tmp_path_factory.mktemp("finetune")
    config = _config(folder, tiny_bert)
    result = runner.invoke(app, ["finetune", str(config), "-o", str(folder / "out"), "-q"])
    assert result.exit_code == 0, result.output
    return folder / "out", result.output


@pytest.fixture(scope="module")
def ko_mini():
    qa, corpus = load_dataset(qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl", domain_column="domain")
    return qa, corpus, holdout_mask(qa.domains, len(qa), HOLDOUT, SEED)


def _folder(output):
    (folder,) = (output / "tuned").iterdir()
    return folder


def _dense(model) -> PipelineSpec:
    return PipelineSpec(retriever=DenseSpec(model=str(model)), top_k=5)


def test_held_out_means_equal_an_independent_evaluation_of_base_and_tuned(tuned, ko_mini, tiny_bert):
    output, shown = tuned
    qa, corpus, held = ko_mini
    report = json.loads((output / "finetune.json").read_text(encoding="utf-8"))
    assert (report["questions"], report["held_out"]) == (len(qa), int(held.sum())) and 0 < held.sum() < len(qa)
    (model,) = report["models"]
    assert model["scored_on"] == "held-out" and model["questions"] == int(held.sum())
    evaluator = Evaluator(Engine(corpus, Cache(None), "cpu"), qa, [1, 5, 10], {"ndcg": 1.0})
    base = evaluator.evaluate(_dense(tiny_bert))[0].per_query
    ours = evaluator.evaluate(_dense(_folder(output)))[0].per_query
    for metric in ("hit@1", "ndcg@10"):
        compared = model["compared"][metric]
        assert compared["base"]["mean"] == pytest.approx(base[metric][held].mean(), abs=1e-9)
        assert compared["tuned"]["mean"] == pytest.approx(ours[metric][held].mean(), abs=1e-9)
        _, low, high = bootstrap_ci(ours[metric][held], seed=SEED)
        tuned_side = compared["tuned"]
        assert [tuned_side["low"], tuned_side["high"]] == pytest.approx([float(low), float(high)], abs=1e-9)
        paired = paired_test(ours[metric][held], base[metric][held], seed=SEED)
        assert compared["tuned_minus_base"] == pytest.approx(dataclasses.asdict(paired), abs=1e-9)
    assert not np.array_equal(base["ndcg@10"][held], ours["ndcg@10"][held])  # the tuned folder ranks otherwise
    text = (output / "finetune.md").read_text(encoding="utf-8")
    assert f"On {int(held.sum())} questions (held-out)" in text and "| ndcg@10 |" in text
    assert "hit@1" in shown and "ndcg@10" in shown  # the printed table


def test_the_model_trained_on_every_question_but_the_held_out_ones(tuned, ko_mini, tiny_bert):
    output, _ = tuned
    qa, _, held = ko_mini
    folder = _folder(output)
    seen = trained_on([folder])
    assert seen == {q for q, h in zip(qa.qids, held) if not h}  # in-batch negatives only: no question dropped
    account = read_tuning(folder)
    assert account["part"] == "final" and account["questions"]["held_out_in_training"] == 0
    (model,) = json.loads((output / "finetune.json").read_text(encoding="utf-8"))["models"]
    assert (model["rows"], model["training_questions"]) == (account["rows"], len(account["questions"]["real"]))
    from sentence_transformers import SentenceTransformer

    texts = [qa.queries.texts[0]]
    before, after = SentenceTransformer(str(tiny_bert)).encode(texts), SentenceTransformer(str(folder)).encode(texts)
    assert np.abs(before - after).max() > 1e-4


def test_tuned_yaml_loads_after_the_folder_moves_and_ranks_like_the_tuned_folder(tuned, ko_mini, tmp_path):
    output, _ = tuned
    qa, corpus, held = ko_mini
    folder = _folder(output)
    written = yaml.safe_load((output / "tuned.yaml").read_text(encoding="utf-8"))
    assert written["pipeline"]["retriever"]["model"] == f"./tuned/{folder.name}"
    assert written["pipeline"]["top_k"] == 5 and "finetune" not in written["pipeline"]["retriever"]
    assert f"./tuned/{folder.name}" in written["provenance"]["models"]
    assert written["provenance"]["tuned"][f"./tuned/{folder.name}"]["part"] == "final"
    shutil.copytree(output, tmp_path / "copied", ignore=shutil.ignore_patterns("cache"))
    moved = shutil.move(tmp_path / "copied", tmp_path / "moved")
    questions = [t for t, h in zip(qa.queries.texts, held) if h]
    found = load_pipeline(moved / "tuned.yaml", KO_MINI / "corpus.jsonl").retrieve(questions)
    expected = Engine(corpus, Cache(None), "cpu").run(_dense(folder), Queries(questions), 5).ids
    assert [[hit.doc_id for hit in hits] for hits in found] == [[corpus.doc_ids[r] for r in row] for row in expected]


def test_without_a_holdout_it_warns_and_compares_nothing(tmp_path, tiny_bert):
    config = _config(tmp_path, tiny_bert, holdout=0)
    with pytest.warns(UserWarning, match="no honest score exists"):
        done = finetune(config, tmp_path / "out", progress=False)
    (model,) = json.loads((tmp_path / "out" / "finetune.json").read_text(encoding="utf-8"))["models"]
    assert model["compared"] is None and model["scored_on"] is None and done.models[0].compared is None
    assert (tmp_path / "out" / "tuned.yaml").exists()
    assert "comparison" not in yaml.safe_load((tmp_path / "out" / "tuned.yaml").read_text())["evaluation"]


@pytest.mark.parametrize("setting", ["loss: [mnrl, gist]", "epochs: {low: 1, high: 3}"])
def test_several_values_of_a_setting_are_refused(tmp_path, setting):
    text = CONFIG.format(model="unused-model", loss="mnrl", holdout=HOLDOUT, seed=SEED)
    key = setting.split(":")[0]
    text = "\n".join(f"      {setting}" if line.strip().startswith(f"{key}:") else line for line in text.splitlines())
    config = write_config(tmp_path / "space.yaml", text)
    result = runner.invoke(app, ["finetune", str(config), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"tiny.finetune.{key} has several values; {ONE_MODEL}" in " ".join(result.output.split())
    assert ONE_MODEL == ("ragopt finetune trains one model; give one value per setting or search them with ragopt "
                         "optimize")
    assert not (tmp_path / "out").exists()


def _curve(output, kind):
    """tuning.csv's held-out values of the final model by epoch."""
    table = pd.read_csv(output / "tuning.csv")
    assert set(table["part"]) == {"final"}  # no fold model: nothing is cross-fitted here
    rows = table[(table["kind"] == kind) & (table["on"] == "held-out")]
    return dict(zip(rows["epoch"].astype(int), rows["value"]))


def test_tuning_csv_has_the_loss_and_a_held_out_curve_that_ends_at_the_tuned_score(tuned):
    """sentence-transformers' evaluator during training and ragopt's Evaluator after it agree:
    epoch 0 is the base model's held-out nDCG@10, the last epoch the tuned model's."""
    output, _ = tuned
    (model,) = json.loads((output / "finetune.json").read_text(encoding="utf-8"))["models"]
    for metric in ("ndcg@10", "hit@1"):
        curve = _curve(output, metric)
        assert sorted(curve) == [0, 1, 2]
        assert curve[0] == pytest.approx(model["compared"][metric]["base"]["mean"], abs=1e-6)
        assert curve[2] == pytest.approx(model["compared"][metric]["tuned"]["mean"], abs=1e-6)
    loss = pd.read_csv(output / "tuning.csv").query("kind == 'loss'")
    assert loss["step"].tolist() == list(range(1, len(loss) + 1)) and np.isfinite(loss["value"]).all()
    assert len(loss) == 2 * -(-model["rows"] // 8)  # 2 epochs of batches of 8


TWO = CONFIG.replace("top_k:", """  - name: tiny2
    type: dense
    model: {model}
    finetune: {{loss: mnrl, epochs: 1, learning_rate: 1.0e-4, batch_size: 8, negatives: 0}}
top_k:""")


def test_each_tuned_entry_gets_its_tuned_yaml_and_retriever_picks_one(tmp_path, tiny_bert):
    config = write_config(tmp_path / "two.yaml", TWO.format(model=tiny_bert, loss="mnrl", holdout=HOLDOUT, seed=SEED))
    done = finetune(config, progress=False)
    assert done.output == tmp_path / "two-finetune"
    assert [(m.retriever, m.best) for m in done.models] == [("tiny", "tuned-tiny.yaml"), ("tiny2", "tuned-tiny2.yaml")]
    assert len(list((done.output / "tuned").iterdir())) == 2 and not (done.output / "tuned.yaml").exists()
    again = finetune(config, retriever="tiny2", progress=False)
    assert [(m.retriever, m.best) for m in again.models] == [("tiny2", "tuned.yaml")]
    assert not list(again.output.glob("tuned-*.yaml")) and len(list((again.output / "tuned").iterdir())) == 1
    assert again.models[0].seconds == done.models[1].seconds  # the same model, found in the cache
    for name, message in (("bm25", "'bm25' of {} has no finetune: block"), ("tiny3", "did you mean 'tiny'")):
        result = runner.invoke(app, ["finetune", str(config), "--retriever", name])
        assert result.exit_code == 2 and message.format(config) in " ".join(result.output.split()), result.output


DOCUMENTS = """
data: {{documents: docs, qa: qa.jsonl}}
chunkers:
  - {{name: window, type: token_window, size: {size}, overlap: 0.0, tokenizer: characters}}
retrievers:
  - name: tiny
    type: dense
    model: {model}
    finetune: {{loss: mnrl, epochs: 1, learning_rate: 1.0e-3, batch_size: 16, negatives: 0}}
top_k: [1, 3]
study: {{holdout: 0.3, seed: {seed}}}
"""


def test_over_documents_it_trains_on_the_chunkers_passages_and_exports_the_chunker(tmp_path, tiny_bert):
    from test_trust import _write_data

    def space(size):
        return DOCUMENTS.format(size=size, model=tiny_bert, seed=SEED)

    _write_data(tmp_path)
    config = write_config(tmp_path / "docs.yaml", space(140))
    done = finetune(config, tmp_path / "out", progress=False)
    (model,) = done.models
    written = yaml.safe_load((tmp_path / "out" / "tuned.yaml").read_text(encoding="utf-8"))["pipeline"]
    assert written["chunker"]["type"] == "token_window" and written["chunker"]["size"] == 140
    qa = [json.loads(line) for line in (tmp_path / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    held = holdout_mask(None, len(qa), HOLDOUT, SEED)
    assert model.questions == int(held.sum()) and model.training_questions == len(qa) - int(held.sum())
    assert not trained_on([tmp_path / "out" / written["retriever"]["model"]]) & {
        q["qid"] for q, h in zip(qa, held) if h}
    curve = _curve(tmp_path / "out", "ndcg@10")
    assert curve[0] == pytest.approx(model.compared["ndcg@10"].base.mean, abs=1e-6)
    assert curve[1] == pytest.approx(model.compared["ndcg@10"].tuned.mean, abs=1e-6)
    several = write_config(tmp_path / "several.yaml", space([60, 140]))
    result = runner.invoke(app, ["finetune", str(several)])
    assert result.exit_code == 2 and f"window.size has several values; {ONE_MODEL}" in " ".join(result.output.split())


GENERATED_ONLY = """
data: {{documents: docs, qa: qa.jsonl, generated_qa: gen.jsonl}}
chunkers: [{{name: whole, type: as_given}}]
retrievers:
  - name: tiny
    type: dense
    model: {model}
    finetune: {{loss: mnrl, epochs: 1, learning_rate: 1.0e-3, batch_size: 2, negatives: 0, questions: generated}}
top_k: [3]
study: {{holdout: 0, seed: {seed}}}
"""


def test_trained_on_generated_questions_only_it_is_judged_on_every_real_question(tmp_path, tiny_bert):
    """No real question trains the model, so all of them judge it, even without a holdout."""
    from test_trust import GENERATED, REAL, _write_data

    _write_data(tmp_path)
    config = tmp_path / "generated.yaml"
    config.write_text(GENERATED_ONLY.format(model=tiny_bert, seed=SEED), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "no honest score" warning
        (model,) = finetune(config, tmp_path / "out", progress=False).models
    assert (model.scored_on, model.questions) == ("every real question", len(REAL))
    assert (model.training_questions, model.generated_questions) == (0, len(GENERATED))
    folder = tmp_path / "out" / "tuned" / Path(yaml.safe_load((tmp_path / "out" / "tuned.yaml").read_text(
        encoding="utf-8"))["pipeline"]["retriever"]["model"]).name
    assert trained_on([folder]) == {qid for qid, *_ in GENERATED}
    assert set(model.compared) == {"hit@1", "ndcg@10"}
