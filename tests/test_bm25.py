"""Korean tokenizers and the re-weightable BM25, checked rank for rank against bm25s itself."""

import bm25s
import numpy as np
import pytest
import scipy.sparse as sp

from ragopt.stages import ranking
from ragopt.stages.cache import Cache
from ragopt.data.qa import Corpus, Queries
from ragopt.stages.engine import Engine
from ragopt.scoring.metrics import at_k, relevance
from ragopt.stages.retrievers import bm25
from ragopt.stages.retrievers.bm25 import BM25Spec, TermIndex, _token_arrays
from ragopt.stages.retrievers.tokenizers import (
    CharNgramTokenizer,
    HuggingFaceTokenizer,
    KiwiTokenizer,
    MecabTokenizer,
    WhitespaceTokenizer,
    tokenize,
)
from ragopt.testing.retrievers import RetrieverCase, RetrieverContract


class TestBM25Contract(RetrieverContract):
    @pytest.fixture(params=["lucene", "robertson", "bm25+"])
    def case(self, request, ko_mini):
        qa, corpus = ko_mini
        spec = BM25Spec(tokenizer=KiwiTokenizer(), method=request.param)
        return RetrieverCase(spec, corpus, qa.queries, unmatched=Queries(["zzqx qqqq", "!!!"]),
                             variants=[BM25Spec(tokenizer=KiwiTokenizer(pos="content"))], cache_kinds=("tokens",))


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
        ours = index.scores(queries, index.weights(method, k1, b, 0.7, index.idf(method)))[0]
        reference = bm25s.BM25(method=method, k1=k1, b=b, delta=0.7)
        reference.index(corpus_tokens, show_progress=False)
        expected = np.stack([reference.get_scores(q) for q in query_tokens])
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_tokens_are_cached_on_disk_per_tokenizer_and_library_version(ko_mini, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    spec = BM25Spec(tokenizer=KiwiTokenizer())
    first = Engine(corpus, Cache(tmp_path)).retrieve(spec, qa.queries, 5)
    monkeypatch.setattr(bm25, "token_stream", lambda *a, **k: pytest.fail("tokenized again"))
    second = Engine(corpus, Cache(tmp_path)).retrieve(spec, qa.queries, 5)
    np.testing.assert_array_equal(first.ids, second.ids)
    assert any((tmp_path / "tokens").iterdir())
    monkeypatch.undo()
    monkeypatch.setattr(KiwiTokenizer, "provenance", lambda self, locate: {"kiwipiepy": "9.9"})
    upgraded = Cache(tmp_path)
    Engine(corpus, upgraded).retrieve(spec, qa.queries, 5)
    assert [kind for kind, _ in upgraded.misses] == ["tokens", "tokens"]  # a new Kiwi dictionary: corpus and queries


def test_queries_are_scored_in_blocks(ko_mini, monkeypatch):
    qa, corpus = ko_mini
    spec = BM25Spec(tokenizer=WhitespaceTokenizer())
    whole = Engine(corpus).retrieve(spec, qa.queries, 7)
    monkeypatch.setattr(ranking, "SCORE_BLOCK", 5 * len(corpus))  # 5 queries at a time
    blocks = Engine(corpus).retrieve(spec, qa.queries, 7)
    np.testing.assert_array_equal(blocks.ids, whole.ids)
    np.testing.assert_array_equal(blocks.stats.mean, whole.stats.mean)


def test_only_passages_sharing_a_term_are_retrieved():
    corpus = Corpus(["a", "b", "c", "d"], ["은행 예금 금리", "대출 금리", "날씨 맑음", "은행"])
    spec = BM25Spec(tokenizer=WhitespaceTokenizer())
    ranking = Engine(corpus).retrieve(spec, Queries(["은행 예금", "금리", "zzqx", "!!!"]), 4)
    assert ranking.ids[0, :2].tolist() == [0, 3] and ranking.ids[0, 2:].tolist() == [-1, -1]
    assert sorted(ranking.ids[1, :2].tolist()) == [0, 1] and ranking.ids[1, 2:].tolist() == [-1, -1]
    assert np.all(ranking.ids[2:] == -1) and np.all(ranking.stats.count[2:] == 0)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_a_question_sharing_no_term_with_the_corpus_scores_0_whatever_the_corpus_order(order):
    ids, texts = ["a-정답", "b", "c", "d"], ["예금 보호", "대출 금리", "날씨 맑음", "주식 시장"]
    corpus = Corpus([ids[i] for i in order], [texts[i] for i in order])
    ranking = Engine(corpus).retrieve(BM25Spec(tokenizer=WhitespaceTokenizer()), Queries(["zzqx"]), 3)
    gains, n_rel = relevance(ranking.ids, [[[corpus.doc_ids.index("a-정답")]]], len(corpus))
    assert all(v[0] == 0.0 for v in at_k(gains, n_rel, [1, 3]).values())


def test_robertson_has_no_lower_bound_of_0(ko_mini):
    _, corpus = ko_mini
    engine = Engine(corpus)
    retriever = engine.retriever(BM25Spec(tokenizer=WhitespaceTokenizer()))
    assert retriever.theoretical_min(BM25Spec(tokenizer=WhitespaceTokenizer(), method="robertson")) is None
    assert retriever.theoretical_min(BM25Spec(tokenizer=WhitespaceTokenizer(), method="lucene")) == 0.0


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25+"])
@pytest.mark.parametrize(("group", "tile"), [(1, 7), (3, 64), (64, 1 << 16)])
def test_grouped_scoring_gives_the_sparse_product_bit_for_bit(ko_mini, monkeypatch, method, group, tile):
    """Queries scored QUERY_GROUP at a time over their terms' postings, a tile of passages at a
    time, sum the same float32 terms in the same order as scipy's product of the query and
    weight matrices; robertson's
    and atire's weights can be 0 or negative (a word in every passage), so whether a passage
    shares a term is not read off its score there."""
    monkeypatch.setattr(bm25, "QUERY_GROUP", group)
    monkeypatch.setattr(bm25, "DOC_TILE", tile)
    qa, corpus = ko_mini
    spec = CharNgramTokenizer(n=2)
    index = TermIndex.build(_token_arrays(tokenize(spec, [text + " 공통" for text in corpus.contents])))
    texts = [text + " 공통" * (i % 2) for i, text in enumerate(qa.queries.texts)] + ["zzqx"]
    queries = index.query_matrix(_token_arrays(tokenize(spec, texts)))
    weights = index.weights(method, 1.2, 0.6, 0.5, index.idf(method))
    scores, shares = index.scores(queries, weights)
    assert len(index.tiles) == -(-len(corpus) // tile)
    expected = (queries @ sp.hstack(weights.tiles)).toarray()
    if weights.nonoccurrence is not None:
        expected += (queries @ weights.nonoccurrence)[:, None].astype(np.float32)
    np.testing.assert_array_equal(scores, expected)
    presence = (queries @ (sp.hstack(index.tiles) > 0).astype(np.float32)).toarray() > 0
    np.testing.assert_array_equal(shares, presence)
    assert weights.positive == (method in ("lucene", "bm25+")) and not shares[-1].any() and shares.mean() > 0.5


def test_token_ids_stream_in_batches(monkeypatch):
    monkeypatch.setattr(bm25, "ID_BATCH", 2)
    arrays = _token_arrays(iter([["a", "b", "a"], [], ["c"], ["b", "d", "d", "e"]]))
    vocabulary = bm25.Vocabulary.of_arrays(arrays)
    assert [vocabulary[i] for i in range(len(vocabulary))] == ["a", "b", "c", "d", "e"]
    assert arrays["terms"].tobytes() == b"abcde" and arrays["term_offsets"].tolist() == [0, 1, 2, 3, 4, 5]
    assert arrays["ids"].dtype == np.int32 and arrays["ids"].tolist() == [0, 1, 0, 2, 1, 3, 3, 4]
    assert arrays["offsets"].tolist() == [0, 3, 3, 4, 8]


def test_a_search_holds_one_block_of_scores_at_a_time(ko_mini, monkeypatch):
    qa, corpus = ko_mini
    spec = BM25Spec(tokenizer=WhitespaceTokenizer(), method="bm25+")
    whole = Engine(corpus).retrieve(spec, qa.queries, 10)
    monkeypatch.setattr(ranking, "SCORE_BLOCK", 4 * len(corpus) + 1)
    shapes = []
    scores = TermIndex.scores
    monkeypatch.setattr(TermIndex, "scores", staticmethod(lambda queries, weights: shapes.append(queries.shape)
                                                          or scores(queries, weights)))
    blocks = Engine(corpus).retrieve(spec, qa.queries, 10)
    assert max(n for n, _ in shapes) == 4 and sum(n for n, _ in shapes) == len(qa)
    np.testing.assert_array_equal(blocks.ids, whole.ids)
    np.testing.assert_array_equal(blocks.scores, whole.scores)
    np.testing.assert_array_equal(blocks.stats.std, whole.stats.std)


def test_a_long_token_costs_its_own_bytes_in_memory_and_in_the_cache(tmp_path):
    """20,000 terms and one 5,000-character token: a numpy unicode array gave every term the long
    one's width (<U5000, 400 MB in memory and in the cache); one UTF-8 buffer holds what the text
    holds. Scores stay bm25s's, the long token included."""
    long_token = "가" * 5000
    terms = [f"t{i}" for i in range(20_000)]
    corpus_tokens = [terms[:10_000], terms[10_000:] + [long_token], ["t1", long_token, long_token, "t3"]]
    arrays = _token_arrays(iter(corpus_tokens))
    assert sum(a.nbytes for a in arrays.values()) < 1 << 20
    # the terms' UTF-8 bytes (t0..t19999: 108,890; the long token: 15,000), 8 bytes per term's offset
    assert arrays["terms"].nbytes == 123_890 and arrays["term_offsets"].nbytes == 8 * 20_002
    Cache(tmp_path).arrays("tokens", "corpus", lambda: arrays)
    assert (tmp_path / "tokens" / "corpus.npz").stat().st_size < 1 << 20
    stored = Cache(tmp_path).arrays("tokens", "corpus", lambda: pytest.fail("computed again"))
    vocabulary = bm25.Vocabulary.of_arrays(stored)
    assert len(vocabulary) == 20_001 and vocabulary[0] == "t0" and vocabulary[20_000] == long_token
    index = TermIndex.build(stored)
    query_tokens = [[long_token], ["t1", "t3", "zzqx", long_token], ["가" * 4999]]
    queries = index.query_matrix(_token_arrays(iter(query_tokens)))
    assert queries.indices.tolist() == [20_000, 1, 3, 20_000] and queries[2].nnz == 0
    ours = index.scores(queries, index.weights("lucene", 1.5, 0.75, 0.5, index.idf("lucene")))[0]
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    reference.index(corpus_tokens, show_progress=False)
    np.testing.assert_allclose(ours, np.stack([reference.get_scores(q) for q in query_tokens]), rtol=1e-4, atol=1e-5)
