"""Training a tuned bi-encoder with sentence-transformers' trainer (tiny random BERT, 8 pairs,
batch 4, 2 epochs): every loss logs every step, the curve's figures are what the saved model
scores, the saved model is the trained one, and the curve never changes the training."""

import json
import math

import numpy as np
import pytest
import pytrec_eval
import torch
from sentence_transformers import SentenceTransformer

from conftest import KO_MINI
from ragopt.errors import ModelError
from ragopt.stages.models import Locator
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tuning import FinetuneSpec
from ragopt.tune import train as train_module
from ragopt.tune.pool import TrainingTable
from ragopt.tune.train import CurveSet, estimate, train

QA = [json.loads(line) for line in (KO_MINI / "qa.jsonl").read_text(encoding="utf-8").splitlines()][:20]
PASSAGES = {d["doc_id"]: d["contents"] for d in map(json.loads, (KO_MINI / "corpus.jsonl").read_text(
    encoding="utf-8").splitlines())}
TABLE = TrainingTable({"anchor": [q["query"] for q in QA[:8]],
                       "positive": [PASSAGES[q["retrieval_gt"][0][0]] for q in QA[:8]]}, [q["qid"] for q in QA[:8]])
RELEVANT = {q["qid"]: {d for group in q["retrieval_gt"] for d in group} for q in QA[8:]}
CURVE = CurveSet(queries={q["qid"]: q["query"] for q in QA[8:]},
                 corpus={d: PASSAGES[d] for q in QA for group in q["retrieval_gt"] for d in group}, relevant=RELEVANT)


def settings(loss: str = "mnrl", **changed) -> FinetuneSpec:
    return FinetuneSpec(**{"loss": loss, "epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "margin": 0.0,
                           "mini_batch_size": 2, **changed})


def trained(tiny_bert, folder, loss="mnrl", seed=0, curve=CURVE, **changed) -> dict:
    folder.mkdir()
    return train(Locator()(str(tiny_bert)), DenseSpec(model=str(tiny_bert)), settings(loss, **changed), TABLE, folder,
                 "cpu", seed, curve)


def embeddings(model, texts, prompt_name=None) -> np.ndarray:
    """As the dense retriever encodes: model.encode with the spec's prompt name, normalized."""
    return model.encode(texts, prompt_name=prompt_name, normalize_embeddings=True, convert_to_numpy=True)


def held_out_scores(model, prompt_name=None) -> dict[str, float]:
    """ndcg@10 by pytrec_eval and hit@1 by hand, cosine over the curve's corpus, binary qrels."""
    ids = list(CURVE.corpus)
    queries = embeddings(model, list(CURVE.queries.values()), prompt_name)
    scores = queries @ embeddings(model, list(CURVE.corpus.values())).T
    run = {qid: {cid: float(s) for cid, s in zip(ids, row)} for qid, row in zip(CURVE.queries, scores)}
    qrels = {qid: {cid: 1 for cid in relevant} for qid, relevant in RELEVANT.items()}
    ndcg = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return {"ndcg@10": float(np.mean([v["ndcg_cut_10"] for v in ndcg.values()])),
            "hit@1": float(np.mean([ids[int(np.argmax(row))] in RELEVANT[qid] for qid, row in zip(CURVE.queries,
                                                                                                 scores)]))}


def weights(folder) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in SentenceTransformer(str(folder)).state_dict().items()}


@pytest.mark.parametrize("loss", ["mnrl", "cached_mnrl", "gist", "cached_gist"])
def test_every_loss_logs_each_step_and_its_curve_is_what_the_saved_model_scores(tiny_bert, tmp_path, monkeypatch,
                                                                                   loss):
    saved = []  # the in-memory model train() saves
    real_save = SentenceTransformer.save

    def save(model, *args, **kwargs):
        saved.append(model)
        return real_save(model, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "save", save)
    log = trained(tiny_bert, tmp_path / "model", loss)

    assert log["steps"] == 4 and log["device"] == "cpu" and log["precision"] == "fp32"
    assert [(step, epoch) for step, epoch, _ in log["loss"]] == [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]
    assert all(math.isfinite(value) for _, _, value in log["loss"])
    assert [(epoch, name) for epoch, name, _ in log["curve"]] == [
        (epoch, name) for epoch in (0, 1, 2) for name in ("ndcg@10", "hit@1")]
    assert set(log["versions"]) == {"torch", "transformers", "sentence-transformers", "datasets", "accelerate"}

    tuned = SentenceTransformer(str(tmp_path / "model"))
    last = {name: value for epoch, name, value in log["curve"] if epoch == 2}
    independent = held_out_scores(tuned)
    assert last["ndcg@10"] == pytest.approx(independent["ndcg@10"], abs=1e-6)
    assert last["hit@1"] == pytest.approx(independent["hit@1"], abs=1e-6)
    assert 0 < independent["ndcg@10"] < 1  # a figure that can differ, not an empty or a trivial ranking
    before = {name: value for epoch, name, value in log["curve"] if epoch == 0}
    assert before == pytest.approx(held_out_scores(SentenceTransformer(str(tiny_bert))), abs=1e-6)

    texts = list(CURVE.queries.values()) + list(CURVE.corpus.values())
    base = embeddings(SentenceTransformer(str(tiny_bert)), texts)
    assert np.abs(embeddings(tuned, texts) - base).max() > 1e-4
    (in_memory,) = saved
    np.testing.assert_allclose(embeddings(tuned, texts), embeddings(in_memory, texts), rtol=0, atol=1e-6)
    assert not (tmp_path / "model" / "README.md").exists()


def test_the_curve_never_steers_and_a_seed_gives_the_same_weights(tiny_bert, tmp_path):
    threads = torch.get_num_threads()
    trained(tiny_bert, tmp_path / "curve")
    trained(tiny_bert, tmp_path / "plain", curve=None)
    trained(tiny_bert, tmp_path / "again", curve=None)
    trained(tiny_bert, tmp_path / "seed1", seed=1, curve=None)
    with_curve, plain, again, other = (weights(tmp_path / name) for name in ("curve", "plain", "again", "seed1"))

    assert torch.get_num_threads() == threads
    for name, value in plain.items():
        np.testing.assert_array_equal(with_curve[name], value, err_msg=name)
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    assert any(not np.array_equal(other[name], value) for name, value in plain.items())  # the seed matters


def test_the_estimate_is_one_probe_step_times_the_steps_probed_once_per_setting(tiny_bert, monkeypatch):
    probes = []
    real_probe = train_module._probe
    monkeypatch.setattr(train_module, "_STEP_SECONDS", {})
    monkeypatch.setattr(train_module, "_probe", lambda *a: probes.append(a[2].batch_size) or real_probe(*a))
    base, dense = Locator()(str(tiny_bert)), DenseSpec(model=str(tiny_bert))

    one = estimate(base, dense, settings(epochs=1), TABLE, "cpu")
    two = estimate(base, dense, settings(epochs=2), TABLE, "cpu")
    three = estimate(base, dense, settings(epochs=1, batch_size=3), TABLE, "cpu")

    assert probes == [4, 3]
    step_4, step_3 = train_module._STEP_SECONDS.values()
    assert one == step_4 * 2 and two == step_4 * 4 and three == step_3 * 3  # ceil(8 / 4) and ceil(8 / 3) steps
    assert step_4 > 0 and step_3 > 0


def test_a_prompt_name_the_model_lacks_is_refused(tiny_bert, tmp_path):
    dense = DenseSpec(model=str(tiny_bert), query_prompt_name="missing")
    with pytest.raises(ModelError, match="no prompt named 'missing'"):
        train(Locator()(str(tiny_bert)), dense, settings(), TABLE, tmp_path, "cpu", 0)


def test_a_curve_without_a_judged_question_is_left_out(tiny_bert, tmp_path):
    unjudged = CurveSet(queries=CURVE.queries, corpus=CURVE.corpus, relevant={qid: set() for qid in CURVE.queries})
    log = trained(tiny_bert, tmp_path / "model", curve=unjudged, epochs=1)
    assert log["curve"] == [] and log["steps"] == 2


def test_training_and_the_curve_use_the_prompts_the_retriever_uses(tiny_bert, tmp_path):
    model = SentenceTransformer(str(tiny_bert))
    model.prompts = {"query": "질문에 답하는 문서를 찾으세요 질문: ", "document": ""}
    model.save(str(tmp_path / "prompted"))
    located = Locator()(str(tmp_path / "prompted"))
    base = SentenceTransformer(str(tmp_path / "prompted"))
    plain = held_out_scores(base, prompt_name=None)
    prompted = held_out_scores(base, prompt_name="query")
    assert plain != prompted

    for name, expected in ((None, plain), ("query", prompted)):
        folder = tmp_path / f"model-{name}"
        folder.mkdir()
        log = train(located, DenseSpec(model=str(located.path), query_prompt_name=name), settings(epochs=1), TABLE,
                    folder, "cpu", 0, CURVE)
        assert {metric: value for epoch, metric, value in log["curve"] if epoch == 0} == pytest.approx(expected,
                                                                                                      abs=1e-6)
