"""FlagEmbedding models through ragopt's real loading code: BGE-M3's three retrievers against
BGEM3FlagModel's own scoring functions, and FlagReranker / FlagLLMReranker against compute_score;
all pass the retriever or pair-scorer contract. The models are tiny random-weight XLM-RoBERTa and
Gemma folders built in a temp folder."""

import numpy as np
import pytest
import torch
from FlagEmbedding import BGEM3FlagModel, FlagLLMReranker, FlagReranker

from ragopt.stages.cache import Cache
from ragopt.data.qa import Queries
from ragopt.stages.engine import Engine
from ragopt.errors import ModelError
from ragopt.stages.models import Locator, ModelPool
from ragopt.stages.rerankers._pairs import pair_features
from ragopt.stages.rerankers.flag_llm_reranker import FlagLLMRerankerSpec, FlagLLMScorer
from ragopt.stages.rerankers.flag_reranker import FlagRerankerSpec, FlagScorer
from ragopt.stages.retrievers.bge_m3 import BGEM3Retriever, BGEM3Spec
from ragopt.stages.retrievers.hybrid import HybridSpec
from ragopt.testing.rerankers import PairScorerContract, ScorerCase
from ragopt.testing.retrievers import RetrieverCase, RetrieverContract


@pytest.fixture(scope="module")
def m3_reference(tiny_bge_m3, ko_mini):
    qa, corpus = ko_mini
    model = BGEM3FlagModel(str(tiny_bge_m3), use_fp16=False, devices=["cpu"])
    queries = Queries(qa.queries.texts[:5])
    kwargs = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    return model, queries, model.encode_queries(queries.texts, **kwargs), model.encode_corpus(corpus.contents, **kwargs)


class TestBGEM3Contract(RetrieverContract):
    @pytest.fixture(params=["dense", "sparse", "colbert"])
    def case(self, request, ko_mini, tiny_bge_m3):
        qa, corpus = ko_mini
        spec = BGEM3Spec(model=str(tiny_bge_m3), mode=request.param)
        return RetrieverCase(spec, corpus, Queries(qa.queries.texts[:8]), cache_kinds=("bge_m3",),
                             variants=[spec.model_copy(update={"max_length": 64})])


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
            shared = [set(q["lexical_weights"][i]) & set(w) for w in d["lexical_weights"]]
            expected = np.where([bool(s) for s in shared], expected, -np.inf)  # no shared token: not retrieved
        else:
            expected = np.array([float(model.colbert_score(q["colbert_vecs"][i], v)) for v in d["colbert_vecs"]])
        found = ranking.ids[i] >= 0
        np.testing.assert_allclose(ranking.scores[i][found], np.sort(expected)[::-1][:10][found], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(expected[ranking.ids[i][found]], ranking.scores[i][found], rtol=1e-4, atol=1e-5)
        assert found.sum() == min(10, np.isfinite(expected).sum())


def test_bge_m3_modes_share_one_encoding_pass_and_fuse(tiny_bge_m3, ko_mini, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    loads = []
    real = BGEM3Retriever.encode

    def counting(self, texts, texts_key, role):
        loads.append(role)
        return real(self, texts, texts_key, role)

    monkeypatch.setattr(BGEM3Retriever, "encode", counting)
    engine = Engine(corpus, Cache(tmp_path), "cpu")
    modes = [BGEM3Spec(model=str(tiny_bge_m3), mode=m) for m in ("dense", "sparse", "colbert")]
    hybrid = HybridSpec(retrievers=modes, fusion="convex", normalization="min_max", weights=[0.4, 0.2, 0.4])
    fused = engine.retrieve(hybrid, qa.queries, 5)
    assert loads.count("passage") == 1  # the corpus is encoded once for all three modes
    assert len(list((tmp_path / "bge_m3").glob("*.npz"))) == 2  # corpus and queries, every output in each
    assert fused.ids.shape == (len(qa), 5) and (fused.ids >= 0).all()


def _reference(model, **kwargs):
    def score(pairs):
        if not pairs:
            return np.zeros(0)
        return np.asarray(model.compute_score(pairs, **kwargs), dtype=np.float32).reshape(len(pairs))
    return score


class TestFlagRerankerContract(PairScorerContract):
    @pytest.fixture
    def case(self, ko_mini, tiny_xlmr_reranker):
        qa, corpus = ko_mini
        reference = FlagReranker(str(tiny_xlmr_reranker), use_fp16=False, devices=["cpu"])
        return ScorerCase(FlagRerankerSpec(model=str(tiny_xlmr_reranker), depth=5, max_length=128), corpus,
                          Queries(qa.queries.texts[:4]), _reference(reference, max_length=128))


class TestFlagLLMRerankerContract(PairScorerContract):
    @pytest.fixture
    def case(self, ko_mini, tiny_gemma_reranker):
        qa, corpus = ko_mini
        reference = FlagLLMReranker(str(tiny_gemma_reranker), use_fp16=False, devices=["cpu"])
        return ScorerCase(FlagLLMRerankerSpec(model=str(tiny_gemma_reranker), depth=5, max_length=128), corpus,
                          Queries(qa.queries.texts[:4]), _reference(reference, max_length=128))


def test_flag_reranker_refuses_a_model_with_two_labels(tiny_xlmr_two_labels):
    spec = FlagRerankerSpec(model=str(tiny_xlmr_two_labels))
    with pytest.raises(ModelError, match="Use type: cross_encoder"):
        FlagScorer(spec, Locator()(spec.model), "cpu", ModelPool(), "k")


def test_flag_reranker_cuts_long_queries_on_token_ids(tiny_xlmr_reranker, ko_mini):
    """FlagReranker's truncation: the query's first 3/4 x max_length tokens, then the passage cut
    to fit, on token ids as FlagEmbedding does under transformers 4 (under transformers 5 it
    decodes the cut ids and tokenizes the text again, which can change tokens, e.g. around
    <unk>). The scores are the model's logits on exactly those ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

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

    spec = FlagRerankerSpec(model=str(tiny_xlmr_reranker), max_length=40, batch_size=4)
    ours = FlagScorer(spec, Locator()(spec.model), "cpu", ModelPool(), "key").score(pairs)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_xlmr_reranker).eval()
    with torch.inference_mode():
        expected = [model(input_ids=torch.tensor([ids])).logits[0, -1].item() for ids in expected_ids]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_reaches_every_loader_only_as_configured(trust, monkeypatch, tmp_path):
    import FlagEmbedding
    import sentence_transformers

    from ragopt.stages.rerankers.cross_encoder import CrossEncoderScorer, CrossEncoderSpec
    from ragopt.stages.retrievers.bge_m3 import load_bge_m3
    from ragopt.stages.retrievers.dense import DenseSpec, load_sentence_transformer

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
    located = Locator()(folder)
    attempts = [
        lambda: load_sentence_transformer(located, DenseSpec(model=folder, trust_remote_code=trust), "cpu"),
        lambda: CrossEncoderScorer(CrossEncoderSpec(model=folder, trust_remote_code=trust), located, "cpu",
                                   ModelPool(), "k"),
        lambda: load_bge_m3(located, BGEM3Spec(model=folder, trust_remote_code=trust), "cpu"),
        lambda: FlagScorer(FlagRerankerSpec(model=folder, trust_remote_code=trust), located, "cpu", ModelPool(), "k"),
        lambda: FlagLLMScorer(FlagLLMRerankerSpec(model=folder, trust_remote_code=trust), located, "cpu",
                              ModelPool(), "k"),
    ]
    for attempt in attempts:
        with pytest.raises(Stop):
            attempt()
    assert seen == dict.fromkeys(["SentenceTransformer", "CrossEncoder", "BGEM3FlagModel", "FlagReranker",
                                  "FlagLLMReranker"], trust)
