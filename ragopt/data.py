"""QA sets and corpora: loading (AutoRAG parquet, JSONL, CSV, BEIR), NFC normalization, validation.

Everything downstream works on corpus *row indices*; ids and texts live here only. Validation runs
before any model loads and reports every offending row of a file in one error.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ragopt.errors import DataError

MAX_ROWS_IN_ERROR = 10


def nfc(text: str) -> str:
    """Korean text from macOS or PDFs is often NFD; compare and hash everything in NFC."""
    return unicodedata.normalize("NFC", text)


def content_key(*parts: Sequence[str]) -> str:
    """A stable hash of text columns, used as the data part of every cache key."""
    digest = hashlib.sha256()
    for column in parts:
        for text in column:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x1f")
        digest.update(b"\x1e")
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Corpus:
    """Passages with unique ids, kept sorted by doc id: row i of every array in ragopt refers to
    doc_ids[i], and since rows follow the ids, not the file, nothing ragopt computes (ties
    broken by row, cache keys) depends on the order of the rows in the corpus file."""

    doc_ids: list[str]
    contents: list[str]
    source: str = "<memory>"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        order = sorted(range(len(self.doc_ids)), key=self.doc_ids.__getitem__)
        object.__setattr__(self, "doc_ids", [self.doc_ids[i] for i in order])
        object.__setattr__(self, "contents", [self.contents[i] for i in order])
        object.__setattr__(self, "key", content_key(self.doc_ids, self.contents))

    def __len__(self) -> int:
        return len(self.doc_ids)

    def index_of(self) -> dict[str, int]:
        return {doc_id: i for i, doc_id in enumerate(self.doc_ids)}


@dataclass(frozen=True)
class Queries:
    """Query texts with a content key, so their embeddings and tokens can be cached."""

    texts: list[str]
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", [nfc(t) for t in self.texts])
        object.__setattr__(self, "key", content_key(self.texts))

    @classmethod
    def unseen(cls, texts: list[str]) -> "Queries":
        """The same texts under a key of their own, so nothing cached for them is found: what a
        latency probe asks, to time query-side work as a served pipeline does it."""
        queries = cls(texts)
        object.__setattr__(queries, "key", f"unseen:{uuid.uuid4().hex}")
        return queries

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class QASet:
    """Questions with ground truth as AutoRAG groups: every group is required, ids inside one
    group are alternatives (any one of them satisfies the group)."""

    qids: list[str]
    queries: Queries
    groups: list[list[list[int]]]
    domains: list[str] | None
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.qids)


def _fail(path: str, problem: str, rows: list[str], advice: str) -> None:
    if not rows:
        return
    shown = "\n".join(f"  - {row}" for row in rows[:MAX_ROWS_IN_ERROR])
    more = f"\n  ... and {len(rows) - MAX_ROWS_IN_ERROR} more" if len(rows) > MAX_ROWS_IN_ERROR else ""
    raise DataError(f"{path}: {problem} ({len(rows)} rows):\n{shown}{more}\n{advice}")


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path in the config (it is relative to the config file).")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        return pd.read_json(path, dtype=False)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    raise DataError(f"{path}: unknown file type '{suffix}'; use .parquet, .jsonl, .json, .csv or .tsv.")


def _require_columns(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}. "
                        f"ragopt reads AutoRAG's format: qa has qid, query, retrieval_gt; corpus has doc_id, contents.")


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return nfc(str(value))


def load_corpus(path: str | Path) -> Corpus:
    """Load a corpus file with columns doc_id and contents (AutoRAG parquet, JSONL or CSV)."""
    path = Path(path)
    frame = _read_table(path)
    _require_columns(frame, path, ["doc_id", "contents"])
    return _validated_corpus(
        [_as_text(v) for v in frame["doc_id"]], [_as_text(v) for v in frame["contents"]], str(path)
    )


def _validated_corpus(doc_ids: list[str], contents: list[str], source: str) -> Corpus:
    if not doc_ids:
        raise DataError(f"{source}: no passages; a corpus needs at least one row with doc_id and contents.")
    _fail(source, "empty doc_id", [f"row {i}" for i, d in enumerate(doc_ids) if not d.strip()],
          "Give every passage a non-empty doc_id.")
    counts = Counter(doc_ids)
    _fail(source, "duplicate doc_id (after NFC normalization)",
          [f"row {i}: {d!r}" for i, d in enumerate(doc_ids) if counts[d] > 1],
          "Doc ids must be unique; merge or rename the duplicated passages.")
    _fail(source, "empty passage", [f"row {i}: {doc_ids[i]!r}" for i, c in enumerate(contents) if not c.strip()],
          "Remove empty passages or fill in their contents.")
    return Corpus(doc_ids, contents, source)


def _parse_gt(value: Any) -> list[list[str]]:
    """AutoRAG's casting rules: a string is one group of one id; a flat list is one group of
    alternatives; a list of lists is a list of groups. CSV cells hold the same as JSON."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            value = json.loads(stripped)
        else:
            return [[value]] if stripped else []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list):
        return []
    if all(isinstance(v, str) for v in value):
        return [list(value)] if value else []
    return [[str(x) for x in (g.tolist() if isinstance(g, np.ndarray) else g)] for g in value]


def load_qa(path: str | Path, corpus: Corpus, domain_column: str | None = None,
            domain_pattern: str | None = None) -> QASet:
    """Load questions (qid, query, retrieval_gt) and check them against the corpus.

    The domain of a question comes from `domain_column`, or from `domain_pattern`, a regular
    expression whose first group is taken from the qid (r"_([^_]+)$" turns 0_finance into finance).
    """
    path = Path(path)
    frame = _read_table(path)
    _require_columns(frame, path, ["qid", "query", "retrieval_gt"])
    qids = [_as_text(v) for v in frame["qid"]]
    queries = [_as_text(v) for v in frame["query"]]
    try:
        raw_groups = [_parse_gt(v) for v in frame["retrieval_gt"]]
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: retrieval_gt is not valid JSON ({error}); write it as [[\"doc id\"], ...].") from None
    raw_groups = [[[nfc(d) for d in g] for g in groups] for groups in raw_groups]
    domains = _domains(frame, qids, path, domain_column, domain_pattern)
    return _validated_qa(qids, queries, raw_groups, domains, corpus, str(path))


def _domains(frame: pd.DataFrame, qids: list[str], path: Path, column: str | None,
             pattern: str | None) -> list[str] | None:
    if column is not None:
        _require_columns(frame, path, [column])
        return [_as_text(v) for v in frame[column]]
    if pattern is None:
        return None
    regex = re.compile(pattern)
    matches = [regex.search(q) for q in qids]
    _fail(str(path), f"qid does not match domain_pattern {pattern!r}",
          [f"qid {q!r}" for q, m in zip(qids, matches) if m is None or not m.groups()],
          "Fix the qids or the pattern (its first group is the domain).")
    return [m.group(1) for m in matches if m is not None]


def _validated_qa(qids: list[str], queries: list[str], groups: list[list[list[str]]],
                  domains: list[str] | None, corpus: Corpus, source: str) -> QASet:
    if not qids:
        raise DataError(f"{source}: no questions; a QA set needs at least one row with qid, query and retrieval_gt.")
    counts = Counter(qids)
    _fail(source, "duplicate qid", [f"row {i}: {q!r}" for i, q in enumerate(qids) if counts[q] > 1],
          "Question ids must be unique.")
    _fail(source, "empty query", [f"row {i}: qid {qids[i]!r}" for i, q in enumerate(queries) if not q.strip()],
          "Remove the question or write its text.")
    _fail(source, "no retrieval_gt", [f"row {i}: qid {qids[i]!r}" for i, g in enumerate(groups) if not any(g)],
          "Every question needs at least one relevant doc id.")
    index = corpus.index_of()
    _fail(source, f"retrieval_gt ids missing from the corpus {corpus.source}",
          [f"row {i}: qid {qids[i]!r}: {d!r}"
           for i, g in enumerate(groups) for grp in g for d in grp if d not in index],
          "Fix the ids or use the corpus file these questions were written for.")
    repeated = []
    for i, g in enumerate(groups):
        ids = Counter(d for grp in g for d in grp)
        repeated += [f"row {i}: qid {qids[i]!r}: {d!r}" for d, n in ids.items() if n > 1]
    _fail(source, "a doc id is listed twice in one question's retrieval_gt", repeated,
          "List each relevant id once: groups are required, ids in one group are alternatives.")
    as_rows = [[[index[d] for d in grp] for grp in g if grp] for g in groups]
    return QASet(qids, Queries(queries), as_rows, domains, source)


def load_beir(folder: str | Path, split: str = "test") -> tuple[QASet, Corpus]:
    """Load a BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text) and
    qrels/<split>.tsv. Every judged-relevant doc (score > 0) is its own required group."""
    folder = Path(folder)
    corpus_frame = _read_table(folder / "corpus.jsonl")
    _require_columns(corpus_frame, folder / "corpus.jsonl", ["_id", "text"])
    titles = corpus_frame["title"] if "title" in corpus_frame.columns else [""] * len(corpus_frame)
    contents = [_as_text(f"{t}\n{x}" if _as_text(t) else x) for t, x in zip(titles, corpus_frame["text"])]
    corpus = _validated_corpus([_as_text(v) for v in corpus_frame["_id"]], contents, str(folder / "corpus.jsonl"))
    query_frame = _read_table(folder / "queries.jsonl")
    _require_columns(query_frame, folder / "queries.jsonl", ["_id", "text"])
    texts = dict(zip((_as_text(v) for v in query_frame["_id"]), (_as_text(v) for v in query_frame["text"])))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = pd.read_csv(qrels_path, sep="\t", dtype=str) if qrels_path.exists() else None
    if qrels is None:
        raise DataError(f"{qrels_path}: file not found; set data.split to one of "
                        f"{sorted(p.stem for p in (folder / 'qrels').glob('*.tsv'))}.")
    qrels.columns = ["query-id", "corpus-id", "score"][: len(qrels.columns)]
    relevant = qrels[qrels["score"].astype(float) > 0]
    by_query: dict[str, list[list[str]]] = {}
    for qid, doc in zip(relevant["query-id"], relevant["corpus-id"]):
        by_query.setdefault(_as_text(qid), []).append([_as_text(doc)])
    qids = list(by_query)
    _fail(str(qrels_path), "query ids missing from queries.jsonl", [f"{q!r}" for q in qids if q not in texts],
          "Use the queries.jsonl that belongs to these qrels.")
    return _validated_qa(qids, [texts[q] for q in qids], [by_query[q] for q in qids], None, corpus,
                         str(qrels_path)), corpus


def load_dataset(qa: Path | None = None, corpus: Path | None = None, beir: Path | None = None, split: str = "test",
                 domain_column: str | None = None, domain_pattern: str | None = None) -> tuple[QASet, Corpus]:
    """The QA set and corpus a config's `data` section names."""
    if beir is not None:
        if domain_column or domain_pattern:
            raise DataError(f"{beir}: BEIR folders have no domain column; remove domain_column/domain_pattern.")
        return load_beir(beir, split)
    if qa is None or corpus is None:
        raise DataError("give both a qa file and a corpus file, or a BEIR folder")
    loaded = load_corpus(corpus)
    return load_qa(qa, loaded, domain_column, domain_pattern), loaded
