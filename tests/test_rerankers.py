"""sentence-transformers CrossEncoder rerankers through their real loading code: the pair-scorer
contract with one and two output labels, pairs scored once, and CrossEncoder's truncation."""

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from ragopt.stages.cache import Cache
from ragopt.data.qa import Queries
from ragopt.stages.engine import Engine
from ragopt.stages.rerankers._pairs import pair_features
from ragopt.stages.rerankers.cross_encoder import CrossEncoderScorer, CrossEncoderSpec
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.tokenizers import WhitespaceTokenizer
from ragopt.stages.spec import PipelineSpec
from ragopt.testing.rerankers import PairScorerContract, ScorerCase, scorer_of


@pytest.fixture(scope="module")
def prompted_reranker(tiny_xlmr_reranker, tmp_path_factory):
    """The one-label reranker saved with an instruction prompt used by default."""
    folder = tmp_path_factory.mktemp("prompted")
    model = CrossEncoder(str(tiny_xlmr_reranker), device="cpu", prompts={"q": "Instruct: find the answer. "},
                         default_prompt_name="q")
    model.save(str(folder))
    return folder


class TestCrossEncoderContract(PairScorerContract):
    @pytest.fixture(params=[1, 2, "prompted"])
    def case(self, request, ko_mini, tiny_xlmr_reranker, tiny_xlmr_two_labels, prompted_reranker):
        qa, corpus = ko_mini
        path = str({1: tiny_xlmr_reranker, 2: tiny_xlmr_two_labels, "prompted": prompted_reranker}[request.param])
        reference = CrossEncoder(path, device="cpu")
        if request.param == "prompted":
            assert reference.default_prompt_name == "q"

        def predict(pairs):
            if not pairs:
                return np.zeros(0)
            if request.param != 2:
                return reference.predict(pairs, convert_to_numpy=True)
            return reference.predict(pairs, apply_softmax=True, convert_to_numpy=True)[:, -1]

        return ScorerCase(CrossEncoderSpec(model=path, depth=4), corpus, Queries(qa.queries.texts[:6]), predict)


def test_two_labels_rank_by_the_probability_of_the_last_label_not_by_its_logit(ko_mini, tiny_xlmr_two_labels):
    """predict(apply_softmax=True)[:, -1] is sigmoid(l1 - l0): ranking by l1 alone (the last
    logit) orders these pairs differently."""
    qa, corpus = ko_mini
    pairs = [(qa.queries.texts[i % 6], corpus.contents[(5 * i) % len(corpus)]) for i in range(40)]
    reference = CrossEncoder(str(tiny_xlmr_two_labels), device="cpu")
    logits = reference.predict(pairs, activation_fn=None, convert_to_numpy=True)
    ours = scorer_of(CrossEncoderSpec(model=str(tiny_xlmr_two_labels))).score(pairs)
    assert logits.shape == (40, 2)
    assert not np.array_equal(np.argsort(-ours, kind="stable"), np.argsort(-logits[:, 1], kind="stable"))
    np.testing.assert_allclose(ours, reference.predict(pairs, apply_softmax=True)[:, 1], rtol=1e-5, atol=1e-6)


def test_cross_encoder_reranks_the_head_and_scores_each_pair_once(ko_mini, tiny_xlmr_reranker, tmp_path,
                                                                  monkeypatch, scored_pairs):
    qa, corpus = ko_mini
    bm25 = BM25Spec(tokenizer=WhitespaceTokenizer())
    reranker = CrossEncoderSpec(model=str(tiny_xlmr_reranker), depth=4)
    queries = Queries(qa.queries.texts[:6])
    engine = Engine(corpus, Cache(tmp_path), "cpu")
    first = engine.retrieve(bm25, queries, 8)
    reranked = engine.run(PipelineSpec(retriever=bm25, reranker=reranker, top_k=8), queries)
    model = CrossEncoder(str(tiny_xlmr_reranker), device="cpu")
    for q in range(6):
        head = first.ids[q, :4][first.ids[q, :4] >= 0]
        scores = model.predict([(queries.texts[q], corpus.contents[d]) for d in head])
        np.testing.assert_array_equal(reranked.ids[q, :len(head)], head[np.argsort(-scores, kind="stable")])
        np.testing.assert_array_equal(reranked.ids[q, 4:], first.ids[q, 4:])  # the tail keeps BM25's order
    pairs = int((first.ids[:, :4] >= 0).sum())
    assert len(scored_pairs) == pairs
    engine.run(PipelineSpec(retriever=bm25, reranker=reranker.model_copy(update={"depth": 2}), top_k=3), queries)
    assert len(scored_pairs) == pairs  # a shallower depth reuses the scored pairs
    monkeypatch.setattr(CrossEncoderScorer, "__init__", lambda *a: pytest.fail("reranker loaded"))
    again = Engine(corpus, Cache(tmp_path), "cpu").run(PipelineSpec(retriever=bm25, reranker=reranker, top_k=8),
                                                       queries)
    np.testing.assert_array_equal(again.ids, reranked.ids)  # a new process reads every score from disk


def test_cross_encoder_pairs_are_cut_longest_first_like_predict(ko_mini, tiny_xlmr_reranker):
    """With queries longer than half of max_length, CrossEncoder cuts query and passage alike
    (longest first); ragopt's pair tokenization gives the same ids as CrossEncoder.preprocess."""
    qa, corpus = ko_mini
    pairs = [(" ".join(qa.queries.texts[i:i + 3]), corpus.contents[i]) for i in range(6)]
    model = CrossEncoder(str(tiny_xlmr_reranker), device="cpu", max_length=40)
    features = model.preprocess(pairs)
    expected = [ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"])]
    assert pair_features(model.tokenizer, pairs, 40)["input_ids"] == expected
    separator = model.tokenizer.sep_token_id
    assert all(len(ids) == 40 and ids.index(separator) > 15 for ids in expected)


def test_a_cross_encoder_without_a_token_limit_cuts_pairs_to_its_position_table(ko_mini, tiny_xlmr_reranker):
    """A tokenizer that sets no model_max_length (as some community models' do) leaves the limit
    to the position table, which an XLM-R model counts from padding_idx + 1: 260 positions hold
    258 tokens. Longer pairs are cut there (with the warning), not run into an index error."""
    qa, corpus = ko_mini
    long_passage = " ".join(corpus.contents) * 2
    scorer = scorer_of(CrossEncoderSpec(model=str(tiny_xlmr_reranker), depth=2))
    with pytest.warns(UserWarning, match=r"1 of 2 query-passage pairs was truncated to fit .*'s 258 tokens"):
        scores = scorer.score([(qa.queries.texts[0], long_passage), (qa.queries.texts[0], corpus.contents[0])])
    assert np.all(np.isfinite(scores))
