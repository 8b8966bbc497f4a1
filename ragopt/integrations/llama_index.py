"""The pipeline ragopt tuned (an exported best.yaml) inside LlamaIndex: RagoptRetriever runs it
over your nodes, RagoptReranker reranks any retriever's nodes with its reranker. Both run the
same Engine as `ragopt query` and `ragopt.load_pipeline`, so they rank exactly as it does, and
every model output goes through the same caches.

LlamaIndex data comes in without this module: `data.qa` and `data.corpus` read the QA dataset
JSON of generate_question_context_pairs, and `data.corpus` a persisted docstore.json (see
ragopt.data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
except ModuleNotFoundError as error:
    if not (error.name or "").startswith("llama_index"):
        raise
    from ragopt.provenance import install_command

    raise ModuleNotFoundError(f"ragopt.integrations.llama_index needs LlamaIndex: {install_command('llama-index')}",
                              name=error.name) from error

from ragopt.data import Corpus, corpus_of, nfc
from ragopt.errors import ConfigError
from ragopt.pipeline import Hit, Pipeline, load_pipeline

Passages = Sequence[BaseNode] | str | Path | Corpus
"""What a RagoptRetriever searches: LlamaIndex nodes or documents, a corpus file (AutoRAG parquet,
JSONL, CSV, a docstore.json, a QA dataset JSON) or a ragopt Corpus."""


class RagoptRetriever(BaseRetriever):
    """The pipeline ragopt tuned, as a LlamaIndex retriever over your nodes.

    It ranks as `ragopt query` and `ragopt.load_pipeline(best, corpus).retrieve` do, reranker
    included (the same passages, order and scores), and returns your own nodes (ids, metadata
    and relationships as they are); passages from a corpus file come back as TextNodes with the
    file's doc_id, contents and metadata.

    Example:
        from llama_index.core.query_engine import RetrieverQueryEngine
        from ragopt.integrations.llama_index import RagoptRetriever

        retriever = RagoptRetriever("out/best.yaml", nodes)   # nodes, documents or a corpus file
        query_engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        print(query_engine.query("예금자 보호 한도는 얼마인가요?"))

    With rerank=False it returns what the pipeline's retriever hands its reranker, for a
    RagoptReranker (sharing its models and scores) among the query engine's postprocessors:

        retriever = RagoptRetriever("out/best.yaml", nodes, rerank=False)
        query_engine = RetrieverQueryEngine.from_args(
            retriever, llm=llm, node_postprocessors=[RagoptReranker(retriever.pipeline)])
    """

    def __init__(self, best: str | Path, corpus: Passages, k: int | None = None, rerank: bool = True,
                 cache_dir: str | Path | None = None, device: str = "auto",
                 callback_manager: CallbackManager | None = None) -> None:
        """k: nodes per query (default: the tuned k); cache_dir: reuse the corpus embeddings,
        tokens and reranker scores of an earlier run (the study's cache/ next to best.yaml)."""
        if isinstance(corpus, (str, Corpus)) or hasattr(corpus, "__fspath__"):  # a path: str or os.PathLike
            self._nodes, passages = None, corpus
        else:
            nodes = list(corpus)
            self._nodes, passages = _by_id(nodes), _corpus_of_nodes(nodes)
        self.pipeline = load_pipeline(best, passages, cache_dir, device)
        self.k = k
        self.rerank = rerank
        super().__init__(callback_manager=callback_manager)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        search = self.pipeline.retrieve if self.rerank else self.pipeline.candidates
        return [NodeWithScore(node=self._node(hit), score=hit.score)
                for hit in search(query_bundle.query_str, self.k)[0]]

    def _node(self, hit: Hit) -> BaseNode:
        if self._nodes is not None:
            return self._nodes[hit.doc_id]
        return TextNode(id_=hit.doc_id, text=hit.contents, metadata=hit.metadata)


class RagoptReranker(BaseNodePostprocessor):
    """The reranker of the pipeline ragopt tuned, as a LlamaIndex node postprocessor for any
    retriever's nodes: it reorders the first `depth` nodes it is handed by the tuned reranker's
    scores (ties in the order handed), keeps the others after them in their order, and returns
    the first top_n, as the pipeline does with its retriever's candidates. Each (query, text)
    pair is scored once, through the pipeline's score cache.

    Example:
        from ragopt.integrations.llama_index import RagoptReranker

        reranker = RagoptReranker("out/best.yaml")
        query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[reranker], llm=llm)
        nodes = reranker.postprocess_nodes(retriever.retrieve(question), query_str=question)
    """

    model: str = Field(description="The reranker's model.")
    depth: int = Field(description="Nodes reranked, from the first handed; the rest keep their order after them.")
    top_n: int = Field(description="Nodes returned (default: the tuned k).")
    _pipeline: Pipeline = PrivateAttr()

    def __init__(self, best: str | Path | Pipeline, top_n: int | None = None, cache_dir: str | Path | None = None,
                 device: str = "auto", **kwargs: Any) -> None:
        """best: an exported best.yaml, or a loaded Pipeline (a RagoptRetriever's `pipeline`, whose
        models and scores it then shares); cache_dir: keep the scores on disk (the study's
        cache/ next to best.yaml holds those of its trials)."""
        pipeline = best if isinstance(best, Pipeline) else load_pipeline(best, Corpus([], []), cache_dir, device)
        reranker = pipeline.spec.reranker
        if reranker is None:
            raise ConfigError(f"the pipeline {pipeline.spec.describe()} has no reranker for RagoptReranker to run; "
                              "use RagoptRetriever alone, which runs the whole pipeline")
        super().__init__(model=reranker.model, depth=reranker.depth, top_n=top_n or pipeline.spec.top_k, **kwargs)
        self._pipeline = pipeline

    @classmethod
    def class_name(cls) -> str:
        return "RagoptReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RagoptReranker needs the query: postprocess_nodes(nodes, query_str=question)")
        head = nodes[: self.depth]
        payload = {EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model,
                   EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n}
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            order = self._pipeline.rerank(query_bundle.query_str, [_text(n.node) for n in head])
            kept = ([NodeWithScore(node=head[i].node, score=score) for i, score in order]
                    + nodes[self.depth:])[: self.top_n]
            event.on_end(payload={EventPayload.NODES: kept})
        return kept


def _text(node: BaseNode) -> str:
    """A node's passage as ragopt ranks it: its text, without the metadata."""
    return node.get_content(metadata_mode=MetadataMode.NONE)


def _corpus_of_nodes(nodes: Sequence[BaseNode]) -> Corpus:
    return corpus_of([n.node_id for n in nodes], [_text(n) for n in nodes], [n.metadata for n in nodes],
                     source="LlamaIndex nodes", noun="node")


def _by_id(nodes: Sequence[BaseNode]) -> dict[str, BaseNode]:
    """The nodes by their ids as the corpus holds them (NFC-normalized)."""
    return {nfc(n.node_id): n for n in nodes}
