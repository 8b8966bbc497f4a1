"""Every public function that takes a path takes a str or any os.PathLike as well as a Path, and
gives the same result for each."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pandas as pd
import pytest

import ragopt
from conftest import KO_MINI, write_config
from ragopt.data.qa import load_beir, load_qa
from ragopt.serving.export import Exported, read_best, write_best
from ragopt.stages.spec import PipelineSpec

SPACE = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl", domain_column: domain}
retrievers:
  - {name: bm25, type: bm25, tokenizer: whitespace, method: [lucene, bm25+], k1: [1.2], b: [0.75]}
top_k: [3]
study: {n_trials: 2, seed: 1}
"""
QUESTION = "은행이 문을 닫으면 맡긴 돈은 얼마까지 돌려받을 수 있나요?"


class FsPath:
    """A path that is neither a str nor a Path, only os.PathLike (as py.path and fsspec paths are)."""

    def __init__(self, path: Path) -> None:
        self._path = str(path)

    def __fspath__(self) -> str:
        return self._path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_xlmr_reranker) -> SimpleNamespace:
    """A finished BM25 study over the bundled example, a best.yaml with a reranker, and a BEIR folder."""
    folder = tmp_path_factory.mktemp("paths")
    config = write_config(folder / "space.yaml", SPACE)
    outcome = ragopt.optimize(config, folder / "study", progress=False)
    reranked = folder / "reranked.yaml"
    write_best(reranked, Exported(PipelineSpec.model_validate({
        "retriever": {"type": "bm25", "tokenizer": {"type": "whitespace"}},
        "reranker": {"type": "cross_encoder", "model": str(tiny_xlmr_reranker), "depth": 5}, "top_k": 2})), {}, {})
    beir = folder / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "예금"}\n{"_id": "d2", "text": "금리"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "예금 보호"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return SimpleNamespace(folder=folder, config=config, output=outcome.output, best=outcome.output / "best.yaml",
                           reranked=reranked, beir=beir, qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl")


def _hits(pipeline: ragopt.Pipeline) -> list[tuple[str, float]]:
    return [(hit.doc_id, hit.score) for hit in pipeline.retrieve(QUESTION)[0]]


def _optimized(f: SimpleNamespace, path: Callable[[Path], Any]) -> tuple:
    output = f.folder / f"again-{path.__name__}"
    outcome = ragopt.optimize(path(f.config), path(output), progress=False)
    trials = pd.read_csv(output / "trials.csv")
    return outcome.output == output, outcome.best_value, trials[["trial", "pipeline", "value"]].values.tolist()


def _report(f: SimpleNamespace, path: Callable[[Path], Any]) -> tuple:
    target = f.folder / f"report-{path.__name__}.html"
    written = ragopt.build_report(path(f.output), path(target))
    return written == target, hashlib.sha256(target.read_bytes()).hexdigest()


def _results(f: SimpleNamespace, path: Callable[[Path], Any]) -> tuple:
    results = ragopt.StudyResults.load(path(f.output))
    return results.trials.to_csv(), results.per_question.to_csv(), results.manifest


def _retriever(f: SimpleNamespace, path: Callable[[Path], Any]) -> list:
    from ragopt.serving.integrations.llama_index import RagoptRetriever

    retriever = RagoptRetriever(path(f.best), path(f.corpus), cache_dir=path(f.folder / "cache"))
    return [(n.node.node_id, n.score, n.node.get_content()) for n in retriever.retrieve(QUESTION)]


def _reranker(f: SimpleNamespace, path: Callable[[Path], Any]) -> tuple:
    from ragopt.serving.integrations.llama_index import RagoptReranker

    reranker = RagoptReranker(path(f.reranked), cache_dir=path(f.folder / "cache"))
    return reranker.model, reranker.depth, reranker.top_n


CALLS: dict[str, Callable[[SimpleNamespace, Callable[[Path], Any]], Any]] = {
    "load_config": lambda f, path: ragopt.load_config(path(f.config)),
    "load_corpus": lambda f, path: ragopt.load_corpus(path(f.corpus)),
    "load_qa": lambda f, path: load_qa(path(f.qa), ragopt.load_corpus(f.corpus), domain_column="domain"),
    "load_dataset": lambda f, path: ragopt.load_dataset(path(f.qa), path(f.corpus), domain_column="domain"),
    "load_dataset(beir)": lambda f, path: ragopt.load_dataset(beir=path(f.beir)),
    "load_beir": lambda f, path: load_beir(path(f.beir)),
    "load_pipeline": lambda f, path: _hits(ragopt.load_pipeline(path(f.best), path(f.corpus),
                                                                  path(f.folder / "cache"))),
    "read_best": lambda f, path: read_best(path(f.best)),
    "optimize": _optimized,
    "StudyResults.load": _results,
    "build_report": _report,
    "RagoptRetriever": _retriever,
    "RagoptReranker": _reranker,
}


@pytest.mark.parametrize("kind", [str, FsPath])
@pytest.mark.parametrize("name", list(CALLS))
def test_every_public_path_argument_takes_a_str_or_pathlike(files, name, kind):
    expected = CALLS[name](files, Path)
    assert CALLS[name](files, kind) == expected
