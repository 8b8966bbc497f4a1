"""Padding-free encoding: the same embeddings as model.encode for every supported pooling, with
prompts, truncation and texts split across packs; unsupported stacks are left to model.encode."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer, models

from ragopt.retrievers import packed
from conftest import example_texts


def _stack(path, pooling: str, normalize: bool, include_prompt: bool = True) -> SentenceTransformer:
    transformer = models.Transformer(str(path), max_seq_length=24)
    modules = [transformer, models.Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
    return SentenceTransformer(modules=modules + [models.Normalize()] * normalize, device="cpu",
                               prompts={"query": "query: ", "passage": "passage: "})


@pytest.mark.parametrize("pooling,normalize", [("cls", True), ("mean", False), ("lasttoken", True)])
@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_packed_encoding_matches_model_encode(family, pooling, normalize, tiny_bert, tiny_bge_m3):
    model = _stack(tiny_bert if family == "bert" else tiny_bge_m3, pooling, normalize)
    texts = example_texts()
    lengths = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
    assert min(lengths) < 24 < max(lengths)  # some texts are cut to max_seq_length, some are not
    for prompt_name in (None, "query"):
        assert packed.packable(model, prompt_name)
        expected = model.encode(texts, prompt_name=prompt_name, batch_size=8, convert_to_numpy=True)
        ours = packed.encode(model, texts, prompt_name, 1, False).numpy()  # packs of 512 tokens, the first of 256
        np.testing.assert_allclose(ours, expected, atol=2e-6)
    assert model[0].auto_model.config._attn_implementation == "sdpa"  # its own attention is given back


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


def test_packs_are_consecutive_texts_within_the_token_budget():
    lengths = np.array([3, 5, 2, 9, 1, 4, 4])
    ends = lengths.cumsum()
    chunks = [(lengths[a:b], np.arange(ends[a - 1] if a else 0, ends[b - 1])) for a, b in ((0, 3), (3, 5), (5, 7))]
    packs = list(packed._packs(chunks, 8))
    assert [(first, counts.tolist()) for first, counts, _ in packs] == [
        (0, [3]), (1, [5, 2]), (3, [9]), (4, [1, 4]), (6, [4])]
    assert np.array_equal(np.concatenate([ids for _, _, ids in packs]), np.arange(ends[-1]))
