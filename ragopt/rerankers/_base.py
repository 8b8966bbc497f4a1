"""Reranking: reorder the first `depth` candidates of a ranking by a pair scorer, with every
(model, query, passage) score cached so candidate lists shared by several retrievers or
depths are scored once."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from ragopt.cache import ScoreTable
from ragopt.retrievers._base import Ranking


class PairScorer(Protocol):
    """A model that scores (query, passage) pairs, higher is more relevant. FlagEmbedding's
    rerankers plug in here the same way as sentence-transformers' CrossEncoder."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


def by_length(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Pair order, longest first: batches of similar length carry little padding, and the
    largest batch runs first, so an out-of-memory shows at once."""
    return np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")


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
    """The last logit of a sequence-classification model for each (query, passage) pair, in
    input order. Pairs are tokenized at once by pair_features, run longest first so batches
    carry little padding and an out-of-memory shows at once, and copied to the host once.
    CrossEncoder.predict and FlagReranker.compute_score tokenize per batch or per pair in
    Python and leave the GPU idle meanwhile (see bench/RESULTS.md)."""
    from ragopt.models import attention_kernels

    features = pair_features(tokenizer, pairs, max_length, query_max_length)
    order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
    logits = []
    with torch.inference_mode(), attention_kernels(device):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({k: [v[i] for i in rows] for k, v in features.items()}, padding=True,
                                  pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
            logits.append(model(**batch.to(device)).logits[:, -1].float())
    scores = torch.empty(len(pairs), dtype=torch.float32, device=device) if pairs else torch.zeros(0)
    if logits:
        scores[torch.from_numpy(order).to(device)] = torch.cat(logits)
    return scores


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """64-bit content hashes of texts, the halves of a pair's cache key."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts],
                    dtype=np.uint64)


def rerank(ranking: Ranking, depth: int, query_texts: Sequence[str], query_hashes: np.ndarray,
           doc_texts: Sequence[str], doc_hashes: np.ndarray, load_scorer: Callable[[], PairScorer],
           table: ScoreTable) -> Ranking:
    """Reorder ranks [0, depth) by the scorer; ranks from depth on keep the retriever's order. The
    scorer is loaded only when some pair is not in the score table yet."""
    head = ranking.ids[:, :depth]
    valid = head >= 0
    rows, cols = np.nonzero(valid)
    docs = head[rows, cols]
    with np.errstate(over="ignore"):
        keys = query_hashes[rows] * np.uint64(0x9E3779B97F4A7C15) ^ doc_hashes[docs]
    scores, found = table.lookup(keys)
    if not found.all():
        todo = np.flatnonzero(~found)
        unique_keys, first = np.unique(keys[todo], return_index=True)
        pick = todo[first]
        fresh = load_scorer().score([(query_texts[rows[i]], doc_texts[docs[i]]) for i in pick])
        table.add(unique_keys, fresh)
        scores, _ = table.lookup(keys)
    grid = np.full(head.shape, -np.inf, dtype=np.float32)
    grid[rows, cols] = scores
    order = np.lexsort((np.broadcast_to(np.arange(head.shape[1]), head.shape), -grid), axis=1)
    new_ids = np.concatenate([np.take_along_axis(head, order, axis=1), ranking.ids[:, depth:]], axis=1)
    new_scores = np.concatenate([np.take_along_axis(grid, order, axis=1), ranking.scores[:, depth:]], axis=1)
    return Ranking(new_ids, new_scores)
