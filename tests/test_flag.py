"""FlagEmbedding models through ragopt's real loading code: BGE-M3's three retrievers against
BGEM3FlagModel's own scoring functions, and FlagReranker / FlagLLMReranker against compute_score.
The models are tiny random-weight XLM-RoBERTa and Gemma folders built in a temp folder."""

import numpy as np
import pytest
import torch
from FlagEmbedding import BGEM3FlagModel, FlagLLMReranker, FlagReranker

from ragopt import pipeline
from ragopt.cache import Cache
from ragopt.data import Queries
from ragopt.pipeline import Engine
from ragopt.spec import (
    BGEM3Spec,
    BM25Spec,
    FlagLLMRerankerSpec,
    FlagRerankerSpec,
    HybridSpec,
    PipelineSpec,
    WhitespaceTokenizer,
)


@pytest.fixture(scope="module")
def m3_reference(tiny_bge_m3, ko_mini):
    qa, corpus = ko_mini
    model = BGEM3FlagModel(str(tiny_bge_m3), use_fp16=False, devices=["cpu"])
    queries = Queries(qa.queries.texts[:5])
    kwargs = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    return model, queries, model.encode_queries(queries.texts, **kwargs), model.encode_corpus(corpus.contents, **kwargs)


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert"])
def test_bge_m3_modes_rank_by_flagembeddings_own_scores(mode, tiny_bge_m3, ko_mini, m3_reference):
    _, corpus = ko_mini
    model, queries, q, d = m3_reference
    ranking = Engine(corpus, device="cpu").retrieve(BGEM3Spec(model=str(tiny_bge_m3), mode=mode), queries, 10)
    for i in range(len(queries)):
        if mode == "dense":
            expected = d["dense_vecs"] @ q["dense_vecs"][i]
        elif mode == "sparse":
            expected = np.array([model.compute_lexical_matching_score(q["lexical_weights"][i], w)
                                 for w in d["lexical_weights"]])
        else:
            expected = np.array([float(model.colbert_score(q["colbert_vecs"][i], v)) for v in d["colbert_vecs"]])
        np.testing.assert_allclose(ranking.scores[i], np.sort(expected)[::-1][:10], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(expected[ranking.ids[i]], ranking.scores[i], rtol=1e-4, atol=1e-5)


def test_bge_m3_modes_share_one_encoding_pass_and_fuse(tiny_bge_m3, ko_mini, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    loads = []
    real = pipeline.BGEM3Retriever.encode

    def counting(self, texts, texts_key, role):
        loads.append(role)
        return real(self, texts, texts_key, role)

    monkeypatch.setattr(pipeline.BGEM3Retriever, "encode", counting)
    engine = Engine(corpus, Cache(tmp_path), "cpu")
    modes = [BGEM3Spec(model=str(tiny_bge_m3), mode=m) for m in ("dense", "sparse", "colbert")]
    hybrid = HybridSpec(retrievers=modes, fusion="convex", normalization="min_max", weights=[0.4, 0.2, 0.4])
    fused = engine.retrieve(hybrid, qa.queries, 5)
    assert loads.count("passage") == 1  # the corpus is encoded once for all three modes
    assert len(list((tmp_path / "bge_m3").glob("*.npz"))) == 2  # corpus and queries, every output in each
    assert fused.ids.shape == (len(qa), 5) and (fused.ids >= 0).all()


def _pairs(qa, corpus, n):
    return [(qa.queries.texts[i], corpus.contents[(7 * i) % len(corpus)]) for i in range(n)]


@pytest.mark.parametrize("kind", ["flag_reranker", "flag_llm_reranker"])
def test_flag_rerankers_score_like_compute_score(kind, tiny_xlmr_reranker, tiny_gemma_reranker, ko_mini, tmp_path):
    qa, corpus = ko_mini
    if kind == "flag_reranker":
        spec = FlagRerankerSpec(model=str(tiny_xlmr_reranker), depth=5, max_length=128)
        reference = FlagReranker(str(tiny_xlmr_reranker), use_fp16=False, devices=["cpu"])
    else:
        spec = FlagLLMRerankerSpec(model=str(tiny_gemma_reranker), depth=5, max_length=128)
        reference = FlagLLMReranker(str(tiny_gemma_reranker), use_fp16=False, devices=["cpu"])
    bm25 = BM25Spec(tokenizer=WhitespaceTokenizer())
    queries = Queries(qa.queries.texts[:4])
    engine = Engine(corpus, Cache(tmp_path), "cpu")
    first = engine.retrieve(bm25, queries, 5)
    reranked = engine.run(PipelineSpec(retriever=bm25, reranker=spec, top_k=5), queries)
    for q in range(4):
        expected = np.asarray(reference.compute_score(
            [(queries.texts[q], corpus.contents[d]) for d in first.ids[q]], max_length=128), dtype=np.float32)
        np.testing.assert_allclose(reranked.scores[q], np.sort(expected)[::-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(sorted(reranked.ids[q]), sorted(first.ids[q]))


def test_flag_reranker_cuts_long_queries_on_token_ids(tiny_xlmr_reranker, ko_mini):
    """FlagReranker's truncation: the query's first 3/4 x max_length tokens, then the passage cut
    to fit, on token ids as FlagEmbedding does under transformers 4 (under transformers 5 it
    decodes the cut ids and tokenizes the text again, which can change tokens, e.g. around
    <unk>). The scores are the model's logits on exactly those ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ragopt.models import ModelPool
    from ragopt.rerankers._base import pair_features
    from ragopt.rerankers.flag import FlagScorer

    qa, corpus = ko_mini
    pairs = [(" ".join(qa.queries.texts[i:i + 4]), corpus.contents[i]) for i in range(6)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_xlmr_reranker)
    expected_ids = []
    for query, passage in pairs:
        query_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
        assert len(query_ids) > 30
        passage_ids = tokenizer(passage, add_special_tokens=False)["input_ids"][:40 - 4 - 30]
        expected_ids.append([tokenizer.cls_token_id, *query_ids[:30], tokenizer.sep_token_id, tokenizer.sep_token_id,
                             *passage_ids, tokenizer.sep_token_id])
    assert pair_features(tokenizer, pairs, 40, 30)["input_ids"] == expected_ids

    ours = FlagScorer(FlagRerankerSpec(model=str(tiny_xlmr_reranker), max_length=40, batch_size=4), "cpu",
                      ModelPool(), "key").score(pairs)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_xlmr_reranker).eval()
    with torch.inference_mode():
        expected = [model(input_ids=torch.tensor([ids])).logits[0, -1].item() for ids in expected_ids]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_reaches_every_loader_only_as_configured(trust, monkeypatch, tmp_path):
    import FlagEmbedding
    import sentence_transformers

    from ragopt.models import ModelPool
    from ragopt.rerankers.cross_encoder import CrossEncoderScorer
    from ragopt.retrievers.bge_m3 import load_bge_m3
    from ragopt.retrievers.dense import load_sentence_transformer
    from ragopt.spec import CrossEncoderSpec, DenseSpec

    seen = {}

    class Stop(Exception):
        pass

    def fake(name):
        def loader(path, **kwargs):
            seen[name] = kwargs["trust_remote_code"]
            raise Stop
        return loader

    for module, name in [(sentence_transformers, "SentenceTransformer"), (sentence_transformers, "CrossEncoder"),
                         (FlagEmbedding, "BGEM3FlagModel"), (FlagEmbedding, "FlagReranker"),
                         (FlagEmbedding, "FlagLLMReranker")]:
        monkeypatch.setattr(module, name, fake(name))
    folder = str(tmp_path)
    attempts = [
        lambda: load_sentence_transformer(folder, DenseSpec(model=folder, trust_remote_code=trust), "cpu"),
        lambda: CrossEncoderScorer(CrossEncoderSpec(model=folder, trust_remote_code=trust), "cpu", ModelPool(), "k"),
        lambda: load_bge_m3(BGEM3Spec(model=folder, trust_remote_code=trust), "cpu"),
        lambda: pipeline.FlagScorer(FlagRerankerSpec(model=folder, trust_remote_code=trust), "cpu", ModelPool(), "k"),
        lambda: pipeline.FlagScorer(FlagLLMRerankerSpec(model=folder, trust_remote_code=trust), "cpu", ModelPool(),
                                    "k"),
    ]
    for attempt in attempts:
        with pytest.raises(Stop):
            attempt()
    assert seen == dict.fromkeys(["SentenceTransformer", "CrossEncoder", "BGEM3FlagModel", "FlagReranker",
                                  "FlagLLMReranker"], trust)
