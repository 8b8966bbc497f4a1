"""A bi-encoder tuned inside a study (issue 18): cross-fitted so that no question is answered by a
model that trained on it, planted questions to prove it, the tuned winner exported and reproduced."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import KO_MINI, write_config
from ragopt.analysis.splits import fold_ids, holdout_mask
from ragopt.cli import app
from ragopt.data.qa import QASet, Queries, load_corpus
from ragopt.serving.pipeline import load_pipeline
from ragopt.stages.engine import Engine
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.hybrid import HybridSpec
from ragopt.stages.retrievers.tuning import FinetuneSpec
from ragopt.stages.spec import PipelineSpec
from ragopt.study import optimize
from ragopt.study.runs import StudyRuns
from ragopt.tune.crossfit import TRAINING_FILE, Questions, Tuner, read_tuning

SEED = 7
SPACE = """
data:
  qa: {qa}
  corpus: {corpus}
  domain_column: domain
retrievers:
  - name: bm25
    type: bm25
    tokenizer: whitespace
  - name: tiny
    type: dense
    model: {model}
    finetune:
      keep_base: true
      loss: mnrl
      epochs: 1
      learning_rate: 1.0e-3
      batch_size: 8
      negatives: 1
      negatives_from: model
      margin: 0.0                # a random model scores every passage about the same
top_k: [1, 5]
optimize: ndcg
study: {{sampler: grid, n_trials: 6, holdout: 0.3, seed: {seed}}}
"""
PLANTED_HELD = "PLANTED-HELD 질문"
PLANTED_FOLD = "PLANTED-F0 질문"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_bert):
    """ko-mini with one held-out question and one question of fold 0 rewritten to planted texts
    (the splits depend on the domains, the count and the seed, never on the texts)."""
    folder = tmp_path_factory.mktemp("tuned")
    rows = [json.loads(line) for line in (KO_MINI / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    domains = [r["domain"] for r in rows]
    held = holdout_mask(domains, len(rows), 0.3, SEED)
    folds = fold_ids(domains, held, 3, SEED)
    held_row, fold_row = int(np.flatnonzero(held)[0]), int(np.flatnonzero(folds == 0)[0])
    rows[held_row]["query"], rows[fold_row]["query"] = PLANTED_HELD, PLANTED_FOLD
    qa = folder / "qa.jsonl"
    qa.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = write_config(folder / "space.yaml", SPACE.format(qa=qa, corpus=KO_MINI / "corpus.jsonl", model=tiny_bert,
                                                             seed=SEED))
    outcome = optimize(config, progress=False)
    return outcome, rows, held, folds, held_row, fold_row


def _tuned_folders(output: Path) -> dict[str, Path]:
    """Every tuned model in the study's cache, by its part ('final', 'fold 1 of 3', ...)."""
    found = {}
    for folder in (output / "cache" / "tuned").iterdir():
        account = read_tuning(folder)
        if account is not None:
            found[account["part"]] = folder
    return found


def _trained_texts(folder: Path) -> set[str]:
    lines = (folder / TRAINING_FILE).read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["anchor"] for line in lines}


def test_no_held_out_question_reaches_training_and_each_fold_model_skips_its_own(planted):
    outcome, rows, held, folds, held_row, fold_row = planted
    models = _tuned_folders(outcome.output)
    assert set(models) == {"final", "fold 1 of 3", "fold 2 of 3", "fold 3 of 3"}
    for part, folder in models.items():
        texts = _trained_texts(folder)
        assert PLANTED_HELD not in texts, part
        account = read_tuning(folder)
        assert account["questions"]["held_out_in_training"] == 0
        trained = set(account["questions"]["real"])
        assert not trained & {rows[i]["qid"] for i in np.flatnonzero(held)}
        fold = None if part == "final" else int(part.split()[1]) - 1
        expected = {rows[i]["qid"] for i in np.flatnonzero(~held & (folds != fold))}
        assert trained == expected, part
    # the positive control: the planted fold-0 question trains every model but fold 0's
    assert PLANTED_FOLD not in _trained_texts(models["fold 1 of 3"])
    for part in ("fold 2 of 3", "fold 3 of 3", "final"):
        assert PLANTED_FOLD in _trained_texts(models[part])


def test_trials_hold_base_and_tuned_choices_and_the_tuned_model_differs(planted):
    outcome, *_ = planted
    trials = pd.read_csv(outcome.output / "trials.csv")
    assert set(trials["param.tiny.tuned"].dropna()) == {True, False}
    labels = set(trials["choice.model"])
    assert any(label.endswith("+ft") for label in labels) and any(not label.endswith("+ft") for label in labels)
    models = _tuned_folders(outcome.output)
    from sentence_transformers import SentenceTransformer

    texts = ["은행 예금", "신용점수"]
    base = SentenceTransformer(str(planted_model(outcome)), device="cpu").encode(texts)
    tuned = SentenceTransformer(str(models["final"]), device="cpu").encode(texts)
    assert np.abs(base - tuned).max() > 1e-4


def planted_model(outcome) -> Path:
    config = yaml.safe_load((outcome.output.parent / "space.yaml").read_text(encoding="utf-8"))
    return Path(config["retrievers"][1]["model"])


def test_every_question_is_answered_by_the_model_of_its_part(planted):
    outcome, rows, held, folds, *_ = planted
    trials = pd.read_csv(outcome.output / "trials.csv")
    tuned = trials[trials["choice.model"].str.endswith("+ft") & (trials["choice.retriever"] == "dense")]
    trial = int(tuned.sort_values("param.top_k" if "param.top_k" in tuned else "trial").iloc[-1]["trial"])
    ranking = StudyRuns(outcome.output).ranking(trial)
    corpus = load_corpus(KO_MINI / "corpus.jsonl")
    engine = Engine(corpus, device="cpu")
    models = _tuned_folders(outcome.output)
    depth = ranking.shape[1]
    for part, folder in models.items():
        answered = held if part == "final" else folds == int(part.split()[1]) - 1
        spec = PipelineSpec(retriever=DenseSpec(model=str(folder)), top_k=depth)
        texts = [rows[i]["query"] for i in np.flatnonzero(answered)]
        expected = engine.run(spec, Queries(texts)).ids
        assert np.array_equal(ranking[answered], expected), part


@pytest.fixture(scope="module")
def tuned_only(tmp_path_factory, tiny_bert):
    """A study whose every pipeline is tuned, so its winner is."""
    folder = tmp_path_factory.mktemp("tuned-only")
    text = SPACE.format(qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl", model=tiny_bert, seed=SEED)
    text = text.replace("keep_base: true", "keep_base: false").replace(
        "  - name: bm25\n    type: bm25\n    tokenizer: whitespace\n", "").replace(
        "seed: 7}", "seed: 7, per_domain: true, min_domain_questions: 8}")
    return optimize(write_config(folder / "space.yaml", text), progress=False)


def test_best_yaml_exports_the_final_model_beside_it_and_reproduces_its_ranking(tuned_only, tmp_path):
    output = tuned_only.output
    best = yaml.safe_load((output / "best.yaml").read_text(encoding="utf-8"))
    model = best["pipeline"]["retriever"]["model"]
    assert model.startswith("./tuned/tiny-bert-mnrl-")
    assert best["provenance"]["tuned"][model]["part"] == "final"
    assert model in best["provenance"]["models"]
    moved = Path(shutil.copytree(output, tmp_path / "moved"))
    (output / "cache").rename(output / "elsewhere")  # the cache it was trained in is gone
    pipeline = load_pipeline(moved / "best.yaml", KO_MINI / "corpus.jsonl", device="cpu")
    ranking = StudyRuns(moved).ranking(best["evaluation"]["trial"])
    rows = [json.loads(line) for line in (KO_MINI / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    held = holdout_mask([r["domain"] for r in rows], len(rows), 0.3, SEED)
    texts = [rows[i]["query"] for i in np.flatnonzero(held)]
    got = pipeline.engine.run(pipeline.spec, Queries(texts), ranking.shape[1]).ids
    assert np.array_equal(got, ranking[held])


def test_compare_by_model_lists_base_and_tuned(planted):
    outcome, *_ = planted
    result = CliRunner().invoke(app, ["compare", str(outcome.output), "--by", "model", "--metric", "ndcg@5",
                                      "--resamples", "500"])
    assert result.exit_code == 0, result.output
    matrix = pd.read_csv(outcome.output / "compare" / "matrix-model.ndcg@5.csv")
    choices = set(matrix["choice"])
    assert any(c.endswith("+ft") for c in choices) and any(not c.endswith("+ft") and c != "bm25" for c in choices)


def test_serve_and_the_llama_index_retriever_load_a_tuned_winner(tuned_only, tmp_path):
    """best.yaml names its tuned model relative to itself: the HTTP service and the LlamaIndex
    retriever find it from a moved output folder and rank as load_pipeline does."""
    from fastapi.testclient import TestClient
    from llama_index.core.schema import TextNode

    from ragopt.serving.integrations.llama_index import RagoptRetriever
    from ragopt.serving.serve import build

    moved = Path(shutil.copytree(tuned_only.output / "tuned", tmp_path / "out" / "tuned")).parent
    shutil.copy(tuned_only.output / "best.yaml", moved / "best.yaml")
    corpus = KO_MINI / "corpus.jsonl"
    question = "신용점수는 어떤 정보로 매겨지나요?"
    expected = [(hit.doc_id, hit.score) for hit in load_pipeline(moved / "best.yaml", corpus,
                                                                 device="cpu").retrieve(question)[0]]
    assert expected
    with TestClient(build(moved / "best.yaml", corpus, None)) as client:
        response = client.post("/retrieve", json={"query": question})
    assert response.status_code == 200, response.text
    served = [(p["doc_id"], p["score"]) for p in response.json()["results"][0]["passages"]]
    assert [d for d, _ in served] == [d for d, _ in expected]
    assert np.allclose([s for _, s in served], [s for _, s in expected], atol=1e-6)
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    nodes = [TextNode(id_=r["doc_id"], text=r["contents"], metadata=r["metadata"]) for r in rows]
    found = RagoptRetriever(moved / "best.yaml", nodes, device="cpu").retrieve(question)
    assert [(n.node.node_id, pytest.approx(n.score, abs=1e-6)) for n in found] == expected


class _Recording(Tuner):
    """A Tuner whose 'training' records the questions each model may see, instead of training."""

    def __init__(self, texts: list[str], held: np.ndarray) -> None:
        qa = QASet([f"q{i}" for i in range(len(texts))], Queries(texts), [[[0]] for _ in texts], None)
        super().__init__(Questions(qa, lambda spec: None), held, None, {}, SEED,
                         fold_ids=lambda k: fold_ids(None, held, k, SEED))
        self.trained: dict[str, set[int]] = {}

    def _train(self, spec, dense, fold):
        folder = Path(f"/model-{len(self.trained)}")
        self.trained[str(folder)] = set(np.flatnonzero(self.allowed(spec, dense.finetune, fold)).tolist())
        return folder


def _answered_by_a_model_that_trained_on_them(tuner: _Recording, spec: PipelineSpec) -> list[int]:
    found = []
    for concrete, rows in tuner.plan(spec):
        for part in concrete.retriever.components() or [concrete.retriever]:
            if part.model in tuner.trained:
                found += sorted(tuner.trained[part.model] & set(rows.tolist()))
    return found


def test_a_model_trained_under_one_split_never_answers_under_another():
    """A hybrid of two tuned entries deals its questions by the first one's folds; the second
    entry alone deals them by its own. Its models must not be shared between the two splits: a
    fold model of the 3-fold split trained on questions the 5-fold split asks it."""
    held = np.zeros(30, dtype=bool)
    held[:6] = True
    tuner = _Recording([f"question {i}" for i in range(30)], held)
    three = DenseSpec(model="a", finetune=FinetuneSpec(folds=3))
    five = DenseSpec(model="b", finetune=FinetuneSpec(folds=5))
    hybrid = PipelineSpec(retriever=HybridSpec(retrievers=[three, five], fusion="rrf", rrf_k=60), top_k=5)
    alone = PipelineSpec(retriever=five, top_k=5)
    for spec in (hybrid, alone, hybrid):
        assert _answered_by_a_model_that_trained_on_them(tuner, spec) == []
    assert len(tuner.trained) == 2 * (3 + 1) + (5 + 1)  # both entries under 3 folds, the second under 5


def test_a_question_asked_twice_never_trains_the_model_that_answers_its_twin():
    """Two real questions with the same text (up to NFC and spacing), one held out: the other
    does not train the final model, which answers the held-out one; likewise across folds."""
    texts = [f"question {i}" for i in range(12)]
    held = holdout_mask(None, 12, 0.25, SEED)
    twin_held, twin = int(np.flatnonzero(held)[0]), int(np.flatnonzero(~held)[0])
    texts[twin_held], texts[twin] = "은행  예금은?", unicodedata.normalize("NFD", "은행 예금은?")
    tuner = _Recording(texts, held)
    spec = PipelineSpec(retriever=DenseSpec(model="a", finetune=FinetuneSpec(folds=3)), top_k=5)
    assert _answered_by_a_model_that_trained_on_them(tuner, spec) == []
    final = tuner.allowed(spec, spec.retriever.finetune, None)
    assert not final[twin] and final[~held].sum() == (~held).sum() - 1


def test_per_domain_winners_name_the_tuned_models_of_the_output_folder(tuned_only, tmp_path):
    output = tuned_only.output
    files = sorted((output / "per_domain").glob("*.yaml"))
    assert len(files) == 4
    for path in files:
        model = yaml.safe_load(path.read_text(encoding="utf-8"))["pipeline"]["retriever"]["model"]
        assert model.startswith("../tuned/tiny-bert-mnrl-") and (path.parent / model).is_dir()
    pipeline = load_pipeline(files[0], KO_MINI / "corpus.jsonl", device="cpu")
    assert Path(pipeline.spec.retriever.model).parent == (output / "tuned").resolve()
