"""`ragopt serve`: the HTTP API answers exactly as load_pipeline does, for single, batched and
concurrent requests at any k; bad requests are 422s with the pipeline's messages; serving writes
no cache file per request and keeps its memos bounded; a real uvicorn server answers over HTTP."""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import AUTORAG_KO_DOCS, KO_MINI, ROOT
from ragopt import load_pipeline
from ragopt.cli import app as cli_app
from ragopt.errors import UserError
from ragopt.serving.export import Exported, write_best
from ragopt.serving.serve import Batcher, build, create_app
from ragopt.stages.spec import PipelineSpec

CORPUS = KO_MINI / "corpus.jsonl"
QUESTIONS = [json.loads(line)["query"] for line in (KO_MINI / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
BM25 = {"type": "bm25", "tokenizer": {"type": "whitespace"}, "method": "bm25+", "k1": 1.2, "b": 0.6}


def write_best_yaml(folder, pipeline: dict):
    path = folder / "best.yaml"
    write_best(path, Exported(PipelineSpec.model_validate(pipeline)), {}, {})
    return path


def hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker) -> dict:
    """BM25 and a dense model fused, the first 3 candidates reranked, 5 returned: ranks 4 and 5
    keep the retriever's order and scores."""
    dense = {"type": "dense", "model": str(tiny_bert), "query_prefix": "query: ", "passage_prefix": "passage: "}
    return {"retriever": {"type": "hybrid", "retrievers": [BM25, dense], "fusion": "convex", "normalization": "tmm",
                          "weights": [0.7, 0.3], "depth": 20},
            "reranker": {"type": "cross_encoder", "model": str(tiny_xlmr_reranker), "depth": 3}, "top_k": 5}


@pytest.fixture(scope="module", params=["bm25", "hybrid+reranker"])
def best(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "bm25":
        return write_best_yaml(folder, {"retriever": BM25, "top_k": 3})
    pipeline = hybrid_with_reranker(request.getfixturevalue("tiny_bert"), request.getfixturevalue("tiny_xlmr_reranker"))
    return write_best_yaml(folder, pipeline)


@pytest.fixture(scope="module")
def expected(best):
    """The pipeline as a user loads it, with a cache of its own, to compare the service with."""
    return load_pipeline(best, CORPUS, best.parent / "expected-cache", device="cpu")


@pytest.fixture(scope="module")
def client(best):
    with TestClient(create_app(load_pipeline(best, CORPUS, best.parent / "cache", device="cpu"), max_batch=8)) as c:
        yield c


def passages(hits) -> list[dict]:
    return [{"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "contents": h.contents, "metadata": h.metadata}
            for h in hits]


def answered(client, body: dict) -> list[list[dict]]:
    response = client.post("/retrieve", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["query"] for r in results] == ([body["query"]] if "query" in body else body["queries"])
    return [r["passages"] for r in results]


@pytest.mark.parametrize("k", [None, 1, 4, 9])
def test_a_question_is_answered_as_load_pipeline_answers_it(client, expected, k):
    lengths = []
    for question in QUESTIONS[:6]:
        body = {"query": question} if k is None else {"query": question, "k": k}
        found = answered(client, body)[0]
        assert found == passages(expected.retrieve(question, k)[0])
        lengths.append(len(found))
    assert max(lengths) == (k or expected.spec.top_k)  # BM25 ranks only the passages sharing a word


def test_a_batch_is_answered_as_the_pipeline_answers_the_same_batch(client, best):
    expected = load_pipeline(best, CORPUS, device="cpu").retrieve(QUESTIONS[:5], 4)  # nothing cached beforehand
    assert answered(client, {"queries": QUESTIONS[:5], "k": 4}) == [passages(h) for h in expected]


def test_a_k_beyond_the_corpus_returns_every_passage_it_ranks(client, expected):
    found = answered(client, {"query": QUESTIONS[0], "k": 1000})[0]
    assert found == passages(expected.retrieve(QUESTIONS[0], 1000)[0]) and 0 < len(found) <= 60


def test_concurrent_requests_at_different_k_get_what_single_calls_get(client, expected):
    """Bit for bit with BM25; a model's scores depend on the company a question is encoded in
    by float32 rounding (matrix products of other shapes), as in any batch."""
    asks = [(QUESTIONS[i % 20], 1 + i % 7) for i in range(48)]
    with ThreadPoolExecutor(16) as threads:
        found = list(threads.map(lambda ask: answered(client, {"query": ask[0], "k": ask[1]})[0], asks))
    single = [passages(expected.retrieve(q, k)[0]) for q, k in asks]
    if expected.spec.reranker is None:
        assert found == single
    else:
        assert [[{**p, "score": pytest.approx(p["score"], rel=1e-5)} for p in hits] for hits in single] == found


def held(pipeline):
    """The pipeline's retrieve, recorded (questions, k) per call; the first call waits for the
    event returned, so that the requests submitted meanwhile queue behind it."""
    retrieve, release, batches = pipeline.retrieve, threading.Event(), []

    def recorded(queries, k=None):
        batches.append((len(queries), k))
        release.wait(10)
        return retrieve(queries, k)

    pipeline.retrieve = recorded
    return release, batches


def test_requests_that_arrive_together_are_retrieved_as_one_batch_at_the_deepest_k(best, expected):
    pipeline = load_pipeline(best, CORPUS, device="cpu")
    release, batches = held(pipeline)
    batcher = Batcher(pipeline, max_batch=8)
    first = batcher.submit(QUESTIONS[0], 2)  # the worker holds it until released; the next ones queue
    while not batches:
        time.sleep(0.01)
    asks = [(QUESTIONS[i], k) for i, k in zip(range(1, 11), [1, 5, 3, 2, 7, 1, 4, 6, 2, 3])]
    futures = [batcher.submit(q, k) for q, k in asks]
    release.set()
    reference = load_pipeline(best, CORPUS, device="cpu")  # the same batches, each request cut to its k
    assert first.result(10) == reference.retrieve(QUESTIONS[0], 2)
    deepest = reference.retrieve(QUESTIONS[1:9], 7) + reference.retrieve(QUESTIONS[9:11], 3)
    assert [f.result(10)[0] for f in futures] == [hits[:k] for hits, (_, k) in zip(deepest, asks)]
    if expected.spec.reranker is None:  # and what single calls give (bit for bit without a model)
        assert [f.result()[0] for f in futures] == [expected.retrieve(q, k)[0] for q, k in asks]
    batcher.close()
    assert batches == [(1, 2), (8, 7), (2, 3)]  # 8 questions at most per batch, each at its batch's deepest k


def test_a_request_given_up_is_skipped_and_the_worker_goes_on(best, expected):
    pipeline = load_pipeline(best, CORPUS, device="cpu")
    release, batches = held(pipeline)
    batcher = Batcher(pipeline)
    first = batcher.submit(QUESTIONS[0], 1)
    while not batches:
        time.sleep(0.01)
    gone, kept = batcher.submit(QUESTIONS[1], 9), batcher.submit(QUESTIONS[2], 2)
    assert gone.cancel()  # what asyncio does when a client disconnects
    release.set()
    assert kept.result(10) == expected.retrieve(QUESTIONS[2], 2) and first.result(10)
    assert batcher.submit(QUESTIONS[3], 1).result(10) == expected.retrieve(QUESTIONS[3], 1)
    batcher.close()
    assert batches == [(1, 1), (1, 2), (1, 1)]


@pytest.mark.parametrize(("body", "message"), [
    ({"query": ""}, "give at least one question, and no empty one"),
    ({"queries": ["전세", "  "]}, "give at least one question, and no empty one"),
    ({"queries": []}, "give at least one question, and no empty one"),
    ({"query": "전세", "k": 0}, "k must be at least 1 passage per question; got 0"),
    ({"query": "전세", "k": -3}, "k must be at least 1 passage per question; got -3"),
])
def test_bad_questions_and_k_are_422_with_the_pipelines_message(client, body, message):
    response = client.post("/retrieve", json=body)
    assert response.status_code == 422 and response.json() == {"detail": message}


@pytest.mark.parametrize("body", [{}, {"query": "전세", "queries": ["전세"]}])
def test_a_request_gives_query_or_queries(client, body):
    response = client.post("/retrieve", json=body)
    assert response.status_code == 422
    assert "give either `query` (one question) or `queries` (a list)" in response.json()["detail"][0]["msg"]


def test_health_names_the_pipeline_and_the_corpus_size(client, expected):
    assert client.get("/health").json() == {"status": "ok", "pipeline": expected.spec.describe(),
                                            "top_k": expected.spec.top_k, "passages": 60}


def test_the_openapi_schema_documents_retrieve_with_examples(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/retrieve", "/health"}
    request = schema["components"]["schemas"]["RetrieveRequest"]
    assert request["properties"]["k"]["description"].startswith("Passages per question")
    assert request["examples"][0] == {"query": "술 마신 뒤 해열제를 먹어도 되나요?", "k": 3}
    passage = schema["components"]["schemas"]["Passage"]["properties"]
    assert set(passage) == {"rank", "doc_id", "score", "contents", "metadata"}
    assert all(p["description"] for p in passage.values())
    assert client.get("/docs").status_code == 200


def files_under(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_requests_write_no_cache_file_and_keep_the_memos_bounded(tmp_path, monkeypatch, tiny_bert,
                                                                   tiny_xlmr_reranker):
    from ragopt.stages import engine
    from ragopt.stages.retrievers import bm25

    monkeypatch.setattr(engine, "RANKINGS_KEPT", 4)
    monkeypatch.setattr(bm25, "QUERY_SETS_KEPT", 3)
    best = write_best_yaml(tmp_path, hybrid_with_reranker(tiny_bert, tiny_xlmr_reranker))
    pipeline = load_pipeline(best, CORPUS, tmp_path / "cache", device="cpu")
    with TestClient(create_app(pipeline)) as client:
        written, in_memory = files_under(tmp_path / "cache"), len(pipeline.engine.cache._memory)
        assert any(name.startswith("embeddings/") for name in written)  # the corpus's, stored at start-up
        for i, question in enumerate(QUESTIONS[:20]):
            assert answered(client, {"query": question, "k": 1 + i % 5})[0]
    assert files_under(tmp_path / "cache") == written
    assert len(pipeline.engine.cache._memory) == in_memory
    assert len(pipeline.engine._rankings) <= 4
    lexical = next(r for r in pipeline.engine._retrievers.values() if isinstance(r, bm25.BM25Retriever))
    assert len(lexical._queries) <= 3


def test_a_real_server_answers_over_http(best, expected):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build(best, CORPUS, None), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/retrieve", method="POST",
                                         data=json.dumps({"query": QUESTIONS[3], "k": 2}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    finally:
        server.should_exit = True
        thread.join()
    assert body["results"][0]["passages"] == passages(expected.retrieve(QUESTIONS[3], 2)[0])


runner = CliRunner()


def test_the_command_loads_warms_and_serves(best, monkeypatch):
    from ragopt.serving import serve

    served = []
    monkeypatch.setattr(serve, "run", lambda api, host, port: served.append((api, host, port)))
    result = runner.invoke(cli_app, ["serve", str(best), "--corpus", str(CORPUS), "--port", "8123"])
    assert result.exit_code == 0, result.output
    (api, host, port), = served
    pipeline = api.state.pipeline
    assert (host, port) == ("127.0.0.1", 8123)
    assert " ".join(result.stdout.split()) == (f"serving {pipeline.spec.describe()} over 60 passages at "
                                               "http://127.0.0.1:8123 (docs: /docs)")
    assert pipeline.engine.cache.root == best.parent / "cache"


def test_a_bad_file_stops_the_command_at_start(tmp_path):
    best = write_best_yaml(tmp_path, {"retriever": BM25, "top_k": 3})
    missing, none = tmp_path / "missing.yaml", tmp_path / "no.jsonl"
    result = runner.invoke(cli_app, ["serve", str(missing), "--corpus", str(CORPUS)])
    assert result.exit_code == 2 and " ".join(result.output.split()) == f"error: {missing}: file not found"
    result = runner.invoke(cli_app, ["serve", str(best), "--corpus", str(none)])
    assert result.exit_code == 2 and " ".join(result.output.split()).startswith(f"error: {none}: no such file")


def test_without_fastapi_the_command_says_what_to_install(best, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.setattr("importlib.metadata.distributions", lambda name: [])  # installed from PyPI (test_cli: others)
    with pytest.raises(UserError, match=r"pip install 'ragopt\[serve\]'"):
        build(best, CORPUS, None)
    result = runner.invoke(cli_app, ["serve", str(best), "--corpus", str(CORPUS)])
    assert result.exit_code == 2 and "ragopt serve needs FastAPI and uvicorn (fastapi is missing): pip install " \
        "'ragopt[serve]'" in " ".join(result.output.split())


def test_the_command_line_imports_no_fastapi():
    check = "import sys, ragopt, ragopt.cli; print(sorted(m for m in sys.modules if m.startswith(('fastapi', " \
            "'uvicorn', 'starlette'))))"
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


FINANCE = str(AUTORAG_KO_DOCS / "documents" / "finance - *.txt")
FINANCE_QUESTIONS = [r["query"] for r in map(json.loads, (AUTORAG_KO_DOCS / "qa.jsonl").read_text(
    encoding="utf-8").splitlines()) if r["domain"] == "finance"][:6]
CHUNKER = {"type": "token_window", "size": 300, "overlap": 0.25, "tokenizer": "characters"}


def test_the_command_serves_documents_cut_by_the_tuned_chunker(tmp_path, monkeypatch):
    from ragopt.serving import serve

    best = write_best_yaml(tmp_path, {"chunker": CHUNKER, "retriever": BM25, "top_k": 3})
    served = []
    monkeypatch.setattr(serve, "run", lambda api, host, port: served.append(api))
    result = runner.invoke(cli_app, ["serve", str(best), "--documents", FINANCE])
    assert result.exit_code == 0, result.output
    expected = load_pipeline(best, documents=FINANCE, device="cpu")
    chunks = len(expected.engine.corpus)
    assert f"over {chunks} passages" in " ".join(result.stdout.split()) and chunks > 300  # 102,608 characters cut
    with TestClient(served[0]) as client:
        for question in FINANCE_QUESTIONS:
            found = answered(client, {"query": question})[0]
            assert found == passages(expected.retrieve(question)[0]) and len(found) == 3
            for passage in found:
                document, start, end = (passage["metadata"][key] for key in ("document", "start", "end"))
                assert passage["doc_id"] == f"{document}#{start}-{end}" and document.startswith("finance - ")
        assert answered(client, {"queries": FINANCE_QUESTIONS, "k": 7}) == [
            passages(h) for h in expected.retrieve(FINANCE_QUESTIONS, 7)]
        assert client.get("/health").json()["passages"] == chunks


def test_serving_documents_needs_a_pipeline_tuned_on_documents(tmp_path):
    best = write_best_yaml(tmp_path, {"retriever": BM25, "top_k": 3})
    result = runner.invoke(cli_app, ["serve", str(best), "--documents", FINANCE])
    assert result.exit_code == 2 and "was tuned on passages, not documents, so it has no chunker: give it a corpus " \
        "file" in " ".join(result.output.split())
