"""QA sets and corpora: loading (AutoRAG parquet, JSONL, CSV, BEIR, LlamaIndex QA datasets and
docstores), NFC normalization, validation.

Everything downstream works on corpus *row indices*; ids and texts live here only. Validation runs
before any model loads and reports every offending row of a file in one error, by the line an
editor shows (JSONL, CSV) or the 0-based row index (parquet, JSON arrays).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import re
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from ragopt.errors import DataError

MAX_ROWS_IN_ERROR = 10
QA_COLUMNS = ["qid", "query", "retrieval_gt"]
CORPUS_COLUMNS = ["doc_id", "contents"]
COLUMN_ALIASES = {"qid": ("id", "_id", "query_id", "question_id"), "query": ("question", "text", "query_text"),
                  "retrieval_gt": ("gt", "ground_truth", "relevant_ids", "doc_ids"),
                  "doc_id": ("id", "_id", "docid", "pid", "passage_id"),
                  "contents": ("text", "content", "passage", "document", "body")}
"""Column names other formats use for ragopt's columns, suggested when a required column is missing."""
CSV_FIELD_LIMIT = 2**31 - 1
"""Characters a CSV field may hold (the csv module's default, 131,072, is less than some passages)."""
Where = Callable[[int], str]
"""The place of a record in its file, as a message names it: 'line 3' or 'row 2'."""
LLAMA_INDEX_QA = ("queries", "corpus", "relevant_docs")
"""The keys of a LlamaIndex QA dataset JSON (EmbeddingQAFinetuneDataset.save_json)."""
LLAMA_INDEX_DOCSTORE = "docstore/data"
"""The key that holds the nodes of a persisted LlamaIndex docstore (SimpleDocumentStore.persist)."""


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


class Metadata:
    """Each passage's metadata, made into a dict only when read, so that a corpus loads no slower
    for having it: the columns of a corpus file beside doc_id and contents, a column named
    `metadata` that holds mappings (AutoRAG's, a LlamaIndex node's) spread into its keys. Missing
    values (None, NaN) are left out; numpy values become Python ones.

    Example:
        corpus = ragopt.load_corpus("corpus.parquet")
        corpus.metadata_of(0)   # {'last_modified_datetime': datetime(...), 'domain': 'law'}
    """

    def __init__(self, columns: Mapping[str, Sequence[Any]], rows: np.ndarray | None = None) -> None:
        self._columns = dict(columns)
        self._rows = np.arange(len(next(iter(self._columns.values())))) if rows is None else rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, row: int) -> dict[str, Any]:
        i = self._rows[row]
        record: dict[str, Any] = {}
        for name, values in self._columns.items():
            value = values[i]
            if name == "metadata" and isinstance(value, Mapping):
                record.update(value)
            elif not _missing(value):
                record[name] = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
        return record

    def reordered(self, rows: Sequence[int]) -> "Metadata":
        """The same metadata with row i holding what row rows[i] holds here."""
        return Metadata(self._columns, self._rows[np.asarray(rows, dtype=np.int64)])


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


@dataclass(frozen=True)
class Corpus:
    """Passages with unique ids, kept sorted by doc id: row i of every array in ragopt refers to
    doc_ids[i], and since rows follow the ids, not the file, nothing ragopt computes (ties
    broken by row, cache keys) depends on the order of the rows in the corpus file. Metadata,
    when the passages have any, rides along and is no part of the key."""

    doc_ids: list[str]
    contents: list[str]
    source: str = "<memory>"
    metadata: Metadata | None = field(default=None, compare=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        order = sorted(range(len(self.doc_ids)), key=self.doc_ids.__getitem__)
        object.__setattr__(self, "doc_ids", [self.doc_ids[i] for i in order])
        object.__setattr__(self, "contents", [self.contents[i] for i in order])
        if self.metadata is not None:
            object.__setattr__(self, "metadata", self.metadata.reordered(order))
        object.__setattr__(self, "key", content_key(self.doc_ids, self.contents))

    def __len__(self) -> int:
        return len(self.doc_ids)

    def index_of(self) -> dict[str, int]:
        return {doc_id: i for i, doc_id in enumerate(self.doc_ids)}

    def metadata_of(self, row: int) -> dict[str, Any]:
        """The metadata of the passage at a row ({} when the passages have none)."""
        return {} if self.metadata is None else self.metadata[row]


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


@dataclass(frozen=True)
class Table:
    """A data file's records as columns, and where each record is in the file, so that a message
    points at it as an editor shows it."""

    path: Path
    frame: pd.DataFrame
    lines: Sequence[int] | None = None
    """The 1-based line each record starts on (JSONL; CSV, whose header is line 1); None where
    records are named by their 0-based row index (parquet, JSON arrays)."""

    def where(self, row: int) -> str:
        return f"row {row}" if self.lines is None else f"line {self.lines[row]}"


def _fail(source: str, problem: str, items: list[str], advice: str) -> None:
    """Stop with one error listing the first offending items, if there are any."""
    if not items:
        return
    shown = "\n".join(f"  - {item}" for item in items[:MAX_ROWS_IN_ERROR])
    more = f"\n  ... and {len(items) - MAX_ROWS_IN_ERROR} more" if len(items) > MAX_ROWS_IN_ERROR else ""
    raise DataError(f"{source}: {problem}:\n{shown}{more}\n{advice}")


def _count(items: Sequence[Any], noun: str, plural: str | None = None) -> str:
    """'1 qid', '3 qids': how many items, with the noun in the right number."""
    return f"{len(items)} {noun if len(items) == 1 else plural or noun + 's'}"


def _require_path(path: Path, key: str | None = None) -> None:
    """Stop when a data path does not exist, naming the config setting that points to it and the
    files beside it that it may have meant."""
    if path.exists():
        return
    setting = f" (the path {key} gives; paths in a config are relative to the config file)" if key else ""
    raise DataError(f"{path}: no such file or folder{setting}. {_beside(path)}")


def _beside(path: Path) -> str:
    """The names in a missing path's folder it may have meant (a close spelling, or the same name
    in another format), or what the folder holds."""
    folder = path.parent
    if not folder.is_dir():
        return f"Its folder {folder} does not exist either."
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    close = list(dict.fromkeys(difflib.get_close_matches(path.name, names, n=3, cutoff=0.75)
                               + [n for n in names if Path(n).stem == path.stem]))
    if close:
        return f"Did you mean {' or '.join(close)} (in {folder})?"
    listed = ", ".join(names[:MAX_ROWS_IN_ERROR]) + (", ..." if len(names) > MAX_ROWS_IN_ERROR else "")
    return f"{folder} holds: {listed or 'nothing'}."


def _read_table(path: Path) -> Table:
    """A parquet, JSONL, JSON or CSV/TSV file as a Table."""
    _require_path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return Table(path, _read_parquet(path))
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return Table(path, _read_json(path))
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    raise DataError(f"{path}: unknown file type '{suffix}'; use .parquet, .jsonl, .json, .csv or .tsv.")


def _llama_index_table(path: Path, part: Literal["qa", "corpus"]) -> Table | None:
    """A LlamaIndex file as the table of a QA or corpus file: a QA dataset JSON (queries, corpus,
    relevant_docs: EmbeddingQAFinetuneDataset.save_json, what generate_question_context_pairs
    returns) or a persisted docstore (docstore.json, a corpus only); None for any other file."""
    document = _llama_index_json(path)
    if document is None:
        return None
    if LLAMA_INDEX_DOCSTORE in document:
        if part == "qa":
            raise DataError(f"{path}: a LlamaIndex docstore holds nodes, not questions. Give it as data.corpus, and "
                            "as data.qa the QA dataset JSON that generate_question_context_pairs made from its nodes.")
        return Table(path, _docstore_frame(document[LLAMA_INDEX_DOCSTORE]))
    return Table(path, _qa_dataset_frame(path, document) if part == "qa" else pd.DataFrame(
        {"doc_id": list(document["corpus"]), "contents": list(document["corpus"].values())}))


def _llama_index_json(path: Path) -> dict[str, Any] | None:
    """The object in a .json file when it is a LlamaIndex QA dataset or docstore; None for any
    other file (read no further than its first bytes)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    with path.open("rb") as file:
        if not file.read(64).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
            return None
    try:
        document = json.loads(_text(path))
    except json.JSONDecodeError:
        return None
    if LLAMA_INDEX_DOCSTORE not in document and not set(LLAMA_INDEX_QA) <= document.keys():
        return None
    parts = (LLAMA_INDEX_DOCSTORE,) if LLAMA_INDEX_DOCSTORE in document else LLAMA_INDEX_QA
    wrong = [key for key in parts if not isinstance(document[key], dict)]
    if wrong:
        raise DataError(f"{path}: {', '.join(wrong)} should map ids to values, as LlamaIndex writes them; save the "
                        "file again with EmbeddingQAFinetuneDataset.save_json or SimpleDocumentStore.persist.")
    return document


def _qa_dataset_frame(path: Path, document: dict[str, Any]) -> pd.DataFrame:
    """A QA dataset's questions as QA columns: each relevant node is a required group of its own,
    as LlamaIndex's retrieval metrics count every expected id."""
    relevant = document["relevant_docs"]
    not_lists = [f"qid {qid!r}" for qid in document["queries"] if not isinstance(relevant.get(qid, []), list)]
    _fail(str(path), _count(not_lists, "question") + " whose relevant_docs is not a list", not_lists,
          'Write each question\'s relevant node ids as a list, e.g. "relevant_docs": {"q1": ["node-1"]}.')
    return pd.DataFrame({"qid": list(document["queries"]), "query": list(document["queries"].values()),
                         "retrieval_gt": [[[doc] for doc in relevant.get(qid, [])] for qid in document["queries"]]})


def _docstore_frame(nodes: dict[str, Any]) -> pd.DataFrame:
    """A docstore's nodes as corpus columns: the node id, its text (a Document's text_resource in
    LlamaIndex versions that write no `text`) and its metadata."""
    data = [(entry.get("__data__") or {}) if isinstance(entry, dict) else {} for entry in nodes.values()]
    return pd.DataFrame({"doc_id": list(nodes),
                         "contents": [d.get("text") or (d.get("text_resource") or {}).get("text") for d in data],
                         "metadata": [d.get("metadata") or {} for d in data]})


def _text(path: Path) -> str:
    """A text file's contents (a UTF-8 byte order mark dropped); a file in another encoding
    stops with the place of its first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise DataError(_not_utf8(path, raw, error.start)) from None


def _not_utf8(path: Path, raw: bytes, offset: int) -> str:
    """Where a file stops being UTF-8 and, for the encodings Korean files often come in (UTF-16
    from Excel's 'Unicode text', CP949/EUC-KR from Korean Windows), which one it is and how to fix it."""
    line = raw.count(b"\n", 0, offset) + 1
    where = f"{path}: not UTF-8 text: byte {offset} (line {line}) is 0x{raw[offset]:02x}."
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return f"{where} The file is UTF-16 (Excel's 'Unicode text'); save it as UTF-8 (Excel: 'CSV UTF-8')."
    try:
        legacy = raw.decode("cp949")
    except UnicodeDecodeError:
        return f"{where} Save the file as UTF-8."
    sample = legacy.split("\n")[line - 1].strip()[:40]
    return (f"{where} It reads as CP949 (EUC-KR), the Korean Windows encoding (line {line}: {sample!r}). "
            f"Save it as UTF-8, e.g. `iconv -f cp949 -t utf-8 {path.name} > utf8-{path.name}`, "
            "or in Excel 'Save as: CSV UTF-8'.")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: cannot be read as a parquet file ({error}); write it again with "
                        "pandas.DataFrame.to_parquet, or use .jsonl or .csv.") from None


def _read_json(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(io.StringIO(_text(path)), dtype=False)
    except ValueError as error:
        raise DataError(f"{path}: not a JSON list of records ({error}); write [{{...}}, {{...}}], or one object "
                        "per line in a .jsonl file.") from None


def _read_jsonl(path: Path) -> Table:
    """One JSON object per line; blank lines are skipped, and each record keeps its line number."""
    records, lines = [], []
    for number, line in enumerate(_text(path).split("\n"), 1):
        if line.strip():
            records.append(_json_object(path, number, line))
            lines.append(number)
    return Table(path, pd.DataFrame.from_records(records), lines)


def _json_object(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: line {number} is not valid JSON ({error.msg} at character {error.colno}); "
                        "a JSONL file holds one JSON object per line.") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object; a JSONL file "
                        'holds one object per line, e.g. {"doc_id": "...", "contents": "..."}.')
    return record


def _read_csv(path: Path, separator: str) -> Table:
    """Every cell as text (nothing becomes a number or NaN); each record keeps the line it starts
    on (a quoted field may span lines), and a record with more or fewer fields than the header stops."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(_text(path), newline=""), delimiter=separator)
    header: list[str] | None = None
    rows, lines, start = [], [], 1
    try:
        for record in reader:
            if not record:
                pass  # a blank line
            elif header is None:
                header = record
            else:
                _check_fields(path, start, record, header)
                rows.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}: line {start} cannot be read as CSV ({error}).") from None
    return Table(path, pd.DataFrame(rows, columns=header or [], dtype=object), lines)


def _check_fields(path: Path, line: int, record: list[str], header: list[str]) -> None:
    if len(record) != len(header):
        raise DataError(f"{path}: line {line} has {len(record)} fields, the header line has {len(header)}. A field "
                        'holding the separator, a quote or a line break must be in double quotes ("a, b"), with '
                        'its quotes doubled ("say ""hi""").')


def _require_columns(table: Table, columns: list[str], needs: str) -> None:
    """Stop unless the file has every column, naming the columns it has and the likely intended ones."""
    found = [str(c) for c in table.frame.columns]
    if not found:
        raise DataError(f"{table.path}: the file is empty (no rows, no columns). {needs} {', '.join(columns)}.")
    missing = [c for c in columns if c not in found]
    if missing:
        renames = _renames(missing, [c for c in found if c not in columns])
        hint = f" Rename {', '.join(f'{c!r} to {m!r}' for m, c in renames.items())}?" if renames else ""
        raise DataError(f"{table.path}: missing column(s) {missing}; found {found}. {needs} "
                        f"{', '.join(columns)}.{hint}")


def _renames(missing: list[str], spare: list[str]) -> dict[str, str]:
    """For each missing column, a column of the file that is probably it: the same name in other
    letter case, a name other formats use for it (COLUMN_ALIASES), or a close spelling."""
    by_lower = {c.lower(): c for c in spare}
    renames = {}
    for name in missing:
        aliases = [a for a in COLUMN_ALIASES.get(name, ()) if a in by_lower]
        close = difflib.get_close_matches(name, list(by_lower), n=1, cutoff=0.6)
        match = (by_lower.get(name) or (by_lower[aliases[0]] if aliases else None)
                 or (by_lower[close[0]] if close else None))
        if match is not None and match not in renames.values():
            renames[name] = match
    return renames


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return nfc(str(value))


def _id_text(value: Any) -> str:
    """An id as text, the same way for a corpus's doc ids, qids and retrieval_gt ids, so that they
    match as the file stores them: a string as it is, an integer in decimal (doc_id 7 is "7"),
    and a whole float as its integer, since pandas makes an integer column with a gap floats."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return _as_text(value)


def _column(table: Table, name: str) -> list[str]:
    return [_as_text(v) for v in table.frame[name]]


def _ids(table: Table, name: str) -> list[str]:
    return [_id_text(v) for v in table.frame[name]]


def _repeated(values: list[str], where: Where, label: str) -> list[str]:
    """Each value that occurs more than once, with every place it occurs."""
    counts = Counter(values)
    places: dict[str, list[str]] = {}
    for i, value in enumerate(values):
        if counts[value] > 1:
            places.setdefault(value, []).append(where(i))
    return [f"{label} {value!r}: {', '.join(rows[:MAX_ROWS_IN_ERROR])}"
            + (f", ... ({len(rows)} in all)" if len(rows) > MAX_ROWS_IN_ERROR else "")
            for value, rows in places.items()]


def load_corpus(path: str | Path) -> Corpus:
    """Load a corpus file with columns doc_id and contents (AutoRAG parquet, JSONL or CSV; its
    other columns become each passage's metadata), or a LlamaIndex file: a persisted docstore
    (docstore.json: each node's id, text and metadata) or the corpus of a QA dataset JSON."""
    path = Path(path)
    table = _llama_index_table(path, "corpus") or _read_table(path)
    _require_columns(table, CORPUS_COLUMNS, "A corpus file (AutoRAG's format) needs the columns")
    return _validated_corpus(_ids(table, "doc_id"), _column(table, "contents"), str(table.path), table.where,
                             _metadata(table, CORPUS_COLUMNS))


def corpus_of(doc_ids: Sequence[str], contents: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None,
              source: str = "<memory>", noun: str = "passage") -> Corpus:
    """Passages held in memory (LlamaIndex nodes, say) as a corpus, NFC-normalized and checked as
    a corpus file is; a problem names each passage as `noun` and its position."""
    columns = None if metadata is None else Metadata({"metadata": list(metadata)})
    return _validated_corpus([_id_text(d) for d in doc_ids], [_as_text(c) for c in contents], source,
                             lambda i: f"{noun} {i}", columns)


def _metadata(table: Table, used: Sequence[str]) -> Metadata | None:
    """A file's columns beside those read into the corpus, as its passages' metadata (None when it has none)."""
    others = [c for c in table.frame.columns if c not in used]
    return Metadata({str(c): table.frame[c].to_numpy() for c in others}) if others else None


def _validated_corpus(doc_ids: list[str], contents: list[str], source: str, where: Where,
                      metadata: Metadata | None = None) -> Corpus:
    if not doc_ids:
        raise DataError(f"{source}: no passages; a corpus needs at least one row with doc_id and contents.")
    empty_ids = [where(i) for i, d in enumerate(doc_ids) if not d.strip()]
    _fail(source, _count(empty_ids, "passage") + " with an empty doc_id", empty_ids,
          "Give every passage a non-empty doc_id.")
    repeated = _repeated(doc_ids, where, "doc_id")
    _fail(source, _count(repeated, "duplicate doc_id") + " (compared after NFC normalization)", repeated,
          "Doc ids must be unique; merge or rename the duplicated passages.")
    empty = [f"{where(i)}: doc_id {doc_ids[i]!r}" for i, c in enumerate(contents) if not c.strip()]
    _fail(source, _count(empty, "empty passage"), empty, "Remove empty passages or fill in their contents.")
    return Corpus(doc_ids, contents, source, metadata)


class _NotIds(ValueError):
    """A retrieval_gt value of no shape AutoRAG's casting rules read."""


GT_ADVICE = ('Write retrieval_gt as one doc id ("a" or 7), a list of alternatives (["a", "b"]) or a list of required '
             'groups ([["a"], ["b", "c"]]); in a CSV cell as JSON.')


def _parse_gt(value: Any) -> list[list[str]]:
    """AutoRAG's casting rules, over ids that are strings or integers: one id is one group of one
    id; a flat list is one group of alternatives; a list of lists is a list of groups. Parquet's
    numpy arrays (AutoRAG's arrays of arrays) read as lists; a CSV cell holds the same as JSON."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = json.loads(value)
    value = _plain(value)
    if not isinstance(value, list):
        return [] if _missing(value) or (isinstance(value, str) and not value.strip()) else [[_gt_id(value)]]
    if not any(isinstance(v, list) for v in value):
        return [[_gt_id(v) for v in value]] if value else []
    if not all(isinstance(v, list) for v in value):
        raise _NotIds(f"{value!r} mixes ids and lists")
    return [[_gt_id(d) for d in group] for group in value]


def _plain(value: Any) -> Any:
    """numpy arrays, nested or not, and their scalars as Python lists and scalars."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _gt_id(value: Any) -> str:
    """A retrieval_gt id as text, as _id_text writes the corpus's doc ids; anything but a string or
    a number (a bool, a list inside a group, a mapping, a missing value) is no id."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and not _missing(value):
        return _id_text(value)
    raise _NotIds(f"{value!r} is not a doc id (a string or an integer)")


def _ground_truth(table: Table, qids: list[str]) -> list[list[list[str]]]:
    """Each question's retrieval_gt groups of NFC ids; every value of no readable shape (or a CSV
    cell that is not JSON) is named in one error with its place."""
    groups, bad = [], []
    for i, value in enumerate(table.frame["retrieval_gt"]):
        try:
            groups.append(_parse_gt(value))
        except json.JSONDecodeError as error:
            bad.append(f"{table.where(i)}: qid {qids[i]!r}: {value} is not valid JSON ({error.msg} at character "
                       f"{error.colno})")
        except _NotIds as error:
            bad.append(f"{table.where(i)}: qid {qids[i]!r}: {error}")
    _fail(str(table.path), _count(bad, "question") + " whose retrieval_gt is not doc ids", bad, GT_ADVICE)
    return groups


def load_qa(path: str | Path, corpus: Corpus, domain_column: str | None = None,
            domain_pattern: str | None = None) -> QASet:
    """Load questions (qid, query, retrieval_gt) and check them against the corpus.

    The domain of a question comes from `domain_column`, or from `domain_pattern`, a regular
    expression whose first group is taken from the qid (r"_([^_]+)$" turns 0_finance into finance).
    """
    path = Path(path)
    table = _llama_index_table(path, "qa") or _read_table(path)
    _require_columns(table, QA_COLUMNS, "A QA file (AutoRAG's format) needs the columns")
    qids = _ids(table, "qid")
    domains = _domains(table, qids, domain_column, domain_pattern)
    return _validated_qa(qids, _column(table, "query"), _ground_truth(table, qids), domains, corpus,
                         str(table.path), table.where)


def _domains(table: Table, qids: list[str], column: str | None, pattern: str | None) -> list[str] | None:
    if column is not None:
        _require_domain_column(table, column)
        return _column(table, column)
    if pattern is None:
        return None
    regex = re.compile(pattern)
    matches = [regex.search(q) for q in qids]
    unmatched = [f"{table.where(i)}: qid {q!r}" for i, (q, m) in enumerate(zip(qids, matches))
                 if m is None or not m.groups()]
    _fail(str(table.path), _count(unmatched, "qid") + f" not matching domain_pattern {pattern!r}", unmatched,
          "Fix the qids or the pattern (its first group is the domain).")
    return [m.group(1) for m in matches if m is not None]


def _require_domain_column(table: Table, column: str) -> None:
    """Stop when the column data.domain_column names is not in the QA file, naming the close ones."""
    found = [str(c) for c in table.frame.columns]
    if column not in found:
        close = difflib.get_close_matches(column, found, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"{table.path}: no column {column!r}, which data.domain_column names; found {found}.{hint} "
                        "Set data.domain_column to a column of the file, or use data.domain_pattern.")


def _validated_qa(qids: list[str], queries: list[str], groups: list[list[list[str]]],
                  domains: list[str] | None, corpus: Corpus, source: str, where: Where) -> QASet:
    if not qids:
        raise DataError(f"{source}: no questions; a QA set needs at least one row with qid, query and retrieval_gt.")
    repeated = _repeated(qids, where, "qid")
    _fail(source, _count(repeated, "duplicate qid"), repeated, "Question ids must be unique.")
    empty = [f"{where(i)}: qid {qids[i]!r}" for i, q in enumerate(queries) if not q.strip()]
    _fail(source, _count(empty, "empty query", "empty queries"), empty, "Remove the question or write its text.")
    no_gt = [f"{where(i)}: qid {qids[i]!r}" for i, g in enumerate(groups) if not any(g)]
    _fail(source, _count(no_gt, "question") + " with no retrieval_gt", no_gt,
          "Every question needs at least one relevant doc id.")
    index = corpus.index_of()
    _check_ids_in_corpus(qids, groups, index, corpus, source, where)
    twice = []
    for i, g in enumerate(groups):
        ids = Counter(d for grp in g for d in grp)
        twice += [f"{where(i)}: qid {qids[i]!r}: {d!r}" for d, n in ids.items() if n > 1]
    _fail(source, _count(twice, "doc id") + " listed twice in one question's retrieval_gt", twice,
          "List each relevant id once: groups are required, ids in one group are alternatives.")
    as_rows = [[[index[d] for d in grp] for grp in g if grp] for g in groups]
    return QASet(qids, Queries(queries), as_rows, domains, source)


def _check_ids_in_corpus(qids: list[str], groups: list[list[list[str]]], index: dict[str, int], corpus: Corpus,
                         source: str, where: Where) -> None:
    """Stop when retrieval_gt names ids the corpus lacks, with how many, where, and, when none is
    found at all, what the ids on each side look like (the questions of another corpus, or ids
    written differently)."""
    missing = [(i, d) for i, g in enumerate(groups) for grp in g for d in grp if d not in index]
    if not missing:
        return
    questions = len({i for i, _ in missing})
    advice = "Fix the ids, or point data.corpus at the corpus these questions were written for."
    if questions == len(qids):
        advice = (f"No question's ids are in the corpus: its doc ids look like {corpus.doc_ids[:3]}, these like "
                  f"{list(dict.fromkeys(d for _, d in missing))[:3]}. {advice}")
    _fail(source, _count(missing, "retrieval_gt id") + f" missing from the corpus {corpus.source} (in "
          f"{questions} of {len(qids)} questions)", [f"{where(i)}: qid {qids[i]!r}: {d!r}" for i, d in missing], advice)


def load_beir(folder: str | Path, split: str = "test") -> tuple[QASet, Corpus]:
    """Load a BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text) and
    qrels/<split>.tsv. Every judged-relevant doc (score > 0) is its own required group."""
    folder = Path(folder)
    corpus = _beir_corpus(folder / "corpus.jsonl")
    queries = _read_table(folder / "queries.jsonl")
    _require_columns(queries, ["_id", "text"], "A BEIR queries.jsonl needs the fields")
    texts = dict(zip(_ids(queries, "_id"), _column(queries, "text")))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise DataError(f"{qrels_path}: file not found; set data.split to one of "
                        f"{sorted(p.stem for p in (folder / 'qrels').glob('*.tsv'))}.")
    qrels = _read_table(qrels_path)
    qrels.frame.columns = ["query-id", "corpus-id", "score"][: len(qrels.frame.columns)]
    first_row: dict[str, int] = {}
    by_query: dict[str, list[list[str]]] = {}
    for row, (qid, doc, score) in enumerate(zip(_ids(qrels, "query-id"), _ids(qrels, "corpus-id"),
                                                qrels.frame["score"])):
        if float(score) > 0:
            first_row.setdefault(qid, row)
            by_query.setdefault(qid, []).append([doc])
    qids = list(by_query)
    unknown = [f"{qrels.where(first_row[q])}: {q!r}" for q in qids if q not in texts]
    _fail(str(qrels_path), _count(unknown, "query id") + " missing from queries.jsonl", unknown,
          "Use the queries.jsonl that belongs to these qrels.")
    return _validated_qa(qids, [texts[q] for q in qids], [by_query[q] for q in qids], None, corpus,
                         str(qrels_path), lambda i: qrels.where(first_row[qids[i]])), corpus


def _beir_corpus(path: Path) -> Corpus:
    """A BEIR corpus.jsonl: title and text joined into each passage."""
    table = _read_table(path)
    _require_columns(table, ["_id", "text"], "A BEIR corpus.jsonl needs the fields")
    frame = table.frame
    titles = frame["title"] if "title" in frame.columns else [""] * len(frame)
    contents = [_as_text(f"{t}\n{x}" if _as_text(t) else x) for t, x in zip(titles, frame["text"])]
    return _validated_corpus(_ids(table, "_id"), contents, str(path), table.where,
                             _metadata(table, ["_id", "title", "text"]))


def load_dataset(qa: str | Path | None = None, corpus: str | Path | None = None, beir: str | Path | None = None,
                 split: str = "test", domain_column: str | None = None,
                 domain_pattern: str | None = None) -> tuple[QASet, Corpus]:
    """The QA set and corpus a config's `data` section names: a QA file and a corpus file, or a BEIR folder."""
    qa, corpus, beir = (None if p is None else Path(p) for p in (qa, corpus, beir))
    if beir is not None:
        if domain_column or domain_pattern:
            raise DataError(f"{beir}: BEIR folders have no domain column; remove domain_column/domain_pattern.")
        _require_path(beir, "data.beir")
        return load_beir(beir, split)
    if qa is None or corpus is None:
        raise DataError("give both a qa file and a corpus file, or a BEIR folder")
    _require_path(corpus, "data.corpus")
    _require_path(qa, "data.qa")
    loaded = load_corpus(corpus)
    return load_qa(qa, loaded, domain_column, domain_pattern), loaded

