"""Padding-free encoding: the same embeddings as model.encode for every supported pooling, with
prompts, truncation and texts split across packs; everything it cannot prove equal (decoders,
other architectures, stacks, a GPU without the varlen kernel) is left to model.encode."""

import warnings

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer, models

from conftest import example_texts
from ragopt.stages.engine import Engine
from ragopt.data.qa import Queries
from ragopt.stages.retrievers import packed
from ragopt.stages.retrievers.dense import DenseSpec


def _stack(path, pooling: str, normalize: bool, include_prompt: bool = True, **transformer) -> SentenceTransformer:
    transformer = models.Transformer(str(path), **{"max_seq_length": 24, **transformer})
    modules = [transformer, models.Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
    return SentenceTransformer(modules=modules + [models.Normalize()] * normalize, device="cpu",
                               prompts={"query": "query: ", "passage": "passage: "})


@pytest.mark.parametrize("pooling,normalize", [("cls", True), ("mean", False), ("lasttoken", True)])
@pytest.mark.parametrize("family", ["bert", "xlmr", "roberta"])
def test_packed_encoding_matches_model_encode(family, pooling, normalize, tiny_bert, tiny_bge_m3, tiny_roberta):
    model = _stack({"bert": tiny_bert, "xlmr": tiny_bge_m3, "roberta": tiny_roberta}[family], pooling, normalize)
    texts = example_texts()
    lengths = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
    assert min(lengths) < 24 < max(lengths)  # some texts are cut to max_seq_length, some are not
    for prompt_name in (None, "query"):
        assert packed.packable(model, prompt_name)
        expected = model.encode(texts, prompt_name=prompt_name, batch_size=8, convert_to_numpy=True)
        ours = packed.encode(model, texts, prompt_name, 1, False).numpy()  # packs of 512 tokens, the first of 256
        np.testing.assert_allclose(ours, expected, atol=2e-6)
    assert model[0].auto_model.config._attn_implementation == "sdpa"  # its own attention is given back


def test_surrounding_whitespace_lower_casing_and_processing_settings_match(tiny_bge_m3):
    """The texts go through the model's own preprocessing: a lower-casing model, texts with
    surrounding whitespace and Latin capitals, and a max_length set in processing_kwargs."""
    model = _stack(tiny_bge_m3, "mean", True, do_lower_case=True, processing_kwargs={"text": {"max_length": 12}})
    texts = [f"  {t[:40]} AI MRI  \n" for t in example_texts()[:20]] + ["\tDSR 규제 ", " 예금 "]
    assert packed.packable(model, None)
    np.testing.assert_allclose(packed.encode(model, texts, None, 1, False).numpy(),
                               model.encode(texts, convert_to_numpy=True), atol=2e-6)


EMPTY_ISH = ["", " ", "\n\t", ".", "  DSR 규제  \t"]


def _preprocessed_ids(model, texts, prompt):
    features = model.preprocess(texts, prompt=prompt)
    mask = features["attention_mask"].bool()
    return [ids[keep].tolist() for ids, keep in zip(features["input_ids"], mask)]


@pytest.mark.parametrize("settings", [{}, {"do_lower_case": True, "processing_kwargs": {"text": {"max_length": 12}}}])
@pytest.mark.parametrize("family", ["bert", "xlmr", "roberta"])
def test_texts_get_the_token_ids_model_preprocess_gives(family, settings, tiny_bert, tiny_bge_m3, tiny_roberta):
    """The fast tokenizer called directly gives model.preprocess's ids: prompt, lower-casing,
    truncation to the limit (special tokens kept), empty-ish texts, across tokenizer chunks; and
    counts the texts it cut."""
    model = _stack({"bert": tiny_bert, "xlmr": tiny_bge_m3, "roberta": tiny_roberta}[family], "mean", True,
                   **settings)
    texts = example_texts() + EMPTY_ISH + [f"  {t[:40]} AI MRI  \n" for t in example_texts()[:10]]
    assert len(texts) > packed.TOKENIZE_CHUNK  # more than one tokenizer call
    assert packed.packable(model, None)
    limit = packed.token_limit(model)
    for prompt in (None, "query: "):
        cut: list[int] = []
        chunks = list(packed._tokenized(model, texts, prompt, cut))
        lengths = np.concatenate([n for n, _ in chunks])
        ours = np.split(np.concatenate([ids for _, ids in chunks]), lengths.cumsum()[:-1])
        expected = _preprocessed_ids(model, texts, prompt)
        assert [ids.tolist() for ids in ours] == expected
        whole = model.tokenizer([(prompt or "") + t for t in texts], truncation=False)["input_ids"]
        assert sum(cut) == sum(len(ids) > limit for ids in whole) > 0
        assert any(len(ids) == limit for ids in expected)  # some cut
        assert min(map(len, expected)) == len(model.tokenizer(prompt or "")["input_ids"])  # only prompt, specials


def test_a_model_whose_preprocessing_is_more_than_its_tokenizer_is_left_to_model_encode(tiny_bert):
    """A chat template (the message modality) or a processor other than the bare fast tokenizer
    tokenizes differently from a tokenizer call: such models are never packed."""
    model = _stack(tiny_bert, "mean", True)
    assert packed.packable(model, None)
    model[0].modality_config = {**model[0].modality_config, "message": {"method": "forward",
                                                                        "method_output_name": "last_hidden_state"}}
    assert not packed.packable(model, None)
    model = _stack(tiny_bert, "mean", True)
    model[0].processor = type("Processor", (), {"tokenizer": model[0].processor})()
    assert not packed.packable(model, None)


@pytest.mark.parametrize("decoder", ["tiny_qwen3", "tiny_mistral"])
def test_decoders_fall_back_to_model_encode(decoder, request, ko_mini):
    """Causal attention, grouped-query attention and sliding windows are not what packed
    attention computes: such models are never packed, and the retriever's embeddings are
    model.encode's."""
    path = request.getfixturevalue(decoder)
    model = _stack(path, "lasttoken", True, max_seq_length=64)
    assert not packed.packable(model, None)
    model.save(str(path / "st"))
    _, corpus = ko_mini
    spec = DenseSpec(model=str(path / "st"))
    engine = Engine(corpus, device="cpu")
    vectors = engine.retriever(spec).corpus_vectors
    reference = SentenceTransformer(str(path / "st"), device="cpu")
    np.testing.assert_allclose(vectors, reference.encode(corpus.contents, normalize_embeddings=True), atol=2e-6)
    queries = Queries(["예금자 보호 한도는?", "DSR 규제"])
    q = reference.encode(queries.texts, normalize_embeddings=True)
    expected = np.argsort(-(q @ vectors.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(engine.retrieve(spec, queries, 5).ids, expected)


def test_normalize_on_request_gives_unit_vectors(tiny_bert):
    model = _stack(tiny_bert, "mean", normalize=False)
    vectors = packed.encode(model, example_texts()[:10], None, 4, True).numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(vectors, model.encode(example_texts()[:10], normalize_embeddings=True), atol=2e-6)


def test_stacks_it_cannot_run_are_left_to_model_encode(tiny_bert):
    assert not packed.packable(_stack(tiny_bert, "max", normalize=True), None)
    without_prompt_tokens = _stack(tiny_bert, "mean", normalize=True, include_prompt=False)
    assert packed.packable(without_prompt_tokens, None)
    assert not packed.packable(without_prompt_tokens, "query")
    assert not packed.packable(_stack(tiny_bert, "mean", normalize=True), "no-such-prompt")
    truncated = _stack(tiny_bert, "mean", normalize=True)
    truncated.truncate_dim = 16
    assert not packed.packable(truncated, None)


def test_a_gpu_without_the_varlen_kernel_uses_model_encode_and_says_so(monkeypatch):
    monkeypatch.setattr(packed, "_varlen_kernel", lambda: None)
    packed._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="varlen attention"):
        assert packed.attention_path("cuda", torch.bfloat16) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert packed.attention_path("cuda", torch.bfloat16) is None  # said once, not at every call
    assert packed.attention_path("cpu", torch.float32) == "per_text"
    monkeypatch.setattr(packed, "_varlen_kernel", lambda: object())
    assert packed.attention_path("cuda", torch.float16) == "varlen"
    packed._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="float16 or bfloat16"):
        assert packed.attention_path("cuda", torch.float32) is None


def test_a_device_without_a_packed_kernel_encodes_with_model_encode(monkeypatch, tiny_bert, ko_mini):
    model = _stack(tiny_bert, "mean", normalize=True)
    assert packed.packable(model, None)
    monkeypatch.setattr(packed, "attention_path", lambda device, dtype: None)
    assert not packed.packable(model, None)
    monkeypatch.setattr(packed, "encode", lambda *a, **k: pytest.fail("packed encoding used"))
    _, corpus = ko_mini
    vectors = Engine(corpus, device="cpu").retriever(DenseSpec(model=str(tiny_bert))).corpus_vectors
    reference = SentenceTransformer(str(tiny_bert), device="cpu").encode(corpus.contents, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, reference, atol=2e-6)


def test_packs_are_consecutive_texts_within_the_token_budget():
    lengths = np.array([3, 5, 2, 9, 1, 4, 4])
    ends = lengths.cumsum()
    chunks = [(lengths[a:b], np.arange(ends[a - 1] if a else 0, ends[b - 1])) for a, b in ((0, 3), (3, 5), (5, 7))]
    packs = list(packed._packs(chunks, 8))
    assert [(first, counts.tolist()) for first, counts, _ in packs] == [
        (0, [3]), (1, [5, 2]), (3, [9]), (4, [1, 4]), (6, [4])]
    assert np.array_equal(np.concatenate([ids for _, _, ids in packs]), np.arange(ends[-1]))


def test_no_forward_looks_for_packed_sequences_in_the_position_ids(monkeypatch, tiny_bge_m3):
    """Packed attention keeps each text apart itself: transformers (>= 5.24) must not also search
    the position ids for packed sequences, whose `.all()` on a GPU tensor waits for the GPU once
    per pack (it did while ragopt registered a mask function for its attention)."""
    import transformers.masking_utils as masking

    monkeypatch.setattr(masking, "find_packed_sequence_indices",
                        lambda *args, **kwargs: pytest.fail("a forward looked for packed sequences"))
    model = SentenceTransformer(str(tiny_bge_m3), device="cpu")
    texts = example_texts()[:40]
    np.testing.assert_allclose(packed.encode(model, texts, None, 2, True).numpy(),
                               model.encode(texts, batch_size=2, normalize_embeddings=True), atol=2e-6)
