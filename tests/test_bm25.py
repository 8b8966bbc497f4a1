"""Korean tokenizers and the re-weightable BM25, checked rank for rank against bm25s itself."""

import bm25s
import numpy as np
import pytest

from ragopt import retrievers
from ragopt.cache import Cache
from ragopt.data import Queries
from ragopt.retrievers.bm25 import BM25Retriever, TermIndex, _token_arrays
from ragopt.retrievers.tokenizers import tokenize
from ragopt.spec import (
    BM25Spec,
    CharNgramTokenizer,
    HuggingFaceTokenizer,
    KiwiTokenizer,
    MecabTokenizer,
    WhitespaceTokenizer,
)


def test_kiwi_keeps_one_character_words_and_content_filter_drops_particles():
    text = "세법이 바뀌면 집을 살 때 내는 세금도 달라진다"
    everything = tokenize(KiwiTokenizer(), [text])[0]
    content = tokenize(KiwiTokenizer(pos="content"), [text])[0]
    assert "집" in everything and "을" in everything
    assert "집" in content and "을" not in content and "이" not in content
    assert set(content) < set(everything)


def test_mecab_whitespace_and_char_ngrams():
    assert "은행" in tokenize(MecabTokenizer(), ["지방은행이 전환한다"])[0]
    assert tokenize(WhitespaceTokenizer(), ["AI 모델, 검색!"])[0] == ["ai", "모델", "검색"]
    assert tokenize(CharNgramTokenizer(n=2), ["은행법 집"])[0] == ["은행", "행법", "집"]


def test_huggingface_tokenizer_from_a_local_model(tiny_bert):
    tokens = tokenize(HuggingFaceTokenizer(model=str(tiny_bert)), ["예금자보호제도"])[0]
    assert tokens and "".join(t.removeprefix("##") for t in tokens) == "예금자보호제도"


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_scores_equal_bm25s(ko_mini, method):
    qa, corpus = ko_mini
    spec = WhitespaceTokenizer()
    corpus_tokens = tokenize(spec, corpus.contents)
    query_tokens = tokenize(spec, qa.queries.texts)
    index = TermIndex.build(_token_arrays(corpus_tokens))
    queries = index.query_matrix(_token_arrays(query_tokens))
    rng = np.random.default_rng(1)
    for k1, b in [(1.5, 0.75), tuple(rng.uniform([0.3, 0.1], [2.5, 1.0]))]:
        ours = index.scores(queries, index.weights(method, k1, b, 0.7, index.idf(method)))
        reference = bm25s.BM25(method=method, k1=k1, b=b, delta=0.7)
        reference.index(corpus_tokens, show_progress=False)
        expected = np.stack([reference.get_scores(q) for q in query_tokens])
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_tokens_are_cached_on_disk(ko_mini, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    spec = BM25Spec(tokenizer=KiwiTokenizer())
    first = BM25Retriever(spec, corpus, Cache(tmp_path)).search(spec, qa.queries, 5)
    monkeypatch.setattr(retrievers.bm25, "tokenize", lambda *a, **k: pytest.fail("tokenized again"))
    second = BM25Retriever(spec, corpus, Cache(tmp_path)).search(spec, qa.queries, 5)
    np.testing.assert_array_equal(first.ids, second.ids)
    assert any((tmp_path / "tokens").iterdir())


def test_queries_are_scored_in_blocks(ko_mini, monkeypatch):
    qa, corpus = ko_mini
    spec = BM25Spec(tokenizer=WhitespaceTokenizer())
    whole = BM25Retriever(spec, corpus, Cache(None)).search(spec, qa.queries, 7)
    monkeypatch.setattr(retrievers.bm25, "SCORE_BLOCK", 5 * len(corpus))  # 5 queries at a time
    np.testing.assert_array_equal(BM25Retriever(spec, corpus, Cache(None)).search(spec, qa.queries, 7).ids, whole.ids)


def test_unknown_query_words_and_empty_queries_score_zero(ko_mini, tmp_path):
    _, corpus = ko_mini
    spec = BM25Spec(tokenizer=WhitespaceTokenizer())
    ranking = BM25Retriever(spec, corpus, Cache(None)).search(spec, Queries(["zzqx", "!!!"]), 3)
    assert ranking.ids.shape == (2, 3) and np.all(ranking.scores == 0)
