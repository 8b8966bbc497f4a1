"""The Pipeline a user loads: an exported best.yaml bound to a corpus, run by the same Engine
as the trials."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ragopt.stages.cache import Cache
from ragopt.data.qa import Corpus, Queries, load_corpus, nfc
from ragopt.data.documents import Documents, load_documents
from ragopt.stages.engine import Engine
from ragopt.errors import ConfigError, DataError
from ragopt.stages.models import device_type
from ragopt.stages.ranking import Ranking
from ragopt.stages.spec import PipelineSpec


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    contents: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """The passage's metadata: its corpus file's other columns, or its node's metadata."""


class Pipeline:
    """A tuned retrieval pipeline over a corpus.

    Example:
        pipeline = ragopt.load_pipeline("out/best.yaml", "corpus.parquet")
        for hit in pipeline.retrieve("시중은행 전환 요건은?")[0]:
            print(hit.rank, hit.doc_id, hit.score)
    """

    def __init__(self, spec: PipelineSpec, corpus: Corpus, cache: Cache | None = None, device: str = "auto",
                 progress: bool = False, exact_search_max: int = 1_000_000) -> None:
        self.spec = spec
        self.engine = Engine(corpus, cache, device, progress, exact_search_max)

    def retrieve(self, queries: str | list[str], k: int | None = None) -> list[list[Hit]]:
        """The top-k passages (default: the tuned k) for each query."""
        texts, k = self.checked(queries, k)
        return self._hits(self.engine.run(self.spec, Queries(texts), k))

    def candidates(self, queries: str | list[str], k: int | None = None) -> list[list[Hit]]:
        """What the retriever hands the reranker for each query: its first max(k, reranker depth)
        passages (k defaults to the tuned k) with its own scores; without a reranker, retrieve's
        top k."""
        texts, k = self.checked(queries, k)
        depth = k if self.spec.reranker is None else max(k, self.spec.reranker.depth)
        return self._hits(self.engine.retrieve(self.spec.retriever, Queries(texts), depth))

    def rerank(self, query: str, passages: Sequence[str]) -> list[tuple[int, float]]:
        """Passages from anywhere (another retriever's, in its order) reordered for a query by the
        tuned reranker: (position in `passages`, score) for each, best first, ties in the order
        given. A (query, passage) pair is scored once: pairs the pipeline scored are read back."""
        if self.spec.reranker is None:
            raise ConfigError(f"the pipeline {self.spec.describe()} has no reranker; rerank with the best.yaml of a "
                              "study whose search space lists rerankers")
        texts, _ = self.checked(query, None)
        if not passages:
            return []
        given = Ranking(np.arange(len(passages))[None, :], np.zeros((1, len(passages)), dtype=np.float32))
        reranker = self.spec.reranker.model_copy(update={"depth": len(passages)})  # depth keys no score or model
        ranking = self.engine.rerank(reranker, given, Queries(texts), [nfc(p) for p in passages])
        return [(int(i), float(s)) for i, s in zip(ranking.ids[0], ranking.scores[0])]

    def checked(self, queries: str | list[str], k: int | None) -> tuple[list[str], int]:
        """The query texts and k, or an error naming what to change."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        if k is not None and k < 1:
            raise ConfigError(f"k must be at least 1 passage per question; got {k}")
        if not texts or any(not t.strip() for t in texts):
            raise DataError("give at least one question, and no empty one")
        return texts, k or self.spec.top_k

    def _hits(self, ranking: Ranking) -> list[list[Hit]]:
        corpus = self.engine.corpus
        return [[Hit(r + 1, corpus.doc_ids[i], float(s), corpus.contents[i], corpus.metadata_of(i))
                 for r, (i, s) in enumerate(zip(ids, scores)) if i >= 0]
                for ids, scores in zip(ranking.ids, ranking.scores)]


def load_pipeline(best: str | Path, corpus: str | Path | Corpus | None = None, cache_dir: str | Path | None = None,
                  device: str = "auto", progress: bool = False,
                  documents: str | os.PathLike | Documents | None = None) -> Pipeline:
    """Load an exported best.yaml and bind it to a corpus (a file path or a Corpus) or, for a
    pipeline tuned on documents, to documents (a folder, glob or file, or Documents) that it
    cuts with its tuned chunker; it searches as its trial did (exact or HNSW above the same
    threshold), with a warning when the device type differs from the trial's. With a cache_dir,
    corpus embeddings and tokens (and chunk spans) are reused from an earlier run."""
    from ragopt.serving.export import read_export

    exported = read_export(best)
    if corpus is None and documents is None:
        raise ConfigError("give the passages to search: a corpus file (--corpus), or documents that the tuned "
                          "chunker cuts (--documents)")
    if corpus is not None and documents is not None:
        raise ConfigError("give a corpus (--corpus) or documents (--documents), not both: documents are cut into "
                          "the corpus the pipeline searches")
    if documents is not None:
        corpus = chunk(exported.spec, documents, cache_dir, device)
    elif not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    pipeline = Pipeline(exported.spec, corpus, Cache(cache_dir) if cache_dir else None, device, progress,
                        exported.exact_search_max)
    served = device_type(pipeline.engine.device)
    if exported.device is not None and served != exported.device:
        warnings.warn(f"{best} was tuned on {exported.device} and runs on {served} here: an `auto` precision and "
                      "exact search follow the device, so scores (and near-ties) may differ from the study's",
                      UserWarning, stacklevel=2)
    return pipeline


def chunk(spec: PipelineSpec, documents: str | os.PathLike | Documents, cache_dir: str | Path | None = None,
          device: str = "auto") -> Corpus:
    """Documents cut the way a tuned pipeline cuts them: the corpus its trial searched, for the
    same documents (chunk ids are `document#start-end`, each chunk with its document's metadata)."""
    from ragopt.scoring.chunkings import Chunkings

    if spec.chunker is None:
        raise ConfigError(f"the pipeline {spec.describe()} was tuned on passages, not documents, so it has no "
                          "chunker: give it a corpus file, or tune one with data.documents and chunkers")
    if not isinstance(documents, Documents):
        documents = load_documents(documents)
    return Chunkings(documents, None, Cache(cache_dir), device).get(spec.chunker).corpus


def write_corpus(corpus: Corpus, path: str | Path) -> None:
    """A corpus as a file other tools read: doc_id, contents and a metadata column (mappings), as
    JSON lines (.jsonl), parquet (.parquet) or CSV (.csv, metadata as JSON)."""
    import json

    import pandas as pd

    from ragopt.files import atomic_write

    path = Path(path)
    frame = pd.DataFrame({"doc_id": corpus.doc_ids, "contents": corpus.contents,
                          "metadata": [corpus.metadata_of(i) for i in range(len(corpus))]})
    if path.suffix == ".jsonl":
        atomic_write(path, lambda tmp: frame.to_json(tmp, orient="records", lines=True, force_ascii=False))
    elif path.suffix == ".parquet":
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    elif path.suffix == ".csv":
        frame["metadata"] = [json.dumps(m, ensure_ascii=False, default=str) for m in frame["metadata"]]
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        raise ConfigError(f"{path}: write the corpus as .jsonl, .parquet or .csv")
