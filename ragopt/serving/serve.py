"""The tuned pipeline over HTTP (`ragopt serve`): POST /retrieve, GET /health and FastAPI's
OpenAPI docs (/docs, /openapi.json).

The engine's memos, model pool and tokenizers are not thread-safe, so one worker thread owns the
Pipeline: requests queue their questions, and the worker answers what has arrived (up to
max_batch questions) with one retrieval at the deepest k asked, each request taking its own
first k (a shallower ranking is a prefix of a deeper one). BM25 answers a question in a batch
bit for bit as alone; a model's scores can differ in float32 rounding (about 1e-7) with the
company a question is encoded in, as in any batch, and max_batch=1 answers each question alone.
Query-side results (tokens, embeddings, reranker scores) are never written to the cache: serving
writes no file per request. FastAPI and uvicorn are imported only here, by the commands that
serve (`pip install 'ragopt[serve]'`)."""

from __future__ import annotations

import asyncio
import importlib
import queue
import threading
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragopt.errors import UserError
from ragopt.serving.pipeline import Hit, Pipeline, load_pipeline
from ragopt.provenance import install_command

if TYPE_CHECKING:
    from fastapi import FastAPI

WARM_CHARS = 200
"""The warm-up question: the start of the first passage (it shares terms with the corpus, so a
reranker gets candidates and loads)."""


@dataclass
class _Request:
    texts: list[str]
    k: int
    future: Future[list[list[Hit]]] = field(default_factory=Future)


class Batcher:
    """Answers questions from any thread with one worker thread that owns the pipeline, retrieving
    the questions that arrive together (up to `max_batch`) in one batch.

    Example:
        batcher = Batcher(ragopt.load_pipeline("out/best.yaml", "corpus.jsonl"), max_batch=32)
        hits = batcher.submit(["시중은행 전환 요건은?"], k=3).result()[0]
        batcher.close()
    """

    def __init__(self, pipeline: Pipeline, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise UserError(f"max_batch must be at least 1 question; got {max_batch}")
        self.pipeline, self.max_batch = pipeline, max_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="ragopt-serve", daemon=True)
        self._worker.start()

    def submit(self, queries: str | list[str], k: int | None = None) -> Future[list[list[Hit]]]:
        """The top-k passages of each question, as Pipeline.retrieve gives them, once the worker
        reaches them; an empty question or a k below 1 raises at once, as retrieve does."""
        if self._closed:
            raise RuntimeError("the batcher is closed; make a new one")
        texts, k = self.pipeline.checked(queries, k)
        request = _Request(texts, k)
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        self._closed = True
        self._queue.put(None)
        self._worker.join()

    def _loop(self) -> None:
        while True:
            batch = self._arrived()  # a request given up (its client gone) is dropped; the others now run
            requests = [r for r in batch if r is not None and r.future.set_running_or_notify_cancel()]
            if requests:
                self._answer(requests)
            if batch[-1] is None:
                return

    def _arrived(self) -> list[_Request | None]:
        """The next request (waiting for one) and those queued behind it, until they hold
        max_batch questions or the close marker (last) is reached."""
        batch = [self._queue.get()]
        while batch[-1] is not None and sum(len(r.texts) for r in batch if r) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _answer(self, requests: list[_Request]) -> None:
        """One retrieval (in chunks of max_batch questions) at the deepest k asked, no deeper than
        the corpus (deeper ranks are empty), cut to each request's k."""
        texts = [t for r in requests for t in r.texts]
        depth = min(max(r.k for r in requests), len(self.pipeline.engine.corpus))
        try:
            with self.pipeline.engine.cache.unstored():
                hits = [h for start in range(0, len(texts), self.max_batch)
                        for h in self.pipeline.retrieve(texts[start:start + self.max_batch], depth)]
        except Exception as error:  # every request of the batch gets it (a model failing to run)
            for request in requests:
                request.future.set_exception(error)
            return
        start = 0
        for request in requests:
            request.future.set_result([h[:request.k] for h in hits[start:start + len(request.texts)]])
            start += len(request.texts)


def warm(pipeline: Pipeline) -> None:
    """Index the corpus (stored in the cache, as `ragopt query` does) and load every model by
    answering one question (its query-side results not stored)."""
    engine, retriever = pipeline.engine, pipeline.spec.retriever
    for leaf in retriever.components() or [retriever]:
        engine.retriever(leaf)
    with engine.cache.unstored():
        pipeline.retrieve(engine.corpus.contents[0][:WARM_CHARS])


class RetrieveRequest(BaseModel):
    """One question (`query`) or several (`queries`), and how many passages to return for each."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query": "술 마신 뒤 해열제를 먹어도 되나요?", "k": 3},
        {"queries": ["카드값 일부만 내면 어떤 점이 위험한가요?", "전세 계약 전에 확인할 서류는?"]}]})

    query: str | None = Field(None, description="One question; give this or `queries`.")
    queries: list[str] | None = Field(None, description="Several questions, answered in order; give this or `query`.")
    k: int | None = Field(None, description="Passages per question, at least 1; default: the tuned top_k.")

    @model_validator(mode="after")
    def _one_of(self) -> "RetrieveRequest":
        if (self.query is None) == (self.queries is None):
            raise ValueError("give either `query` (one question) or `queries` (a list), not both and not neither")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


class Passage(BaseModel):
    """A retrieved passage."""

    rank: int = Field(description="1 for the best passage.")
    doc_id: str = Field(description="The passage's id in the corpus file.")
    score: float = Field(description="The last stage's score: the reranker's, else the retriever's.")
    contents: str = Field(description="The passage's text.")
    metadata: dict[str, Any] = Field(description="The corpus file's other columns for this passage.")


class Answer(BaseModel):
    """The passages found for one question, best first."""

    query: str = Field(description="The question, as given.")
    passages: list[Passage] = Field(description="At most k passages, best first.")


class RetrieveResponse(BaseModel):
    """One answer per question, in the order given."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [{
        "query": "술 마신 뒤 해열제를 먹어도 되나요?", "passages": [{
            "rank": 1, "doc_id": "medical - 아세트아미노펜 주의사항", "score": 4.0672,
            "contents": "아세트아미노펜 성분의 해열진통제는 ...", "metadata": {"domain": "medical"}}]}]}]})

    results: list[Answer]


class Health(BaseModel):
    """The service is up, and what it serves."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "ok", "pipeline": "bm25[kiwi,robertson,k1=1.66,b=0.81] k=1", "top_k": 1, "passages": 60}]})

    status: str = Field(description="ok once the pipeline is loaded and warm.")
    pipeline: str = Field(description="The tuned pipeline's description.")
    top_k: int = Field(description="The tuned k: passages per question when a request gives no k.")
    passages: int = Field(description="Passages in the corpus.")


def _imported(name: str) -> Any:
    """The module `name` (fastapi, uvicorn), or an error saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"ragopt serve needs FastAPI and uvicorn ({name} is missing): {install_command('serve')}"
                        ) from None


def create_app(pipeline: Pipeline, max_batch: int = 32) -> "FastAPI":
    """The HTTP API over a pipeline (kept as app.state.pipeline), warmed before it returns; its
    batcher stops at shutdown.

    Example:
        app = create_app(ragopt.load_pipeline("out/best.yaml", "corpus.jsonl"))
        uvicorn.run(app, port=8000)   # POST /retrieve {"query": "..."}; docs at /docs
    """
    fastapi = _imported("fastapi")
    warm(pipeline)
    batcher = Batcher(pipeline, max_batch)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = fastapi.FastAPI(title="ragopt", version=_version(), lifespan=lifespan,
                          description=f"The tuned retrieval pipeline {pipeline.spec.describe()}.")
    app.state.pipeline = pipeline

    @app.post("/retrieve", response_model=RetrieveResponse)
    async def retrieve(request: RetrieveRequest) -> RetrieveResponse:
        """The top-k passages for each question, with ids, scores, texts and metadata."""
        try:
            future = batcher.submit(request.texts(), request.k)
        except UserError as error:
            raise fastapi.HTTPException(status_code=422, detail=str(error)) from None
        hits = await asyncio.wrap_future(future)
        return RetrieveResponse(results=[Answer(query=text, passages=[Passage(**vars(hit)) for hit in found])
                                         for text, found in zip(request.texts(), hits)])

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Whether the service is up, the pipeline it serves and the corpus size."""
        return Health(status="ok", pipeline=pipeline.spec.describe(), top_k=pipeline.spec.top_k,
                      passages=len(pipeline.engine.corpus))

    return app


def _version() -> str:
    from importlib.metadata import version

    return version("ragopt")


def build(best: str | Path, corpus: str | Path | None, cache_dir: str | Path | None, max_batch: int = 32,
          documents: str | Path | None = None) -> "FastAPI":
    """Load best.yaml over the corpus (or documents, cut by its tuned chunker) and make its
    warmed HTTP API; a bad file, or FastAPI or uvicorn missing, raises a UserError before any
    model loads."""
    for name in ("fastapi", "uvicorn"):
        _imported(name)
    return create_app(load_pipeline(best, corpus, cache_dir, documents=documents), max_batch)


def run(app: "FastAPI", host: str, port: int) -> None:
    """Serve the app with uvicorn until interrupted."""
    _imported("uvicorn").run(app, host=host, port=port)
