"""Padding-free encoding for sentence-transformers bi-encoders. Texts are tokenized by the model's
fast tokenizer on a worker thread and packed end to end, in input order, into rows of batch_size x
512 tokens; attention stays inside each text (variable-length flash attention on a GPU, one
attention call per text on the CPU). No compute goes to padding, and a model runs a few large
matrix products instead of one small batch per 64 texts with Python in between. Used only where it
provably gives model.encode's embeddings (tested): Transformer -> Pooling (cls, mean, last token)
-> optional Normalize stacks on the bidirectional encoders in SAFE_MODEL_TYPES whose preprocessing
is a call of their fast tokenizer; every other model goes through model.encode."""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ragopt.stages.models import warn_truncated

ATTENTION = "ragopt_packed"
POOLING_MODES = ("cls", "mean", "lasttoken")
TOKENS_PER_TEXT = 512
"""A pack holds batch_size x this many tokens (at least one text), so halving the batch size on
out-of-memory halves the packs."""
TOKENIZE_CHUNK = 64
"""Texts per tokenizer call: few enough that the first pack is ready soon, enough that the worker
thread rarely waits for the GIL (measured on an H100: 16, 32 and 64 within noise)."""
FIRST_PACK = 2
"""The first pack is this many times smaller than the others, so that the GPU starts early; not
much smaller, or the GPU outruns the Python launching its kernels (H100: 2 beat 4 and 8)."""
OUTPUT_FORMAT = ("padding", "pad_to_multiple_of", "padding_side", "return_tensors", "return_attention_mask",
                 "return_token_type_ids")
"""Tokenizer settings that shape model.preprocess's output, not its token ids: padding is never made."""


SAFE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
"""Encoder architectures whose packed forward is tested equal to model.encode: bidirectional
attention with as many key/value heads as query heads, absolute positions, no windows. Decoders
(causal attention, grouped-query attention, sliding windows: Qwen3-Embedding, Mistral-based
embedders) and every other architecture go through model.encode."""


def prompt_text(model: Any, prompt_name: str | None) -> str:
    """The prompt model.encode would put before each text (the named or the default one)."""
    name = prompt_name or model.default_prompt_name
    return model.prompts.get(name, "") if name else ""


def packable(model: Any, prompt_name: str | None) -> bool:
    """Whether model is a Transformer -> Pooling -> [Normalize] stack on a SAFE_MODEL_TYPES encoder
    that this module runs exactly as model.encode does, on a device with a packed attention
    kernel (see attention_path)."""
    if prompt_name and prompt_name not in model.prompts:
        return False  # model.encode says which prompts exist
    modules = list(model)
    names = [type(module).__name__ for module in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    transformer, pooling = modules[0], modules[1]
    network = getattr(transformer, "auto_model", None)
    return (getattr(pooling, "pooling_mode", None) in POOLING_MODES
            and tokenizer_settings(transformer) is not None
            and (getattr(pooling, "include_prompt", True) or not prompt_text(model, prompt_name))
            and getattr(transformer, "transformer_task", "feature-extraction") == "feature-extraction"
            and getattr(model, "truncate_dim", None) is None
            and network is not None and safe_architecture(network)
            and attention_path(network.device.type, network.dtype) is not None
            and _register_attention())


def tokenizer_settings(transformer: Any) -> dict[str, Any] | None:
    """The keyword arguments with which sentence-transformers' Transformer.preprocess (6.x) calls
    its tokenizer on texts (truncation, then the module's processing_kwargs for text and for all
    inputs), less OUTPUT_FORMAT; None where preprocess does more than call a fast tokenizer on
    prompt + text: a processor that is not the bare tokenizer (multimodal) or a chat template (the
    message modality). Lower-casing (do_lower_case) lives in the tokenizer's normalizer."""
    tokenizer = getattr(transformer, "tokenizer", None)
    if (tokenizer is None or not tokenizer.is_fast or getattr(transformer, "processor", tokenizer) is not tokenizer
            or set(getattr(transformer, "modality_config", None) or ("text",)) != {"text"}):
        return None
    settings = getattr(transformer, "processing_kwargs", None) or {}
    call = {"truncation": "longest_first", **(settings.get("text") or {}), **(settings.get("common") or {})}
    return {key: value for key, value in call.items() if key not in OUTPUT_FORMAT and key != "logits_to_keep"}


def forward_pack(network: Any, lengths: np.ndarray, ids: np.ndarray, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pack of texts (token counts, token ids end to end) through the network in packed
    attention: every token's hidden state, and where each text starts (then the end). Inputs go
    to the device without waiting for its queued work; `offset` is the first position id."""
    device = network.device
    ends = lengths.cumsum()
    positions = np.arange(len(ids)) - np.repeat(ends - lengths, lengths) + offset
    inputs = torch.from_numpy(np.stack([ids, positions])).to(device, non_blocking=True)
    input_ids, position_ids = inputs[:, None]
    bounds = torch.from_numpy(np.concatenate([[0], ends]).astype(np.int32)).to(device, non_blocking=True)
    longest = int(lengths.max())
    hidden = network(input_ids=input_ids, position_ids=position_ids, token_type_ids=torch.zeros_like(input_ids),
                     cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest,
                     max_length_k=longest).last_hidden_state[0]
    return hidden, bounds


def safe_architecture(network: Any) -> bool:
    """A bidirectional encoder of a SAFE_MODEL_TYPES type whose forward takes token_type_ids."""
    config = network.config
    return (config.model_type in SAFE_MODEL_TYPES and not getattr(config, "is_decoder", False)
            and not getattr(config, "add_cross_attention", False)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and getattr(network, "_supports_attention_backend", False)
            and "token_type_ids" in inspect.signature(network.forward).parameters)


def attention_path(device: str, dtype: torch.dtype) -> str | None:
    """How packed texts attend: 'varlen' (PyTorch's variable-length flash attention) on CUDA in
    half precision, 'per_text' (one attention call per text) on the CPU, or None: model.encode
    instead, said once in a warning, where neither is available (a per-text loop on a GPU would
    be slower than padding)."""
    if device == "cpu":
        return "per_text"
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16) and _varlen_kernel() is not None:
        return "varlen"
    reason = ("needs torch >= 2.10's varlen attention and float16 or bfloat16 weights" if device == "cuda"
              else f"has no packed attention kernel for {device}")
    _warn_once(f"padding-free encoding {reason} (here: torch {torch.__version__}, {dtype}); "
               "encoding with model.encode's padded batches instead")
    return None


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def encode(model: Any, texts: Sequence[str], prompt_name: str | None, batch_size: int,
           normalize: bool, progress: bool = False) -> torch.Tensor:
    """Float32 embeddings of each text (after its prompt), in input order, on the model's device.
    Texts are tokenized on a worker thread by the model's fast tokenizer with the settings
    model.preprocess gives it (tokenizer_settings: the same ids, tested), not by model.preprocess
    itself (padded tensors, per-text modality checks): on an H200 that took 0.45 s of a 0.65 s
    encode of autorag-ko, a tokenizer call 0.08 s, the encode with its tokens given 0.34 s.
    Nothing waits for the GPU until the caller reads the result, so the tokenizer and the Python
    that launches each pack run while the GPU computes the previous one (inputs go to the GPU with
    non_blocking: a plain copy from host memory first waits for all the GPU's queued work)."""
    transformer, pooling = model[0], model[1]
    network = transformer.auto_model
    offset = _position_offset(network)
    vectors = torch.empty(len(texts), network.config.hidden_size, dtype=torch.float32, device=network.device)
    cut: list[int] = []
    tokenized = _tokenized(model, list(texts), prompt_text(model, prompt_name) or None, cut)
    with torch.inference_mode(), _attention(network), tqdm(total=len(texts), unit="text", disable=not progress,
                                                           desc="Encoding") as bar:
        for first, lengths, ids in _packs(tokenized, batch_size * TOKENS_PER_TEXT):
            bar.update(len(lengths))
            hidden, bounds = forward_pack(network, lengths, ids, offset)
            vectors[first:first + len(lengths)] = _pool(hidden, bounds, pooling.pooling_mode)
    warn_truncated(sum(cut), len(texts), "texts", model.tokenizer.name_or_path, token_limit(model))
    has_normalize = len(model) == 3  # packable() checked that the third module is Normalize
    return F.normalize(vectors, dim=-1) if normalize or has_normalize else vectors


def _tokenized(model: Any, texts: list[str], prompt: str | None,
               cut: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(token count of each text, their token ids end to end) for consecutive chunks of texts,
    made on a worker thread by the model's fast tokenizer: the Rust tokenizer releases the GIL,
    and turning its lists into arrays there keeps the thread that launches the GPU's work free.
    Appends to `cut` how many texts of each chunk were truncated (those with overflowing tokens,
    which the tokenizer keeps anyway)."""
    tokenizer = model.tokenizer
    settings = tokenizer_settings(model[0])

    def tokenize(chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = tokenizer([prompt + text for text in chunk] if prompt else chunk, **settings,
                          return_attention_mask=False, return_token_type_ids=False)
        ids = batch["input_ids"]
        cut.append(sum(bool(encoding.overflowing) for encoding in batch.encodings))
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return lengths, np.fromiter(chain.from_iterable(ids), np.int64, int(lengths.sum()))

    with ThreadPoolExecutor(1) as worker:
        yield from worker.map(tokenize, [texts[i:i + TOKENIZE_CHUNK] for i in range(0, len(texts), TOKENIZE_CHUNK)])


def token_limit(model: Any) -> int | None:
    """The token count a text is cut to: the max_length of the model's tokenizer settings, else
    its max_seq_length."""
    return (tokenizer_settings(model[0]) or {}).get("max_length") or model.max_seq_length


def _packs(chunks: Iterable[tuple[np.ndarray, np.ndarray]],
           tokens: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index of the first text, token count of each text, their ids end to end) for runs of
    consecutive texts of at most `tokens` tokens together (one text at least); the first run is
    smaller (FIRST_PACK), so the GPU starts while the tokenizer is still at work. Without padding,
    order and mixed lengths cost nothing."""
    counts: list[int] = []
    pieces: list[np.ndarray] = []
    first = used = 0
    budget = max(tokens // FIRST_PACK, 1)
    for lengths, ids in chunks:
        start = end = 0  # the chunk's tokens in the current run
        for n in lengths.tolist():
            if counts and used + n > budget:
                pieces.append(ids[start:end])
                yield first, np.array(counts), np.concatenate(pieces)
                first, counts, pieces, used, budget, start = first + len(counts), [], [], 0, tokens, end
            counts.append(n)
            used += n
            end += n
        pieces.append(ids[start:end])
    if counts:
        yield first, np.array(counts), np.concatenate(pieces)


def _pool(hidden: torch.Tensor, bounds: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per packed text (bounds: where each text starts, then the end): its first token,
    last token, or the mean of its tokens."""
    if mode == "cls":
        return hidden[bounds[:-1].long()].float()
    if mode == "lasttoken":
        return hidden[bounds[1:].long() - 1].float()
    lengths = bounds.diff()
    text_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths,
                                            output_size=hidden.shape[0])  # a size given: no wait for the GPU
    sums = torch.zeros(len(lengths), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    return sums.index_add_(0, text_of_token, hidden.float()) / lengths[:, None]


def _position_offset(network: Any) -> int:
    """Where position ids start: RoBERTa-family embeddings (XLM-R) count from padding_idx + 1."""
    embeddings = getattr(network, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return padding_idx + 1 if isinstance(padding_idx, int) else 0


def _packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                      cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention within each packed text; inputs (1, heads, tokens, dim), output (1, tokens, heads, dim)."""
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if attention_path(q.device.type, q.dtype) == "varlen":
        out = _varlen_kernel()(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling)
    else:
        edges = cu_seq_lens_q.tolist()
        out = torch.cat([F.scaled_dot_product_attention(*(t[None, a:b].transpose(1, 2) for t in (q, k, v)),
                                                        scale=scaling)[0].transpose(0, 1)
                         for a, b in zip(edges[:-1], edges[1:])])
    return out[None], None


def _varlen_kernel() -> Any:
    """PyTorch's variable-length flash attention (torch >= 2.10), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _register_attention() -> bool:
    """Make ATTENTION a transformers attention implementation (transformers >= 5), once. It has
    no mask function: transformers then builds no mask for it, whereas with one (even one that
    returns None) transformers >= 5.24 first searches every forward's position ids for packed
    sequences, a `.all()` on a GPU tensor that waits for the GPU once per pack."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(ATTENTION, _packed_attention)
    return True


@contextlib.contextmanager
def _attention(network: Any) -> Iterator[None]:
    """Run network with packed attention, then give it back its own."""
    _register_attention()
    previous = network.config._attn_implementation
    network.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        network.set_attn_implementation(previous)
