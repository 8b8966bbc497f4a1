"""Multi-vector (late-interaction) retrieval through ragopt's real loading code, on a tiny
random-weight model of KURE-v2's architecture saved as PyLate saves it: a ModernBERT encoder,
PyLate's Dense projections (two with residual connections, then one down to the token width),
[Q] / [D] prefix tokens, [MASK] query expansion and the punctuation skiplist. Token vectors and
MaxSim scores are checked against sentence-transformers' MultiVectorEncoder (which loads PyLate
checkpoints), the ranking of a whole `ragopt optimize` run against MaxSim by brute force, and the
retriever and its hybrids with BM25 pass the retriever contract."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import MultiVectorEncoder
from typer.testing import CliRunner

from conftest import KO_MINI, _save_tiny, _train_tokenizer, write_config
from ragopt.stages.cache import Cache
from ragopt.cli import app
from ragopt.data.qa import Queries, load_dataset
from ragopt.stages.engine import Engine
from ragopt.serving.pipeline import load_pipeline
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.hybrid import HybridSpec
from ragopt.stages.retrievers.multi_vector import MultiVectorSpec
from ragopt.stages.retrievers.tokenizers import KiwiTokenizer
from ragopt.study.runs import StudyRuns
from ragopt.testing.retrievers import RetrieverCase, RetrieverContract
from test_models import fake_hub

QUERY_LENGTH, DOCUMENT_LENGTH = 12, 48
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def save_pylate_colbert(folder: Path, seed: int = 6, similarity: str = "MaxSim") -> Path:
    """KURE-v2's layout at width 32: what PyLate 1.6's ColBERT.save writes (modules.json naming
    pylate.models.Dense.Dense, a config_sentence_transformers.json with PyLate's keys, the
    prefixes added to the tokenizer), with a WordPiece tokenizer over the example data."""
    import torch
    from safetensors.torch import save_file
    from sentence_transformers.base.modules.dense import Dense
    from transformers import BertTokenizerFast, ModernBertConfig, ModernBertModel

    tokenizer = BertTokenizerFast(tokenizer_object=_train_tokenizer("wordpiece"), unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                  strip_accents=False)
    tokenizer.add_tokens(["[Q] ", "[D] "])
    _save_tiny(folder, ModernBertModel, ModernBertConfig, tokenizer, seed=seed, max_position_embeddings=512,
               local_attention=16, global_attn_every_n_layers=2, pad_token_id=tokenizer.pad_token_id,
               cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
               bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    widths = [(32, 64, True, True), (64, 32, True, True), (32, 16, False, False)]  # KURE-v2: 768-1536-768-128
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for i, (width_in, width_out, bias, residual) in enumerate(widths, start=1):
        dense = Dense(width_in, width_out, bias=bias, activation_function=torch.nn.Identity(), use_residual=residual)
        (folder / f"{i}_Dense").mkdir()
        save_file(dense.state_dict(), folder / f"{i}_Dense" / "model.safetensors")
        (folder / f"{i}_Dense" / "config.json").write_text(json.dumps({
            "in_features": width_in, "out_features": width_out, "bias": bias,
            "activation_function": "torch.nn.modules.linear.Identity", "use_residual": residual}))
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": "pylate.models.Dense.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "ColBERT", "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": similarity, "query_prefix": "[Q] ", "document_prefix": "[D] ",
        "query_length": QUERY_LENGTH, "document_length": DOCUMENT_LENGTH, "attend_to_expansion_tokens": False,
        "skiplist_words": PUNCTUATION, "do_query_expansion": True}))
    return folder


@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory) -> Path:
    return save_pylate_colbert(tmp_path_factory.mktemp("tiny-colbert"))


@pytest.fixture(scope="module")
def tiny_colbert_other(tmp_path_factory) -> Path:
    """The same architecture with other weights."""
    return save_pylate_colbert(tmp_path_factory.mktemp("tiny-colbert-2"), seed=7)


@pytest.fixture(scope="module")
def library(tiny_colbert):
    return MultiVectorEncoder(str(tiny_colbert), device="cpu")


def maxsim(q: list[np.ndarray], d: list[np.ndarray]) -> np.ndarray:
    """Queries x passages: the sum of each query token's best passage-token match, in float64."""
    return np.array([[(a.astype(np.float64) @ b.astype(np.float64).T).max(axis=1).sum() for b in d] for a in q])


def split(arrays: dict) -> list[np.ndarray]:
    offsets = arrays["offsets"]
    return [arrays["vectors"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


class TestMultiVectorContract(RetrieverContract):
    @pytest.fixture
    def case(self, ko_mini, tiny_colbert, tiny_colbert_other):
        qa, corpus = ko_mini
        spec = MultiVectorSpec(model=str(tiny_colbert))
        variants = [spec.model_copy(update={"max_length": 16}),
                    spec.model_copy(update={"model": str(tiny_colbert_other)})]
        return RetrieverCase(spec, corpus, qa.queries, variants=variants, cache_kinds=("multi_vector",))


class TestHybridWithBM25Contract(RetrieverContract):
    @pytest.fixture(params=["rrf", "tmm"])
    def case(self, request, ko_mini, tiny_colbert):
        qa, corpus = ko_mini
        parts = [BM25Spec(tokenizer=KiwiTokenizer(pos="content")), MultiVectorSpec(model=str(tiny_colbert))]
        spec = (HybridSpec(retrievers=parts, fusion="rrf", rrf_k=10, depth=8) if request.param == "rrf" else
                HybridSpec(retrievers=parts, fusion="convex", normalization="tmm", weights=[0.4, 0.6], depth=8))
        return RetrieverCase(spec, corpus, qa.queries, cache_kinds=("tokens", "multi_vector"))


def test_token_vectors_and_scores_are_the_librarys(ko_mini, tiny_colbert, library):
    """Our stored token vectors are MultiVectorEncoder's, bit for bit on the CPU; the ranking is
    its similarity's order and scores. PyLate's algorithm shows in them: every query is expanded
    with [MASK] to exactly query_length vectors, and no passage has more than document_length."""
    qa, corpus = ko_mini
    queries = Queries(qa.queries.texts[:10])
    engine = Engine(corpus, device="cpu")
    spec = MultiVectorSpec(model=str(tiny_colbert))
    retriever = engine.retriever(spec)
    expected_d = library.encode_document(corpus.contents, convert_to_numpy=True)
    expected_q = library.encode_query(queries.texts, convert_to_numpy=True)
    ours_d, ours_q = split(retriever.corpus_vectors), split(retriever.encode(queries.texts, queries.key, "query"))
    for ours, expected in zip(ours_d + ours_q, expected_d + expected_q):
        np.testing.assert_array_equal(ours, expected)
    assert {len(v) for v in ours_q} == {QUERY_LENGTH} and max(len(v) for v in ours_d) <= DOCUMENT_LENGTH
    assert retriever.theoretical_min(spec) is None  # MaxSim's floor is -(query tokens)
    scores = library.similarity(expected_q, expected_d).numpy()
    ranking = engine.retrieve(spec, queries, 10)
    np.testing.assert_allclose(ranking.scores, np.sort(scores, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(scores, ranking.ids, axis=1), ranking.scores, rtol=1e-5)
    np.testing.assert_allclose(ranking.scores, np.take_along_axis(maxsim(expected_q, expected_d), ranking.ids, 1),
                               rtol=1e-5)


def test_the_scan_in_blocks_of_queries_and_passage_tokens_gives_the_same_answers(ko_mini, tiny_colbert, monkeypatch):
    from ragopt.stages import ranking as ranking_module
    from ragopt.stages.retrievers import _scan

    qa, corpus = ko_mini
    engine, spec = Engine(corpus, device="cpu"), MultiVectorSpec(model=str(tiny_colbert))
    whole = engine.retrieve(spec, qa.queries, 8)
    monkeypatch.setattr(_scan, "TOKEN_CHUNK", 100)  # two to four passages a block
    monkeypatch.setattr(ranking_module, "SCORE_BLOCK", 100 * 5 * QUERY_LENGTH)  # five queries a block
    blocks = Engine(corpus, device="cpu").retrieve(spec, qa.queries, 8)
    np.testing.assert_array_equal(blocks.ids, whole.ids)
    np.testing.assert_allclose(blocks.scores, whole.scores, rtol=1e-6)
    np.testing.assert_allclose(blocks.stats.mean, whole.stats.mean, rtol=1e-6)


def test_a_model_saved_with_meanmaxsim_scores_by_it(ko_mini, tiny_colbert, tmp_path):
    qa, corpus = ko_mini
    model = save_pylate_colbert(tmp_path / "mean", similarity="meanmaxsim")
    queries = Queries(qa.queries.texts[:6])
    library = MultiVectorEncoder(str(model), device="cpu")
    assert library.similarity_fn_name == "meanmaxsim"
    expected = library.similarity(library.encode_query(queries.texts), library.encode_document(corpus.contents))
    spec = MultiVectorSpec(model=str(model))
    engine = Engine(corpus, device="cpu")
    ranking = engine.retrieve(spec, queries, 5)
    np.testing.assert_allclose(ranking.scores, np.sort(expected.numpy(), axis=1)[:, ::-1][:, :5], rtol=1e-5)
    assert engine.retriever(spec).theoretical_min(spec) == -1.0


def test_max_length_caps_the_passage_tokens(ko_mini, tiny_colbert):
    _, corpus = ko_mini
    retriever = Engine(corpus, device="cpu").retriever(MultiVectorSpec(model=str(tiny_colbert), max_length=16))
    lengths = np.diff(retriever.corpus_vectors["offsets"])
    assert lengths.max() <= 16 and (lengths == 16).sum() > len(corpus) // 2  # most passages are longer


def test_a_hub_id_is_encoded_through_the_hugging_face_cache(ko_mini, tiny_colbert, tmp_path, monkeypatch):
    qa, corpus = ko_mini
    fake_hub(tmp_path, monkeypatch, tiny_colbert, ["a" * 40])
    queries = Queries(qa.queries.texts[:5])
    from_hub = Engine(corpus, Cache(tmp_path / "cache"), "cpu").retrieve(MultiVectorSpec(model="org/tiny"), queries, 5)
    local = Engine(corpus, device="cpu").retrieve(MultiVectorSpec(model=str(tiny_colbert)), queries, 5)
    np.testing.assert_array_equal(from_hub.ids, local.ids)
    np.testing.assert_array_equal(from_hub.scores, local.scores)


def test_validate_and_optimize_rank_the_example_by_maxsim(tiny_colbert, library, tmp_path):
    """A config with a multi-vector entry validates, every trial of a short study on the bundled
    example ranks by MaxSim computed by brute force from the library's token vectors, and so does
    the exported winner."""
    model = tmp_path / "models" / "kure-tiny"
    shutil.copytree(tiny_colbert, model)
    config = write_config(tmp_path / "mv.yaml", """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl", domain_column: domain}
retrievers:
  - {name: kure, type: multi_vector, model: ./models/kure-tiny}
top_k: [1, 3, 5]
study: {latency: off}
""")
    runner = CliRunner()
    validated = runner.invoke(app, ["validate", str(config)])
    assert validated.exit_code == 0, validated.output
    output = tmp_path / "out"
    result = runner.invoke(app, ["optimize", str(config), "-q", "-o", str(output)])
    assert result.exit_code == 0, result.output
    qa, corpus = load_dataset(qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl")
    scores = maxsim(library.encode_query(qa.queries.texts, convert_to_numpy=True),
                    library.encode_document(corpus.contents, convert_to_numpy=True))
    expected = np.argsort(-scores, axis=1, kind="stable")
    gaps = -np.diff(np.take_along_axis(scores, expected[:, :6], axis=1), axis=1)
    assert gaps.min() > 1e-4  # no near-tie that float32 could order either way
    runs = StudyRuns(output)
    assert len(runs.trials) == 3
    for trial in runs.trials:
        ids = runs.ranking(trial)
        np.testing.assert_array_equal(ids, expected[:, :ids.shape[1]])
    winner = load_pipeline(output / "best.yaml", KO_MINI / "corpus.jsonl", device="cpu")
    hits = winner.retrieve(qa.queries.texts, k=5)
    assert [[h.doc_id for h in row] for row in hits] == [[corpus.doc_ids[i] for i in row] for row in expected[:, :5]]


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_reaches_the_loader_only_as_configured(trust, monkeypatch, tmp_path):
    import sentence_transformers

    from ragopt.stages.models import Locator
    from ragopt.stages.retrievers.multi_vector import load_multi_vector

    seen = []

    class Stop(Exception):
        pass

    def loader(path, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise Stop

    monkeypatch.setattr(sentence_transformers, "MultiVectorEncoder", loader)
    spec = MultiVectorSpec(model=str(tmp_path), trust_remote_code=trust)
    with pytest.raises(Stop):
        load_multi_vector(Locator()(spec.model), spec, "cpu")
    assert seen == [trust]
