"""Fast pair scoring for sequence-classification rerankers (torch): all pairs tokenized in one
call, run longest first so batches carry little padding and an out-of-memory shows at once,
copied to the host once. CrossEncoder.predict and FlagReranker.compute_score tokenize per batch
or per pair in Python and leave the GPU idle meanwhile (see bench/RESULTS.md)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ragopt.models import attention_kernels

PAD_MULTIPLE = 16
"""Padded lengths are rounded up to this, so batches share a few shapes (and kernels)."""


def pair_features(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int,
                  query_max_length: int | None = None) -> dict[str, list[list[int]]]:
    """Unpadded model inputs for (query, passage) pairs, all pairs in one tokenizer pass.
    Without query_max_length, CrossEncoder's truncation (longest first, to max_length). With it,
    FlagReranker's: the query cut to its first query_max_length tokens and the passage cut to fit
    max_length, on token ids (text is never cut and re-tokenized, which could change the tokens)."""
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokenizer.model_input_names]
    if query_max_length is None:
        encoded = tokenizer(queries, passages, truncation="longest_first", max_length=max_length)
        return {k: encoded[k] for k in keys}
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    features: dict[str, list[list[int]]] = {k: [] for k in keys}
    for query, passage in zip(backend.encode_batch(queries, add_special_tokens=False),
                              backend.encode_batch(passages, add_special_tokens=False)):
        query.truncate(query_max_length)
        passage.truncate(max(room - len(query.ids), 0))
        pair = backend.post_process(query, passage, add_special_tokens=True)
        for key, values in (("input_ids", pair.ids), ("attention_mask", pair.attention_mask),
                            ("token_type_ids", pair.type_ids)):
            if key in features:
                features[key].append(values)
    return features


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
