"""The Pipeline a user loads: an exported best.yaml bound to a corpus, run by the same Engine
as the trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ragopt.cache import Cache
from ragopt.data import Corpus, Queries, load_corpus
from ragopt.engine import Engine
from ragopt.errors import ConfigError, DataError
from ragopt.spec import PipelineSpec


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    contents: str


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
        texts = [queries] if isinstance(queries, str) else list(queries)
        if k is not None and k < 1:
            raise ConfigError(f"k must be at least 1 passage per question; got {k}")
        if not texts or any(not t.strip() for t in texts):
            raise DataError("give at least one question, and no empty one")
        ranking = self.engine.run(self.spec, Queries(texts), k or self.spec.top_k)
        corpus = self.engine.corpus
        return [[Hit(r + 1, corpus.doc_ids[i], float(s), corpus.contents[i])
                 for r, (i, s) in enumerate(zip(ids, scores)) if i >= 0]
                for ids, scores in zip(ranking.ids, ranking.scores)]


def load_pipeline(best: str | Path, corpus: str | Path | Corpus, cache_dir: str | Path | None = None,
                  device: str = "auto", progress: bool = False) -> Pipeline:
    """Load an exported best.yaml and bind it to a corpus (a file path or a Corpus), searching
    as its trial did (exact or HNSW above the same threshold). With a cache_dir, corpus
    embeddings and tokens are reused from an earlier run."""
    from ragopt.export import read_export

    exported = read_export(best)
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    return Pipeline(exported.spec, corpus, Cache(cache_dir) if cache_dir else None, device, progress,
                    exported.exact_search_max)
