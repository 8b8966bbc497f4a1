"""The pipeline ragopt tuned (an exported best.yaml) inside LlamaIndex: RagoptRetriever runs it
over your nodes, or over your documents cut by its tuned chunker; RagoptReranker reranks any
retriever's nodes with its reranker. Both run the same Engine as `ragopt query` and
`ragopt.load_pipeline`, so they rank exactly as it does, and every model output goes through the
same caches.

LlamaIndex data comes in without this module: `data.qa` and `data.corpus` read the QA dataset
JSON of generate_question_context_pairs, and `data.corpus` a persisted docstore.json (see
ragopt.data.qa)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import (BaseNode, Document, MetadataMode, NodeRelationship, NodeWithScore,
                                         QueryBundle, TextNode)
except ModuleNotFoundError as error:
    if not (error.name or "").startswith("llama_index"):
        raise
    from ragopt.provenance import install_command

    raise ModuleNotFoundError("ragopt.serving.integrations.llama_index needs LlamaIndex: "
                              f"{install_command('llama-index')}", name=error.name) from error

from ragopt.data import documents as ragopt_documents
from ragopt.data.qa import Corpus, _count, _fail, _id_text, _repeated, corpus_of, nfc
from ragopt.errors import ConfigError
from ragopt.serving.export import read_export
from ragopt.serving.pipeline import Hit, Pipeline, load_pipeline

Passages = Sequence[BaseNode] | str | Path | Corpus
"""What a RagoptRetriever searches: LlamaIndex nodes or documents, a corpus file (AutoRAG parquet,
JSONL, CSV, a docstore.json, a QA dataset JSON) or a ragopt Corpus."""
DocumentsGiven = Sequence[Document] | str | os.PathLike | ragopt_documents.Documents
"""Documents for a pipeline tuned on documents to cut: LlamaIndex Documents, a folder, glob or
file of .txt/.md/.pdf/.jsonl documents, or ragopt Documents."""
OFFSETS = ("start", "end")
"""The metadata keys of a chunk's span, left out of the text the LLM and embedders see (LlamaIndex
keeps them in start_char_idx and end_char_idx)."""


class RagoptRetriever(BaseRetriever):
    """The pipeline ragopt tuned, as a LlamaIndex retriever over your nodes or your documents.

    It ranks as `ragopt query` and `ragopt.load_pipeline(best, corpus).retrieve` do, reranker
    included (the same passages, order and scores), and returns your own nodes (ids, metadata
    and relationships as they are); passages from a corpus file come back as TextNodes with the
    file's doc_id, contents and metadata.

    A pipeline tuned on documents (its best.yaml has a chunker) cuts LlamaIndex Documents, or the
    documents of `documents=` (a folder, glob or file), with its tuned chunker, and ranks as
    `ragopt.load_pipeline(best, documents=...)` does. Each chunk comes back as a TextNode with id
    `document#start-end`, its text, its document's metadata plus `document`, `start` and `end`,
    start_char_idx/end_char_idx, and a SOURCE relationship to its document (whose metadata
    exclusions and templates it keeps, as LlamaIndex's node parsers do); a blank document has no
    chunk. Nodes other than Documents are searched as they are (a corpus `ragopt chunk` wrote,
    say). A pipeline tuned on passages has no chunker: it searches Documents as passages, uncut.

    Example:
        from llama_index.core.query_engine import RetrieverQueryEngine
        from ragopt.serving.integrations.llama_index import RagoptRetriever

        retriever = RagoptRetriever("out/best.yaml", nodes)   # nodes, documents or a corpus file
        query_engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        print(query_engine.query("예금자 보호 한도는 얼마인가요?"))

        retriever = RagoptRetriever("out/best.yaml", documents="reports/")   # cut the tuned way

    With rerank=False it returns what the pipeline's retriever hands its reranker, for a
    RagoptReranker (sharing its models and scores) among the query engine's postprocessors:

        retriever = RagoptRetriever("out/best.yaml", nodes, rerank=False)
        query_engine = RetrieverQueryEngine.from_args(
            retriever, llm=llm, node_postprocessors=[RagoptReranker(retriever.pipeline)])
    """

    def __init__(self, best: str | Path, corpus: Passages | None = None, k: int | None = None, rerank: bool = True,
                 cache_dir: str | Path | None = None, device: str = "auto",
                 callback_manager: CallbackManager | None = None, documents: DocumentsGiven | None = None) -> None:
        """corpus: the nodes, documents or corpus file to search; documents: or documents for a
        pipeline tuned on documents to cut; k: nodes per query (default: the tuned k); cache_dir:
        reuse the corpus embeddings, tokens, chunk spans and reranker scores of an earlier run
        (the study's cache/ next to best.yaml)."""
        if (corpus is None) == (documents is None):
            raise ConfigError("give RagoptRetriever the passages to search: nodes, LlamaIndex Documents or a corpus "
                              "file, or documents= (a folder, glob or file of documents, or LlamaIndex Documents) "
                              "for the tuned chunker to cut, not both")
        spec = read_export(best).spec
        nodes = None if corpus is None or _is_path(corpus) else list(corpus)  # type: ignore[arg-type]
        if nodes is not None and spec.chunker is not None and any(isinstance(n, Document) for n in nodes):
            _only_documents(nodes)
            nodes, documents = None, nodes
        self._nodes: dict[str, BaseNode] | None = None
        self._sources: dict[str, Document] = {}
        if documents is not None:
            if spec.chunker is None:
                raise ConfigError(f"the pipeline {spec.describe()} was tuned on passages, so it has no chunker to cut "
                                  "documents with: give RagoptRetriever nodes, Documents (searched whole) or a corpus "
                                  "file as its corpus, or tune one with data.documents and chunkers")
            loaded, self._sources = _documents(documents)
            self.pipeline = load_pipeline(best, cache_dir=cache_dir, device=device, documents=loaded)
        elif nodes is not None:
            self._nodes = _by_id(nodes)
            self.pipeline = load_pipeline(best, _corpus_of_nodes(nodes), cache_dir, device)
        else:
            self.pipeline = load_pipeline(best, corpus, cache_dir, device)  # type: ignore[arg-type]
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
        if not self._sources:
            return TextNode(id_=hit.doc_id, text=hit.contents, metadata=hit.metadata)
        source = self._sources[hit.metadata["document"]]
        return TextNode(
            id_=hit.doc_id, text=hit.contents, metadata=hit.metadata, start_char_idx=hit.metadata["start"],
            end_char_idx=hit.metadata["end"], relationships={NodeRelationship.SOURCE: source.as_related_node_info()},
            excluded_embed_metadata_keys=[*source.excluded_embed_metadata_keys, *OFFSETS],
            excluded_llm_metadata_keys=[*source.excluded_llm_metadata_keys, *OFFSETS],
            metadata_separator=source.metadata_separator, metadata_template=source.metadata_template,
            text_template=source.text_template)


class RagoptReranker(BaseNodePostprocessor):
    """The reranker of the pipeline ragopt tuned, as a LlamaIndex node postprocessor for any
    retriever's nodes: it reorders the first `depth` nodes it is handed by the tuned reranker's
    scores (ties in the order handed), keeps the others after them in their order, and returns
    the first top_n, as the pipeline does with its retriever's candidates. Each (query, text)
    pair is scored once, through the pipeline's score cache.

    Example:
        from ragopt.serving.integrations.llama_index import RagoptReranker

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


def _is_path(given: Any) -> bool:
    """A file, folder or glob named by a str or an os.PathLike, or a ragopt Corpus."""
    return isinstance(given, (str, Corpus)) or hasattr(given, "__fspath__")


def _only_documents(nodes: Sequence[BaseNode]) -> None:
    """Stop when LlamaIndex Documents and other nodes are mixed: the chunker would cut the one and
    not the other."""
    others = [i for i, n in enumerate(nodes) if not isinstance(n, Document)]
    if others:
        raise ConfigError(f"give RagoptRetriever LlamaIndex Documents, which the tuned chunker cuts, or nodes, "
                          f"searched as they are, not both: {len(others)} of {len(nodes)} are nodes (item "
                          f"{others[0]} is a {type(nodes[others[0]]).__name__})")


def _documents(given: DocumentsGiven) -> tuple[ragopt_documents.Documents, dict[str, Document]]:
    """The documents to cut, and each one's LlamaIndex Document (its chunks' SOURCE) by the id the
    chunks name it by (NFC, as every id in ragopt)."""
    if isinstance(given, ragopt_documents.Documents) or _is_path(given):
        loaded = (given if isinstance(given, ragopt_documents.Documents)
                  else ragopt_documents.load_documents(given))  # type: ignore[arg-type]
        return loaded, {d.doc_id: Document(id_=d.doc_id, text=d.text, metadata=d.metadata) for d in loaded}
    docs = list(given)
    wrong = next((i for i, d in enumerate(docs) if not isinstance(d, Document)), None)
    if wrong is not None:
        raise ConfigError(f"documents= takes LlamaIndex Documents; item {wrong} is a {type(docs[wrong]).__name__}: "
                          "give nodes as the corpus, searched as they are")
    ids = [_id_text(d.doc_id) for d in docs]
    repeated = _repeated(ids, lambda i: f"item {i}", "document id")
    _fail("LlamaIndex documents", _count(repeated, "duplicate document id"), repeated,
          "Give each Document its own id_ (SimpleDirectoryReader(filename_as_id=True) names them by file).")
    converted = [ragopt_documents.Document(doc_id, _text(d), dict(d.metadata)) for doc_id, d in zip(ids, docs)]
    return ragopt_documents.Documents(converted, "LlamaIndex documents"), dict(zip(ids, docs))
