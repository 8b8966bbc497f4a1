"""Hard negatives for tuning a bi-encoder: passages close to a question that do not answer it,
mined by the base model (sentence-transformers' mine_hard_negatives), by the best BM25 of the
study, or by both interleaved. A relevant passage, or another with the same text, is never a
negative, and a candidate the base model scores too close to the question's weakest positive
(the relative margin) is skipped as a likely unlabelled positive. A question's negatives depend
on that question alone (given the BM25 that mines), so mining a pool and cutting it to some of
its questions equals mining those questions alone."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import numpy as np

from ragopt.data.qa import Queries
from ragopt.errors import ConfigError
from ragopt.provenance import versions
from ragopt.scoring.metrics import at_k, relevance
from ragopt.stages.cache import entry_key
from ragopt.stages.models import device_type
from ragopt.stages.ranking import SCORE_BLOCK, Ranking
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.dense import DenseSpec, load_sentence_transformer, pool_key
from ragopt.stages.retrievers.tuning import FinetuneSpec

if TYPE_CHECKING:
    from ragopt.stages.engine import Engine
    from ragopt.tune.pool import TrainingSource

WIDTH = 10
"""Candidates looked at per negative wanted (beyond the positives), as mine_hard_negatives does
when a margin is set."""


def mine(source: TrainingSource, rows: np.ndarray, dense: DenseSpec, ft: FinetuneSpec, bm25: list[BM25Spec],
         progress: bool = False) -> np.ndarray:
    """int32 [len(rows), ft.negatives] corpus rows, -1 where fewer were found; cached. model:
    sentence_transformers.util.mine_hard_negatives (relative_margin=ft.margin, the whole corpus
    searched); bm25: the best (mean nDCG@10 on these rows) of the bm25 specs, margin from the base
    model's embeddings; both: interleaved. Per question independent of the other rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if ft.negatives == 0 or not len(rows):
        return np.full((len(rows), ft.negatives), -1, dtype=np.int32)
    dense, engine = dense.base(), source.engine
    uses_bm25 = ft.negatives_from != "model"
    if uses_bm25 and not bm25:
        raise ConfigError(f"negatives_from: {ft.negatives_from} needs a bm25 retriever entry in the config")
    if ft.negatives_from != "bm25" and dense.query_model is not None:
        raise ConfigError(f"{dense.describe()} encodes queries with another model ({dense.query_model}); "
                          "mine its negatives with negatives_from: bm25")
    key = entry_key("negatives", engine.locate(dense.model).identity, engine.corpus.key,
                    [source.texts[i] for i in rows], [source.groups[i] for i in rows],
                    dense.model_dump(exclude={"batch_size"}), device_type(engine.device),
                    ft.model_dump(include={"negatives", "negatives_from", "margin"}),
                    [spec.key() for spec in bm25] if uses_bm25 else None,
                    versions("torch", "transformers", "sentence-transformers"))
    return engine.cache.arrays("negatives", key, lambda: {
        "rows": _mine(source, rows, dense, ft, bm25, progress)})["rows"]


def _mine(source: TrainingSource, rows: np.ndarray, dense: DenseSpec, ft: FinetuneSpec, bm25: list[BM25Spec],
          progress: bool) -> np.ndarray:
    """Each question's first ft.negatives candidates that are neither relevant nor a relevant
    passage's text, as the first row with their text; twice as many are asked of each source so
    that overlap and those filters leave enough."""
    texts = [source.texts[i] for i in rows]
    positives = [source.positives(int(i)) for i in rows]
    want = 2 * ft.negatives
    lists = []
    if ft.negatives_from != "bm25":
        lists.append(_by_model(source.engine, texts, positives, dense, ft.margin, want, progress))
    if ft.negatives_from != "model":
        groups = [source.groups[i] for i in rows]
        lists.append(_by_bm25(source.engine, texts, groups, positives, dense, ft.margin, want, bm25))
    first = first_rows(source.engine.corpus.contents)
    found = np.full((len(texts), ft.negatives), -1, dtype=np.int32)
    for q, candidates in enumerate(zip(*lists)):
        excluded = {first[p] for p in positives[q]}
        kept = [first[r] for ranks in zip_longest(*candidates) for r in ranks if r is not None]
        kept = [r for r in dict.fromkeys(kept) if r not in excluded][:ft.negatives]
        found[q, :len(kept)] = kept
    return found


def first_rows(contents: list[str]) -> np.ndarray:
    """The first corpus row holding each row's text (a passage stored twice is one candidate)."""
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(text, row) for row, text in enumerate(contents)], dtype=np.int64)


def _by_model(engine: Engine, texts: list[str], positives: list[list[int]], dense: DenseSpec, margin: float,
              want: int, progress: bool) -> list[list[int]]:
    """mine_hard_negatives' candidates per question, best first, as corpus rows, looked for in the
    whole corpus: its default window (10 x asked + the call's most positives) leaves a base model
    that ranks relevant passages low (MiniLM on Korean) almost nothing below the margin, and would
    make a question's negatives depend on the other questions of the call. A call holds distinct
    texts (the library reads a repeated text as one question) and at most SCORE_BLOCK scores; the
    corpus is encoded once for all calls."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    corpus = [dense.passage_prefix + text for text in engine.corpus.contents]
    row_of = {text: int(row) for text, row in zip(corpus, first_rows(corpus))}
    distinct = len(row_of)
    anchors = [dense.query_prefix + text for text in texts]
    relevant = [list(dict.fromkeys(corpus[p] for p in rows)) for rows in positives]
    rounds: dict[int, list[int]] = defaultdict(list)
    repeats: dict[str, int] = defaultdict(int)
    for q, anchor in enumerate(anchors):
        if relevant[q]:
            rounds[repeats[anchor]].append(q)
            repeats[anchor] += 1
    size = max(1, SCORE_BLOCK // distinct)
    model = _model(engine, dense)
    found: list[list[int]] = [[] for _ in texts]
    with tempfile.TemporaryDirectory() as embeddings:
        for members in (part[i:i + size] for part in rounds.values() for i in range(0, len(part), size)):
            pairs = [(anchors[q], passage) for q in members for passage in relevant[q]]
            mined = mine_hard_negatives(
                Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}), model,
                corpus=corpus, range_max=distinct, relative_margin=margin, num_negatives=min(want, distinct),
                sampling_strategy="top", output_format="labeled-pair", query_prompt_name=dense.query_prompt_name,
                corpus_prompt_name=dense.passage_prompt_name, batch_size=dense.batch_size, faiss_batch_size=size,
                verbose=progress, cache_folder=embeddings)
            negatives: dict[str, list[int]] = defaultdict(list)
            for anchor, passage, label in zip(mined["anchor"], mined["positive"], mined["label"]):
                if label == 0:
                    negatives[anchor].append(row_of[passage])
            for q in members:
                found[q] = negatives[anchors[q]]
    return found


def _model(engine: Engine, dense: DenseSpec) -> Any:
    """The base model, loaded once into the engine's pool under the key its dense retriever uses."""
    located = engine.locate(dense.model)
    return engine.pool.get(pool_key(located, dense, engine.device),
                           lambda: load_sentence_transformer(located, dense, engine.device))


def _by_bm25(engine: Engine, texts: list[str], groups: list[list[list[int]]], positives: list[list[int]],
             dense: DenseSpec, margin: float, want: int, bm25: list[BM25Spec]) -> list[list[int]]:
    """The best BM25's first WIDTH x want + positives passages per question, in its order, less
    those the base model scores above the question's weakest positive minus |that| x margin
    (mine_hard_negatives' relative margin, on cosine similarities)."""
    queries = Queries(texts)
    windows = [WIDTH * want + len(p) for p in positives]
    ranked = _best(engine, bm25, queries, groups, max(windows)).ids
    retriever = engine.retriever(dense)
    query_vectors = _unit(retriever.embed(queries.texts, queries.key, "query"))
    found = []
    for q, window in enumerate(windows):
        if not positives[q]:
            found.append([])
            continue
        candidates = ranked[q, :window]
        candidates = candidates[candidates >= 0]
        weakest = (_unit(retriever.corpus_vectors[positives[q]]) @ query_vectors[q]).min()
        similarity = _unit(retriever.corpus_vectors[candidates]) @ query_vectors[q]
        found.append(candidates[similarity <= weakest - abs(weakest) * margin].tolist())
    return found


def _best(engine: Engine, bm25: list[BM25Spec], queries: Queries, groups: list[list[list[int]]],
          depth: int) -> Ranking:
    """The ranking, `depth` deep, of the bm25 spec with the best mean nDCG@10 on the questions
    that have relevant passages (the first of equals)."""
    scored = np.flatnonzero([len(g) > 0 for g in groups])
    best, best_ndcg = None, -np.inf
    for spec in bm25:
        ranking = engine.retrieve(spec, queries, max(depth, 10))
        gains, n_rel = relevance(ranking.ids[scored, :10], [groups[q] for q in scored], len(engine.corpus))
        ndcg = at_k(gains, n_rel, [10], ("ndcg",))["ndcg@10"].mean() if len(scored) else 0.0
        if ndcg > best_ndcg:
            best, best_ndcg = ranking, ndcg
    return best


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1: mine_hard_negatives compares normalized embeddings."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
