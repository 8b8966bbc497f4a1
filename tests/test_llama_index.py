"""LlamaIndex: the tuned pipeline as a retriever and a node postprocessor inside a query engine
with a mock LLM, ranking exactly as load_pipeline does; LlamaIndex QA datasets and docstores
read as ragopt's QA set and corpus, and optimized on as they are."""

import importlib
import json
import subprocess
import sys
import unicodedata

import numpy as np
import pandas as pd
import pytest
from llama_index.core.evaluation import EmbeddingQAFinetuneDataset
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import Document, MetadataMode, NodeRelationship, NodeWithScore, TextNode
from llama_index.core.storage.docstore import SimpleDocumentStore
from sentence_transformers import CrossEncoder

from conftest import AUTORAG_KO_DOCS, KO_MINI, ROOT, write_config
from ragopt import load_pipeline
from ragopt.data.qa import DataError, load_corpus, load_dataset, nfc
from ragopt.errors import ConfigError
from ragopt.serving.export import Exported, write_best
from ragopt.serving.integrations.llama_index import RagoptReranker, RagoptRetriever
from ragopt.serving.pipeline import write_corpus
from ragopt.stages.spec import PipelineSpec
from ragopt.study import optimize

QUESTIONS = ["은행이 문을 닫으면 맡긴 돈은 얼마까지 돌려받을 수 있나요?", "신용점수는 어떤 정보로 매겨지나요?",
             "술 마신 뒤 해열제를 먹어도 되나요?", "전세 계약 전에 확인할 서류는?"]
BM25 = {"type": "bm25", "tokenizer": {"type": "whitespace"}, "method": "bm25+", "k1": 1.2, "b": 0.6}


def write_best_yaml(folder, pipeline: dict):
    path = folder / "best.yaml"
    write_best(path, Exported(PipelineSpec.model_validate(pipeline)), {}, {})
    return path


def hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker, top_k: int, depth: int) -> dict:
    dense = {"type": "dense", "model": str(tiny_bert), "query_prefix": "query: ", "passage_prefix": "passage: "}
    return {"retriever": {"type": "hybrid", "retrievers": [BM25, dense], "fusion": "convex", "normalization": "tmm",
                          "weights": [0.7, 0.3], "depth": 20},
            "reranker": {"type": "cross_encoder", "model": str(tiny_xlmr_reranker), "depth": depth}, "top_k": top_k}


def ranked(nodes: list[NodeWithScore]) -> list[tuple[str, float]]:
    return [(n.node.node_id, n.score) for n in nodes]


def hits(pipeline, question: str) -> list[tuple[str, float]]:
    return [(hit.doc_id, hit.score) for hit in pipeline.retrieve(question)[0]]


@pytest.fixture(scope="module")
def nodes() -> list[TextNode]:
    """The bundled corpus as LlamaIndex nodes, in the file's order, with its metadata."""
    rows = [json.loads(line) for line in (KO_MINI / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return [TextNode(id_=r["doc_id"], text=r["contents"], metadata=r["metadata"]) for r in rows]


RERANKED = {"reranked top_k 5 of depth 3": (5, 3), "reranked top_k 2 of depth 6": (2, 6)}
"""Reranking fewer candidates than the pipeline returns (the retriever's own ranks and scores
follow the reranked ones), and more."""


@pytest.fixture(params=list(RERANKED))
def reranked_best(request, tmp_path, tiny_bert, tiny_xlmr_reranker):
    return write_best_yaml(tmp_path, hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker, *RERANKED[request.param]))


@pytest.fixture(params=["bm25", "reranked"])
def best(request, tmp_path, tiny_bert, tiny_xlmr_reranker):
    if request.param == "bm25":
        return write_best_yaml(tmp_path, {"retriever": BM25, "top_k": 3})
    return write_best_yaml(tmp_path, hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker, 5, 3))


def test_a_query_engine_retrieves_what_load_pipeline_does(best, nodes):
    expected = load_pipeline(best, KO_MINI / "corpus.jsonl", device="cpu")
    retriever = RagoptRetriever(best, nodes, device="cpu")
    query_engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    by_id = {n.node_id: n for n in nodes}
    found = []
    for question in QUESTIONS:
        response = query_engine.query(question)
        assert ranked(response.source_nodes) == hits(expected, question)
        assert all(n.node is by_id[n.node.node_id] for n in response.source_nodes)  # the user's own nodes
        assert str(response)  # MockLLM answered from them
        found.append(len(response.source_nodes))
    assert max(found) == expected.spec.top_k


def test_the_retriever_and_the_reranker_as_a_postprocessor_rank_as_the_pipeline(reranked_best, nodes):
    expected = load_pipeline(reranked_best, KO_MINI / "corpus.jsonl", device="cpu")
    retriever = RagoptRetriever(reranked_best, nodes, rerank=False, device="cpu")
    query_engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(),
                                                  node_postprocessors=[RagoptReranker(retriever.pipeline)])
    for question in QUESTIONS:
        candidates = retriever.retrieve(question)
        assert len(candidates) == max(expected.spec.top_k, expected.spec.reranker.depth)
        assert ranked(query_engine.query(question).source_nodes) == hits(expected, question)


def test_a_pipeline_without_a_reranker_has_no_postprocessor(tmp_path, nodes):
    best = write_best_yaml(tmp_path, {"retriever": BM25, "top_k": 3})
    with pytest.raises(ConfigError, match="has no reranker for RagoptReranker to run; use RagoptRetriever alone"):
        RagoptReranker(best, device="cpu")
    retriever = RagoptRetriever(best, nodes, rerank=False, device="cpu")
    assert ranked(retriever.retrieve(QUESTIONS[0])) == hits(retriever.pipeline, QUESTIONS[0])


def test_a_corpus_file_comes_back_as_nodes_with_its_metadata(tmp_path):
    best = write_best_yaml(tmp_path, {"retriever": BM25, "top_k": 4})
    found = RagoptRetriever(best, KO_MINI / "corpus.jsonl", k=2, device="cpu").retrieve(QUESTIONS[2])
    expected = load_pipeline(best, KO_MINI / "corpus.jsonl", device="cpu").retrieve(QUESTIONS[2], k=2)[0]
    assert [(n.node.node_id, n.node.text, n.node.metadata, n.score) for n in found] == [
        (h.doc_id, h.contents, {"domain": h.doc_id.split(" - ")[0]}, h.score) for h in expected]


def test_the_reranker_reranks_any_nodes_through_the_score_cache(tmp_path, nodes, tiny_bert, tiny_xlmr_reranker,
                                                                  scored_pairs):
    best = write_best_yaml(tmp_path, hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker, top_k=4, depth=5))
    reranker = RagoptReranker(best, device="cpu")
    handed = [NodeWithScore(node=TextNode(id_=f"new-{i}", text=f"{n.text} (사본 {i})"), score=10.0 - i)
              for i, n in enumerate(nodes[:7])]
    question = QUESTIONS[0]
    kept = reranker.postprocess_nodes(handed, query_str=question)
    scores = CrossEncoder(str(tiny_xlmr_reranker), device="cpu").predict([(question, n.text) for n in handed[:5]])
    order = np.argsort(-scores, kind="stable")[:4]
    assert [n.node.node_id for n in kept] == [f"new-{i}" for i in order]
    np.testing.assert_allclose([n.score for n in kept], scores[order], rtol=1e-5)
    assert len(scored_pairs) == 5  # the first `depth` nodes only
    reranker.postprocess_nodes(handed[:3] + handed[5:], query_str=question)
    assert len(scored_pairs) == 7  # pairs scored once: two new ones
    short = RagoptReranker(best, top_n=7, device="cpu").postprocess_nodes(handed, query_str=question)
    assert [n.node.node_id for n in short[5:]] == ["new-5", "new-6"] and [n.score for n in short[5:]] == [5.0, 4.0]


def test_a_postprocessor_sharing_the_pipeline_reads_back_the_pipelines_scores(tmp_path, nodes, tiny_bert,
                                                                             tiny_xlmr_reranker, scored_pairs):
    best = write_best_yaml(tmp_path, hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker, top_k=3, depth=6))
    retriever = RagoptRetriever(best, nodes, rerank=False, device="cpu")
    expected = [hits(retriever.pipeline, q) for q in QUESTIONS]
    scored = len(scored_pairs)
    reranker = RagoptReranker(retriever.pipeline)
    for question, pipeline_hits in zip(QUESTIONS, expected):
        assert ranked(reranker.postprocess_nodes(retriever.retrieve(question), query_str=question)) == pipeline_hits
    assert len(scored_pairs) == scored


def test_the_integration_needs_llama_index_and_ragopt_does_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_index.core.bridge.pydantic", None)
    monkeypatch.delitem(sys.modules, "ragopt.serving.integrations.llama_index")
    monkeypatch.setattr("importlib.metadata.distributions", lambda name: [])  # installed from PyPI (test_cli: others)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'ragopt\[llama-index\]'"):
        importlib.import_module("ragopt.serving.integrations.llama_index")
    body = ("import sys, ragopt, ragopt.search.config\nfrom ragopt.data.qa import load_corpus\n"
            f"load_corpus({str(KO_MINI / 'corpus.jsonl')!r})\nassert 'llama_index' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", body], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def llama_index_files(tmp_path, nodes):
    """The bundled QA set as generate_question_context_pairs would save it (every relevant passage
    is its own group there, as in the bundled set), and its nodes in a persisted docstore."""
    rows = [json.loads(line) for line in (KO_MINI / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    dataset = EmbeddingQAFinetuneDataset(
        queries={r["qid"]: r["query"] for r in rows}, corpus={n.node_id: n.text for n in nodes},
        relevant_docs={r["qid"]: [doc for group in r["retrieval_gt"] for doc in group] for r in rows})
    dataset.save_json(str(tmp_path / "qa.json"))
    docstore = SimpleDocumentStore()
    docstore.add_documents(nodes)
    docstore.persist(str(tmp_path / "storage" / "docstore.json"))
    return tmp_path / "qa.json", tmp_path / "storage" / "docstore.json"


def test_a_llama_index_qa_dataset_and_docstore_load_as_ragopt_data(llama_index_files, ko_mini, nodes):
    qa_json, docstore = llama_index_files
    reference, corpus = ko_mini
    for corpus_file in (qa_json, docstore):
        qa, loaded = load_dataset(qa=qa_json, corpus=corpus_file)
        assert (loaded.doc_ids, loaded.contents, loaded.key) == (corpus.doc_ids, corpus.contents, corpus.key)
        assert qa.qids == reference.qids and qa.queries.texts == reference.queries.texts
        assert qa.groups == reference.groups and qa.domains is None
    from_docstore = load_corpus(docstore)
    by_id = {n.node_id: n.metadata for n in nodes}
    assert [from_docstore.metadata_of(i) for i in range(len(from_docstore))] == [by_id[d] for d in corpus.doc_ids]
    assert load_corpus(qa_json).metadata is None
    with pytest.raises(DataError, match="a LlamaIndex docstore holds nodes, not questions"):
        load_dataset(qa=docstore, corpus=docstore)


def test_optimize_on_llama_index_data_runs_as_on_the_same_data_in_jsonl(llama_index_files, tmp_path):
    qa_json, docstore = llama_index_files
    space = """
retrievers: [{name: bm25, type: bm25, tokenizer: whitespace, k1: [1.2, 1.5], b: [0.5, 0.75]}]
top_k: [1, 3]
study: {latency: off}
"""
    outcomes = [optimize(write_config(tmp_path / f"{name}.yaml", f"data: {data}\n{space}"), progress=False)
                for name, data in (("llama", f'{{qa: "{qa_json}", corpus: "{docstore}"}}'),
                                   ("jsonl", '{qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}'))]
    llama, jsonl = (pd.read_csv(o.output / "trials.csv").sort_values("pipeline", ignore_index=True) for o in outcomes)
    assert len(llama) == 8
    metrics = ["pipeline", "value"] + [c for c in jsonl.columns if "@" in c]
    pd.testing.assert_frame_equal(llama[metrics], jsonl[metrics])
    assert outcomes[0].best_value == outcomes[1].best_value > 0


DOCS = AUTORAG_KO_DOCS
FINANCE = sorted((DOCS / "documents").glob("finance - *.txt"))
FINANCE_QUESTIONS = [r["query"] for r in map(json.loads, (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines())
                     if r["domain"] == "finance"][:6]
CHUNKERS = {"token_window": {"type": "token_window", "size": 300, "overlap": 0.25, "tokenizer": "characters"},
            "recursive": {"type": "recursive", "size": 400}}


@pytest.fixture(scope="module")
def document_records() -> list[dict]:
    """The seven finance documents of autorag-ko-docs as .jsonl records with metadata."""
    return [{"id": path.name, "text": path.read_text(encoding="utf-8"), "domain": "finance",
             "title": path.name.removeprefix("finance - ").removesuffix(".pdf.txt")} for path in FINANCE]


@pytest.fixture(scope="module")
def documents_file(tmp_path_factory, document_records):
    path = tmp_path_factory.mktemp("documents") / "finance.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in document_records), encoding="utf-8")
    return path


@pytest.fixture
def llama_documents(document_records) -> list[Document]:
    """The same documents as LlamaIndex Documents; the first one's id in NFD (as macOS file names are)."""
    return [Document(id_=unicodedata.normalize("NFD", r["id"]) if i == 0 else r["id"], text=r["text"],
                     metadata={"domain": r["domain"], "title": r["title"]}, excluded_llm_metadata_keys=["domain"])
            for i, r in enumerate(document_records)]


@pytest.fixture(params=list(CHUNKERS))
def chunked_best(request, tmp_path):
    return write_best_yaml(tmp_path, {"chunker": CHUNKERS[request.param], "retriever": BM25, "top_k": 4})


def chunk_nodes(found: list[NodeWithScore]) -> list[tuple]:
    return [(n.node.node_id, n.node.text, n.node.start_char_idx, n.node.end_char_idx, n.node.metadata, n.score)
            for n in found]


def chunk_hits(hits) -> list[tuple]:
    return [(h.doc_id, h.contents, h.metadata["start"], h.metadata["end"], h.metadata, h.score) for h in hits]


def test_llama_index_documents_are_cut_by_the_tuned_chunker_and_rank_as_load_pipeline(chunked_best, documents_file,
                                                                                       llama_documents):
    expected = load_pipeline(chunked_best, documents=documents_file, device="cpu")
    retriever = RagoptRetriever(chunked_best, llama_documents, device="cpu")
    query_engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    by_id = {nfc(d.doc_id): d for d in llama_documents}
    texts = {r.doc_id: r.text for r in llama_documents}
    for question in FINANCE_QUESTIONS:
        found = query_engine.query(question).source_nodes
        hits = expected.retrieve(question)[0]
        assert len(found) == expected.spec.top_k and chunk_nodes(found) == chunk_hits(hits)
        for node in (n.node for n in found):
            source = by_id[node.metadata["document"]]
            assert node.node_id == f"{node.metadata['document']}#{node.start_char_idx}-{node.end_char_idx}"
            assert node.text == texts[source.doc_id][node.start_char_idx:node.end_char_idx]
            assert node.metadata == {"domain": "finance", "title": source.metadata["title"],
                                     "document": nfc(source.doc_id), "start": node.start_char_idx,
                                     "end": node.end_char_idx}
            assert node.ref_doc_id == source.doc_id  # the user's own id, NFD included
            assert node.relationships[NodeRelationship.SOURCE] == source.as_related_node_info()
            assert node.get_content(MetadataMode.LLM) == (f"title: {source.metadata['title']}\n"
                                                          f"document: {nfc(source.doc_id)}\n\n{node.text}")
    assert retriever.pipeline.engine.corpus.doc_ids == expected.engine.corpus.doc_ids


def test_documents_given_as_a_path_come_back_as_chunk_nodes(chunked_best, documents_file, document_records):
    expected = load_pipeline(chunked_best, documents=documents_file, device="cpu")
    for given in (documents_file, str(documents_file.parent / "*.jsonl"), documents_file.parent):
        retriever = RagoptRetriever(chunked_best, documents=given, k=6, device="cpu")
        for question in FINANCE_QUESTIONS[:3]:
            found = retriever.retrieve(question)
            assert chunk_nodes(found) == chunk_hits(expected.retrieve(question, 6)[0])
            assert {n.node.ref_doc_id for n in found} <= {r["id"] for r in document_records}
            assert all(n.node.source_node.metadata == {"domain": "finance", "title": n.node.metadata["title"]}
                       for n in found)


def test_nodes_cut_by_ragopt_chunk_are_searched_as_they_are(chunked_best, documents_file, tmp_path):
    """A pipeline tuned on documents given nodes (here `ragopt chunk`'s corpus) searches them uncut
    and returns the user's own nodes, ranked as over the documents."""
    pipeline = load_pipeline(chunked_best, documents=documents_file, device="cpu")
    write_corpus(pipeline.engine.corpus, tmp_path / "corpus.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    nodes = [TextNode(id_=r["doc_id"], text=r["contents"], metadata=r["metadata"]) for r in rows]
    retriever = RagoptRetriever(chunked_best, nodes, device="cpu")
    by_id = {n.node_id: n for n in nodes}
    for question in FINANCE_QUESTIONS[:3]:
        found = retriever.retrieve(question)
        assert ranked(found) == hits(pipeline, question)
        assert all(n.node is by_id[n.node.node_id] for n in found)


def test_a_pipeline_tuned_on_passages_searches_documents_as_passages(tmp_path, nodes):
    best = write_best_yaml(tmp_path, {"retriever": BM25, "top_k": 3})
    documents = [Document(id_=n.node_id, text=n.text, metadata=n.metadata) for n in nodes]
    retriever = RagoptRetriever(best, documents, device="cpu")
    expected = load_pipeline(best, KO_MINI / "corpus.jsonl", device="cpu")
    by_id = {d.doc_id: d for d in documents}
    for question in QUESTIONS:
        found = retriever.retrieve(question)
        assert ranked(found) == hits(expected, question)
        assert all(n.node is by_id[n.node.node_id] for n in found)  # the user's own Documents, uncut
    with pytest.raises(ConfigError, match="tuned on passages, so it has no chunker to cut documents with: give "
                                          r"RagoptRetriever nodes, Documents \(searched whole\) or a corpus file"):
        RagoptRetriever(best, documents=KO_MINI / "corpus.jsonl", device="cpu")


def test_bad_documents_say_what_to_change(chunked_best, llama_documents, nodes, documents_file):
    with pytest.raises(ConfigError, match="Documents, which the tuned chunker cuts, or nodes, searched as they are, "
                                          "not both: 2 of 9 are nodes"):
        RagoptRetriever(chunked_best, llama_documents + nodes[:2], device="cpu")
    with pytest.raises(ConfigError, match="documents= takes LlamaIndex Documents; item 7 is a TextNode"):
        RagoptRetriever(chunked_best, documents=llama_documents + nodes[:1], device="cpu")
    twice = llama_documents + [Document(id_=llama_documents[1].doc_id, text="다른 글")]
    with pytest.raises(DataError, match="1 duplicate document id:\n  - document id .*: item 1, item 7\nGive each "):
        RagoptRetriever(chunked_best, twice, device="cpu")
    for corpus, documents in ((None, None), (nodes, documents_file)):
        with pytest.raises(ConfigError, match="give RagoptRetriever the passages to search"):
            RagoptRetriever(chunked_best, corpus, documents=documents, device="cpu")
