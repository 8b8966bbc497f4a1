"""Dense retrieval with sentence-transformers bi-encoders: embeddings cached on disk per (model
revision, settings, library versions, texts); exact search by chunked matrix products with a
running top-k on the device, or a FAISS HNSW index on the CPU for corpora above
`exact_search_max` passages. Every passage is retrieved (a dense retriever scores them all)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from ragopt.stages.cache import cache_key, entry_key
from ragopt.data.qa import Queries
from ragopt.stages.labels import model_label
from ragopt.stages.models import Located, Precision, device_type, load_model, torch_dtype
from ragopt.stages.params import Chooser, StrictModel
from ragopt.provenance import versions
from ragopt.stages.ranking import SCORE_BLOCK, Ranking, ScoreStats, padded
from ragopt.errors import ModelError
from ragopt.stages.retrievers._base import Context, Retriever, RetrieverEntry, RetrieverSpec, register
from ragopt.stages.retrievers.tuning import FinetuneConfig, FinetuneSpec

HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 256
"""Candidates an HNSW search keeps (at least the depth asked): fixed, so that a shallower search
is a prefix of a deeper one up to this depth."""
HNSW_STATS_SAMPLE = 65_536
"""Above exact_search_max, score statistics come from every n-th passage, about this many."""


class _DenseSettings(StrictModel):
    """A sentence-transformers bi-encoder. Prefixes are prepended to the text (KoE5 and E5 need
    'query: ' / 'passage: '); prompt names select prompts stored with the model instead. A
    different `query_model` encodes the queries (asymmetric encoders with two towers)."""

    model: str
    query_model: str | None = None
    query_prefix: str = ""
    passage_prefix: str = ""
    query_prompt_name: str | None = None
    passage_prompt_name: str | None = None
    max_length: int | None = Field(None, ge=1)
    normalize: bool = True
    batch_size: int = Field(32, ge=1)
    dtype: Precision = "auto"
    trust_remote_code: bool = False

    @model_serializer(mode="wrap")
    def _without_finetune(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """No `finetune` key when there is none, so that the keys of untuned specs (and the
        fingerprints of stored studies) stay what they were before tuning existed."""
        dumped = handler(self)
        if dumped.get("finetune", 0) is None:
            del dumped["finetune"]
        return dumped


class DenseSpec(RetrieverSpec, _DenseSettings):
    __doc__ = _DenseSettings.__doc__

    type: Literal["dense"] = "dense"
    finetune: FinetuneSpec | None = None
    """Tune the model first (inside a study or `ragopt finetune`, which replace this spec by one
    whose model is the tuned folder); None: the model as it is."""

    def describe(self) -> str:
        tuned = "" if self.finetune is None else f"+{self.finetune.describe()}"
        return f"dense[{model_label(self.model)}{tuned}]"

    def base(self) -> "DenseSpec":
        """The same retriever untuned."""
        return self.model_copy(update={"finetune": None})


class DenseConfig(RetrieverEntry, _DenseSettings):
    """A dense retriever: one model (list several to compare models), optionally tuned to the
    study's questions (`finetune:`, whose settings are searched)."""

    type: Literal["dense"]
    finetune: FinetuneConfig | None = None

    def suggest(self, choose: Chooser, resolve: Callable[[str], RetrieverSpec]) -> DenseSpec:
        tuning = self.finetune.suggest(self.name, choose) if self.finetune is not None else None
        return DenseSpec(**self.model_dump(exclude={"name", "type", "finetune"}), finetune=tuning)

    def warm_up_specs(self) -> list[RetrieverSpec]:
        return [DenseSpec(**self.model_dump(exclude={"name", "type", "finetune"}))]

    def models(self) -> list[str]:
        return list(dict.fromkeys(super().models() + (self.finetune.models() if self.finetune else [])))

    def unused(self) -> set[str]:
        return self.finetune.unused() if self.finetune is not None else set()

    def localized(self, local: Callable[[str], str]) -> "DenseConfig":
        entry = super().localized(local)
        if entry.finetune is None or entry.finetune.guide is None:
            return entry
        guide = local(entry.finetune.guide)
        return entry.model_copy(update={"finetune": entry.finetune.model_copy(update={"guide": guide})})


def load_sentence_transformer(located: Located, spec: DenseSpec, device: str) -> Any:
    """Load a bi-encoder from its local folder, in the spec's precision; remote code only if the
    config allows it."""
    from sentence_transformers import SentenceTransformer

    model = load_model("dense", located, lambda path: SentenceTransformer(
        path, device=device, trust_remote_code=spec.trust_remote_code))
    model.to(torch_dtype(spec.dtype, device))
    if spec.max_length is not None:
        model.max_seq_length = spec.max_length
    return model


def pool_key(located: Located, spec: DenseSpec, device: str) -> str:
    """The key a loaded bi-encoder is held under in the model pool: whoever loads it with these
    settings on this device (the retriever, the hard-negative miner) shares one copy."""
    return cache_key("dense", located.identity, spec.model_dump(exclude={"query_model"}), device)


class DenseRetriever(Retriever):
    """Embeds the corpus once and answers any query set by cosine (normalize) or dot product."""

    def __init__(self, spec: DenseSpec, context: Context) -> None:
        super().__init__(spec, context)
        if spec.finetune is not None:
            raise ModelError(f"{spec.describe()} is tuned inside a study or by `ragopt finetune`; what runs is the "
                             "tuned model's folder (best.yaml names it)")
        self.spec = spec
        self.corpus_vectors = self.embed(context.corpus.contents, context.corpus.key, "passage")
        self.index = hnsw_index(self.corpus_vectors) if len(context.corpus) > context.exact_search_max else None

    def theoretical_min(self, spec: DenseSpec) -> float | None:
        return -1.0 if spec.normalize else None

    def embed(self, texts: list[str], texts_key: str, role: str) -> np.ndarray:
        """Embeddings of texts as queries or passages, with that role's model, prefix or prompt."""
        spec, context = self.spec, self.context
        located = context.locate(spec.query_model if role == "query" and spec.query_model else spec.model)
        prefix = spec.query_prefix if role == "query" else spec.passage_prefix
        prompt_name = spec.query_prompt_name if role == "query" else spec.passage_prompt_name
        settings = {"prefix": prefix, "prompt_name": prompt_name, "max_length": spec.max_length,
                    "normalize": spec.normalize, "trust_remote_code": spec.trust_remote_code,
                    "dtype": str(torch_dtype(spec.dtype, context.device)), "device": device_type(context.device)}
        key = entry_key("embeddings", located.identity, settings, texts_key,
                        versions("torch", "transformers", "sentence-transformers"))
        model_key = pool_key(located, spec, context.device)

        def encode(batch_size: int) -> np.ndarray:
            from ragopt.stages.retrievers import packed

            model = context.pool.get(model_key, lambda: load_sentence_transformer(located, spec, context.device))
            inputs = [prefix + t for t in texts]
            show = context.progress and len(texts) > batch_size
            if packed.packable(model, prompt_name):
                return packed.encode(model, inputs, prompt_name, batch_size, spec.normalize, show).cpu().numpy()
            from ragopt.stages.models import attention_kernels

            with attention_kernels(context.device):
                return model.encode(inputs, prompt_name=prompt_name, batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=spec.normalize, show_progress_bar=show).float().cpu().numpy()

        return context.cache.arrays("embeddings", key, lambda: {
            "vectors": context.pool.batched(model_key, spec.batch_size, encode)})["vectors"]

    def search(self, spec: DenseSpec, queries: Queries, depth: int) -> Ranking:
        query_vectors = self.embed(queries.texts, queries.key, "query")
        if self.index is not None:
            return hnsw_search(self.index, self.corpus_vectors, query_vectors, depth)
        from ragopt.stages.retrievers._scan import exact_search

        return exact_search(query_vectors, self.corpus_vectors, depth, self.context.device)


def hnsw_index(vectors: np.ndarray) -> Any:
    """A FAISS HNSW graph over inner products, for corpora too large to scan per query set."""
    try:
        import faiss
    except ImportError:
        raise ImportError("corpora above exact_search_max need FAISS: pip install faiss-cpu") from None
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def hnsw_search(index: Any, corpus: np.ndarray, queries: np.ndarray, depth: int) -> Ranking:
    """Approximate top-`depth` from a fixed-size candidate list, ties by corpus row; the score
    statistics are estimated on every n-th passage of the corpus (the highest is the best hit's)."""
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, depth)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores, ids = index.search(q, depth)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=1)
    ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
    sample = corpus[::max(1, len(corpus) // HNSW_STATS_SAMPLE)]
    block = max(1, SCORE_BLOCK // len(sample))
    stats = ScoreStats.concat([ScoreStats.of(q[i:i + block] @ sample.T) for i in range(0, max(1, len(q)), block)])
    stats = replace(stats, max=np.fmax(stats.max, scores[:, 0]))
    return padded(ids, scores, depth, stats)


register(DenseConfig, DenseSpec, DenseRetriever)
