"""What a tuned bi-encoder trains on: every relevant passage of the rows the study allows, the
hard negatives per question, GIST's triplets, generated questions that repeat an excluded one
left out."""

import unicodedata

import numpy as np
import pytest

from ragopt.data.qa import Corpus
from ragopt.stages.engine import Engine
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tuning import FinetuneSpec
from ragopt.tune import pool
from ragopt.tune.negatives import mine
from ragopt.tune.pool import TrainingSource, TrainingTable, training_table, unseen_generated

PASSAGES = ["p0 예금자보호", "p1 신용점수", "p2 국채", "p3 채권 가격", "p4 해고예고", "p5 퇴직금"]
QUESTIONS = ["q0 예금은?", "q1 국채와 채권은?", "q2 해고는?", "q3 퇴직금과 신용은?"]
GROUPS = [[[0]], [[2], [3, 2]], [[4]], [[5], [1, 5]]]
"""q1 and q3 have two groups; a row repeated across groups is one positive."""
DENSE = DenseSpec(model="unused", query_prefix="query: ", passage_prefix="passage: ")


@pytest.fixture
def hand():
    corpus = Corpus([f"d{i}" for i in range(6)], PASSAGES)
    return TrainingSource(Engine(corpus, device="cpu"), ["a", "b", "c", "d"], QUESTIONS, GROUPS)


@pytest.fixture
def mined(monkeypatch):
    """Fixed negatives per question (rows of the hand corpus), standing in for the miner."""
    asked = []

    def fixed(source, rows, dense, ft, bm25, progress=False):
        asked.append(rows.tolist())
        table = np.array([[2, 3], [4, -1], [-1, -1], [0, 4]], dtype=np.int32)
        return table[rows, :ft.negatives]

    monkeypatch.setattr(pool, "mine", fixed)
    return asked


def test_positives_are_every_relevant_row_of_every_group_once(hand):
    assert [hand.positives(i) for i in range(4)] == [[0], [2, 3], [4], [5, 1]]


def test_without_negatives_a_row_per_question_and_relevant_passage_with_the_prefixes(hand):
    table = training_table([(hand, np.array([3, 0, 1]))], DENSE, FinetuneSpec(negatives=0), [])
    assert table.columns == {
        "anchor": ["query: q3 퇴직금과 신용은?"] * 2 + ["query: q0 예금은?"] + ["query: q1 국채와 채권은?"] * 2,
        "positive": ["passage: p5 퇴직금", "passage: p1 신용점수", "passage: p0 예금자보호", "passage: p2 국채",
                     "passage: p3 채권 가격"]}
    assert table.qids == ["d", "d", "a", "b", "b"] and len(table) == 5 and table.dropped == 0


def test_n_tuples_keep_questions_with_every_negative_and_count_the_pairs_left_out(hand, mined):
    table = training_table([(hand, np.arange(4))], DENSE, FinetuneSpec(loss="mnrl", negatives=2), [])
    assert mined == [[0, 1, 2, 3]]
    assert table.qids == ["a", "d", "d"]
    assert table.columns["positive"] == ["passage: p0 예금자보호", "passage: p5 퇴직금", "passage: p1 신용점수"]
    assert table.columns["negative_1"] == ["passage: p2 국채", "passage: p0 예금자보호", "passage: p0 예금자보호"]
    assert table.columns["negative_2"] == ["passage: p3 채권 가격", "passage: p4 해고예고", "passage: p4 해고예고"]
    assert table.dropped == 2 + 1  # q1's two positives lack a second negative, q2 has none


@pytest.mark.parametrize("loss", ["gist", "cached_gist"])
def test_gist_takes_one_negative_column_one_triplet_per_negative(hand, mined, loss):
    table = training_table([(hand, np.arange(4))], DENSE, FinetuneSpec(loss=loss, negatives=2), [])
    assert list(table.columns) == ["anchor", "positive", "negative_1"]
    assert len(table) == 1 * 2 + 2 * 1 + 0 + 2 * 2 and table.dropped == 1
    assert list(zip(table.qids, table.columns["positive"], table.columns["negative_1"]))[:4] == [
        ("a", "passage: p0 예금자보호", "passage: p2 국채"), ("a", "passage: p0 예금자보호", "passage: p3 채권 가격"),
        ("b", "passage: p2 국채", "passage: p4 해고예고"), ("b", "passage: p3 채권 가격", "passage: p4 해고예고")]
    pairs = training_table([(hand, np.arange(4))], DENSE, FinetuneSpec(loss=loss, negatives=0), [])
    assert list(pairs.columns) == ["anchor", "positive"] and len(pairs) == 6 and pairs.dropped == 0


def test_parts_follow_one_another_and_the_key_is_the_content(hand, mined):
    generated = TrainingSource(hand.engine, ["g0", "g1"], ["생성 질문", "또 다른 질문"], [[[1]], [[2]]], generated=True)
    ft = FinetuneSpec(loss="mnrl", negatives=1)
    table = training_table([(hand, np.array([2, 0])), (generated, np.array([1]))], DENSE, ft, [])
    assert mined == [[2, 0], [1]]
    assert table.qids == ["a", "g1"] and table.dropped == 1
    assert table.columns["anchor"] == ["query: q0 예금은?", "query: 또 다른 질문"]
    assert table.columns["negative_1"] == ["passage: p2 국채", "passage: p4 해고예고"]
    same = TrainingTable({k: list(v) for k, v in table.columns.items()}, ["x", "y"])
    assert same.key() == table.key()
    changed = TrainingTable({**table.columns, "anchor": ["query: q0 예금은?", "query: 또 다른 질문 "]}, table.qids)
    assert changed.key() != table.key()


def test_a_generated_question_repeating_an_excluded_one_is_left_out(hand):
    excluded = ["은행이 문을 닫으면 맡긴 돈은?", "신용점수는 어떻게 매겨지나요?"]
    texts = [unicodedata.normalize("NFD", "은행이  문을 닫으면\n맡긴 돈은? "),  # the first, decomposed and respaced
             "은행이 문을 닫으면 맡긴 돈은",  # not the same question: no question mark
             "신용점수는 어떻게 매겨지나요?",
             "국채는 무엇인가요?"]
    generated = TrainingSource(hand.engine, ["g0", "g1", "g2", "g3"], texts, [[[0]]] * 4, generated=True)
    rows = unseen_generated(generated, excluded)
    assert rows.tolist() == [1, 3] and rows.dtype == np.int64
    assert unseen_generated(generated, []).tolist() == [0, 1, 2, 3]


def test_the_table_holds_what_the_miner_found(ko_mini, tiny_bert):
    qa, corpus = ko_mini
    nearest = [[[int(i)]] for i in np.argmax(_vectors(tiny_bert, qa.queries.texts) @
                                             _vectors(tiny_bert, corpus.contents).T, axis=1)]
    train = TrainingSource(Engine(corpus, device="cpu"), qa.qids, qa.queries.texts, nearest)
    dense = DenseSpec(model=str(tiny_bert), passage_prefix="문서: ")
    ft, rows = FinetuneSpec(loss="cached_mnrl", negatives=2, margin=0.01), np.arange(0, 48, 2)
    found = mine(train, rows, dense, ft, [])
    table = training_table([(train, rows)], dense, ft, [])
    full = [(qa.qids[i], row) for i, row in zip(rows, found) if (row >= 0).all()]
    assert table.qids == [q for q, _ in full] and table.dropped == len(rows) - len(full) and len(full) > 10
    for k in (1, 2):
        assert table.columns[f"negative_{k}"] == ["문서: " + corpus.contents[row[k - 1]] for _, row in full]
    assert not any(p == n for p, n in zip(table.columns["positive"], table.columns["negative_1"]))


def _vectors(folder, texts):
    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(str(folder), device="cpu").encode(texts)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
