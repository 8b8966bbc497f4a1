"""Fast pair scoring for sequence-classification rerankers (torch): all pairs tokenized in one
call, run longest first so batches carry little padding and an out-of-memory shows at once,
copied to the host once. CrossEncoder.predict and FlagReranker.compute_score tokenize per batch
or per pair in Python and leave the GPU idle meanwhile (see bench/RESULTS.md)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ragopt.stages.models import attention_kernels, warn_truncated

PAD_MULTIPLE = 16
"""Padded lengths are rounded up to this, so batches share a few shapes (and kernels)."""


def pair_features(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int,
                  query_max_length: int | None = None) -> dict[str, list[list[int]]]:
    """Unpadded model inputs for (query, passage) pairs, all pairs in one tokenizer pass.
    Without query_max_length, CrossEncoder's truncation (longest first, to max_length). With it,
    FlagReranker's: the query cut to its first query_max_length tokens and the passage cut to fit
    max_length, on token ids (text is never cut and re-tokenized, which could change the tokens).
    One warning counts the pairs that were cut."""
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    if query_max_length is None:
        features, cut = _longest_first(tokenizer, queries, passages, max_length)
        what = "query-passage pairs"
    else:
        features, cut = _query_first(tokenizer, queries, passages, max_length, query_max_length)
        what = f"query-passage pairs (queries first cut to {query_max_length} tokens)"
    warn_truncated(cut, len(pairs), what, tokenizer.name_or_path, max_length)
    return features


def _input_keys(tokenizer: Any) -> list[str]:
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokenizer.model_input_names]


def _longest_first(tokenizer: Any, queries: list[str], passages: list[str],
                   max_length: int) -> tuple[dict[str, list[list[int]]], int]:
    """CrossEncoder's inputs, and how many pairs were cut: of those that reached max_length, the
    ones that grow past it when allowed one token more (only they are tokenized again)."""
    encoded = tokenizer(queries, passages, truncation="longest_first", max_length=max_length)
    full = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) >= max_length]
    longer = tokenizer([queries[i] for i in full], [passages[i] for i in full], truncation="longest_first",
                       max_length=max_length + 1)["input_ids"] if full else []
    return {k: encoded[k] for k in _input_keys(tokenizer)}, sum(len(ids) > max_length for ids in longer)


def _query_first(tokenizer: Any, queries: list[str], passages: list[str], max_length: int,
                 query_max_length: int) -> tuple[dict[str, list[list[int]]], int]:
    """FlagReranker's inputs, and how many pairs lost tokens to its truncation."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    features: dict[str, list[list[int]]] = {k: [] for k in _input_keys(tokenizer)}
    cut = 0
    for query, passage in zip(backend.encode_batch(queries, add_special_tokens=False),
                              backend.encode_batch(passages, add_special_tokens=False)):
        whole = len(query.ids) + len(passage.ids)
        query.truncate(query_max_length)
        passage.truncate(max(room - len(query.ids), 0))
        cut += len(query.ids) + len(passage.ids) < whole
        pair = backend.post_process(query, passage, add_special_tokens=True)
        for key, values in (("input_ids", pair.ids), ("attention_mask", pair.attention_mask),
                            ("token_type_ids", pair.type_ids)):
            if key in features:
                features[key].append(values)
    return features, cut


def classify_pairs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int, max_length: int,
                   device: str, query_max_length: int | None = None) -> torch.Tensor:
    """The logits (pairs x labels, float32, on the device) of a sequence-classification model
    for each (query, passage) pair, in input order."""
    features = pair_features(tokenizer, pairs, max_length, query_max_length)
    order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
    logits = []
    with torch.inference_mode(), attention_kernels(device):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({k: [v[i] for i in rows] for k, v in features.items()}, padding=True,
                                  pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
            logits.append(model(**batch.to(device)).logits.float())
    labels = model.config.num_labels
    scores = torch.empty((len(pairs), labels), dtype=torch.float32, device=device)
    if logits:
        scores[torch.from_numpy(order).to(device)] = torch.cat(logits)
    return scores
