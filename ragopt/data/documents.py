"""Documents and QA labelled by evidence spans: loading (.txt/.md, .pdf text layers, .jsonl),
span QA files, and passage-id QA moved onto documents by locating each passage's text.

A document's text is kept exactly as read (no NFC, no strip): every character offset in ragopt
(evidence spans, chunk spans) refers to it. Ids are compared in NFC, as everywhere in ragopt.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import numpy as np

from ragopt.data.qa import (Corpus, Queries, QASet, _column, _count, _domains, _fail, _id_text, _ids,
                         _json_object, _plain, _read_table, _repeated, _require_columns, _require_path, _text,
                         content_key, nfc)
from ragopt.errors import DataError

EXTENSIONS = (".txt", ".md", ".pdf", ".jsonl")
"""The files a documents folder or glob is read from; other files are skipped."""
PDF_PAGE_SEPARATOR = "\n\n"
"""What joins the text of a PDF's pages into one document."""
TEXT_FIELDS = ("text", "contents")
ID_FIELDS = ("id", "doc_id")
"""The fields of a .jsonl document record that hold its text and its id; the others are its metadata."""
GLOB_CHARACTERS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Document:
    """One document: its id (the path relative to the folder or glob it was loaded from, or a
    .jsonl record's id), its text exactly as read, and its metadata (a PDF's page offsets, a
    .jsonl record's other fields)."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, order=True)
class Span:
    """Characters start..end (end exclusive, Python string offsets) of a document's text."""

    document: str
    start: int
    end: int


@dataclass(frozen=True)
class ChunkSpans:
    """Where each corpus row of a chunking lies: document (index into Documents), start, end
    (character offsets into its text, end exclusive), aligned with the corpus rows."""

    document: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "document", np.asarray(self.document, dtype=np.int32))
        object.__setattr__(self, "start", np.asarray(self.start, dtype=np.int64))
        object.__setattr__(self, "end", np.asarray(self.end, dtype=np.int64))
        if not len(self.document) == len(self.start) == len(self.end):
            raise ValueError("document, start and end must have one entry per chunk")

    def __len__(self) -> int:
        return len(self.document)


@dataclass(frozen=True)
class Documents:
    """Documents sorted by id, with a content key (ids and texts) for the caches of everything
    computed from them."""

    docs: list[Document]
    source: str = "<memory>"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "docs", sorted(self.docs, key=lambda d: d.doc_id))
        object.__setattr__(self, "key", content_key([d.doc_id for d in self.docs], [d.text for d in self.docs]))

    def __len__(self) -> int:
        return len(self.docs)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.docs)

    def __getitem__(self, i: int) -> Document:
        return self.docs[i]

    def index_of(self) -> dict[str, int]:
        return {d.doc_id: i for i, d in enumerate(self.docs)}

    def masked(self, spans: Sequence[Span]) -> "Documents":
        """The documents with the characters of the spans replaced by spaces, every offset unchanged:
        what inverse-cloze questions are indexed against, so their own sentence cannot answer them."""
        by_doc: dict[str, list[Span]] = {}
        for span in spans:
            by_doc.setdefault(span.document, []).append(span)
        if not by_doc:
            return self
        docs = []
        for doc in self.docs:
            chars = list(doc.text)
            for span in by_doc.get(doc.doc_id, []):
                chars[span.start:span.end] = " " * (span.end - span.start)
            docs.append(Document(doc.doc_id, "".join(chars), doc.metadata) if doc.doc_id in by_doc else doc)
        return Documents(docs, self.source)


def load_documents(path: str | os.PathLike[str]) -> Documents:
    """Load documents from a folder (recursively; hidden files and folders skipped), a glob
    pattern or one file: .txt and .md as UTF-8, .pdf through its text layer (pypdf), .jsonl with
    one document per line (`text` or `contents`, `id` or `doc_id`, other fields its metadata).
    Files of other types in a folder or glob are skipped."""
    source = os.fspath(path)
    if GLOB_CHARACTERS.search(source) and not Path(source).exists():
        root, files = _glob(source)
    else:
        given = Path(source)
        _require_path(given)
        root, files = (given, _folder_files(given)) if given.is_dir() else (given.parent, [given])
        if given.is_file() and given.suffix.lower() not in EXTENSIONS:
            raise DataError(f"{given}: unknown document type {given.suffix!r}; documents are "
                            f"{', '.join(EXTENSIONS)} files.")
    if not files:
        raise DataError(f"{source}: no documents found; documents are {', '.join(EXTENSIONS)} files.")
    docs, places = [], []
    for file in files:
        for doc, place in _read_documents(file, root):
            docs.append(doc)
            places.append(place)
    repeated = _repeated([d.doc_id for d in docs], lambda i: places[i], "document id")
    _fail(source, _count(repeated, "duplicate document id"), repeated,
          "Document ids must be unique; rename the .jsonl records' ids.")
    empty = [places[i] for i, d in enumerate(docs) if not d.text.strip()]
    _fail(source, _count(empty, "empty document"), empty, "Remove the empty documents or fill in their text.")
    return Documents(docs, source)


def _glob(pattern: str) -> tuple[Path, list[Path]]:
    """The folder a glob's fixed part names, and the document files it matches."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS.search(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    files = [Path(p) for p in glob.glob(pattern, recursive=True)]
    return root, sorted(p for p in files if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_documents(file: Path, root: Path) -> list[tuple[Document, str]]:
    """The documents of one file, each with its place for messages (the file, or file:line)."""
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_documents(file)
    doc_id = nfc(file.relative_to(root).as_posix())
    if suffix == ".pdf":
        text, pages = _pdf_text(file)
        return [(Document(doc_id, text, {"pages": pages}), str(file))]
    return [(Document(doc_id, _text(file)), str(file))]


def _pdf_text(file: Path) -> tuple[str, list[int]]:
    """A PDF's pages' text layer joined with a blank line, and the offset each page starts at."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(file)
        locked = reader.is_encrypted and not reader.decrypt("")
        texts = [] if locked else [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, OSError) as error:
        raise DataError(f"{file}: cannot be read as a PDF ({error}); save it again as PDF, or convert it to "
                        ".txt.") from None
    if locked:
        raise DataError(f"{file}: the PDF is password protected; save a copy without the password.")
    if not any(t.strip() for t in texts):
        raise DataError(f"{file}: the PDF has no text layer (a scanned document?); OCR it first (e.g. "
                        f"`ocrmypdf {file.name} ocr-{file.name}`) and load the OCR'd file, or its text as .txt.")
    starts = np.cumsum([0] + [len(t) + len(PDF_PAGE_SEPARATOR) for t in texts[:-1]]).tolist()
    return PDF_PAGE_SEPARATOR.join(texts), starts


def _jsonl_documents(file: Path) -> list[tuple[Document, str]]:
    """One document per line: its text, its id, the other fields as metadata (a field named
    `metadata` that holds a mapping spread into its keys); every record that lacks a text or an
    id is named in one error."""
    out, bad = [], []
    for number, line in enumerate(_text(file).split("\n"), 1):
        if not line.strip():
            continue
        record = _json_object(file, number, line)
        text_field = next((f for f in TEXT_FIELDS if f in record), None)
        id_field = next((f for f in ID_FIELDS if f in record), None)
        text, doc_id = record.get(text_field or ""), record.get(id_field or "")
        if not isinstance(text, str) or not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
            bad.append(f"line {number}: fields {sorted(record)}")
            continue
        metadata = {k: v for k, v in record.items() if k not in (text_field, id_field, "metadata")}
        if isinstance(record.get("metadata"), dict):  # a `metadata` mapping (AutoRAG's, LlamaIndex's) spread out
            metadata = {**record["metadata"], **metadata}
        out.append((Document(_id_text(doc_id), text, metadata), f"{file}: line {number}"))
    _fail(str(file), _count(bad, "record") + " without a text and an id", bad,
          'Write each document as {"id": "...", "text": "..."} (or doc_id, contents); other fields are metadata.')
    return out


@dataclass(frozen=True)
class SpanQA:
    """Questions with ground truth as evidence spans in AutoRAG's group shape: every group is
    required, the spans inside one group are alternatives (any one of them satisfies it).
    `masked` are spans to blank out of the documents before chunking (an inverse-cloze
    question's own sentence)."""

    qids: list[str]
    queries: Queries
    evidence: list[list[list[Span]]]
    domains: list[str] | None
    source: str = "<memory>"
    masked: list[Span] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.qids)


def require_evidence(documents: Documents, qa: SpanQA) -> None:
    """Every group of evidence must keep some text once the questions' masked spans are blanked:
    no chunk holds blank evidence, and its question's metrics would all be 0 / 0."""
    texts = {d.doc_id: d.text for d in documents.masked(qa.masked)}
    blank = [qid for qid, groups in zip(qa.qids, qa.evidence)
             if any(all(not texts[s.document][s.start:s.end].strip() for s in group) for group in groups)]
    if blank:
        raise DataError(f"{qa.source}: {len(blank)} question{'s' if len(blank) > 1 else ''} whose evidence is "
                        f"blank once the masked spans are blanked (a masked sentence covers all of it): "
                        f"{', '.join(blank[:10])}{' ...' if len(blank) > 10 else ''}; remove them, or mask less "
                        "than the whole evidence")


SPAN_QA_COLUMNS = ["qid", "query", "evidence"]
SPAN_ADVICE = ('Write evidence as a list of spans {"document": ..., "start": ..., "end": ...} (character offsets '
               "into the document's text, end exclusive), each its own required group; a list of spans inside it "
               "is one group of alternatives.")


class _NotSpans(ValueError):
    """An evidence or masked value of no shape load_span_qa reads."""


def load_span_qa(path: str | os.PathLike[str], documents: Documents, domain_column: str | None = None,
                 domain_pattern: str | None = None) -> SpanQA:
    """Load questions labelled by evidence spans (qa.jsonl: qid, query, evidence, optional masked)
    and check every span against the documents, naming every bad one with its line at once.

    The domain of a question comes from `domain_column` or `domain_pattern`, as in `load_qa`."""
    table = _read_table(Path(path))
    _require_columns(table, SPAN_QA_COLUMNS, "A span QA file needs the fields")
    qids = _ids(table, "qid")
    domains = _domains(table, qids, domain_column, domain_pattern)
    queries = _column(table, "query")
    source = str(table.path)
    if not qids:
        raise DataError(f"{source}: no questions; a span QA file needs at least one record with qid, query and "
                        "evidence.")
    repeated = _repeated(qids, table.where, "qid")
    _fail(source, _count(repeated, "duplicate qid"), repeated, "Question ids must be unique.")
    empty = [f"{table.where(i)}: qid {q!r}" for i, q in enumerate(qids) if not queries[i].strip()]
    _fail(source, _count(empty, "empty query", "empty queries"), empty, "Remove the question or write its text.")
    checker = _SpanChecker(documents)
    evidence = [checker.groups(value, f"{table.where(i)}: qid {qids[i]!r}: evidence", required=True)
                for i, value in enumerate(table.frame["evidence"])]
    masked: list[Span] = []
    if "masked" in table.frame.columns:
        for i, value in enumerate(table.frame["masked"]):
            groups = checker.groups(value, f"{table.where(i)}: qid {qids[i]!r}: masked", required=False)
            masked += [span for group in groups for span in group]
    _fail(source, _count(checker.bad, "bad evidence span"), checker.bad, SPAN_ADVICE)
    return SpanQA(qids, Queries(queries), evidence, domains, source, masked)


class _SpanChecker:
    """Reads evidence values into span groups, collecting every problem (with its place) in `bad`."""

    def __init__(self, documents: Documents) -> None:
        self.texts = {d.doc_id: d.text for d in documents}
        self.bad: list[str] = []

    def groups(self, value: Any, place: str, required: bool) -> list[list[Span]]:
        value = _plain(value)
        if not required and _absent(value):
            return []
        if not isinstance(value, list) or (required and not value):
            self.bad.append(f"{place}: {value!r} is not a non-empty list of spans")
            return []
        groups = []
        for j, item in enumerate(value):
            alternatives = item if isinstance(item, list) else [item]
            if not alternatives:
                self.bad.append(f"{place} {j}: an empty group of alternatives")
            spans = [self._span(alt, f"{place} {j}") for alt in alternatives]
            groups.append([s for s in spans if s is not None])
        return groups

    def _span(self, item: Any, place: str) -> Span | None:
        try:
            span = _as_span(item)
        except _NotSpans as error:
            self.bad.append(f"{place}: {error}")
            return None
        text = self.texts.get(span.document)
        if text is None:
            close = difflib.get_close_matches(span.document, list(self.texts), n=1, cutoff=0.6)
            self.bad.append(f"{place}: no document {span.document!r}"
                            + (f"; did you mean {close[0]!r}?" if close else " among the documents"))
        elif not 0 <= span.start < span.end <= len(text):
            self.bad.append(f"{place}: {span.start}-{span.end} is not a non-empty range inside "
                            f"{span.document!r} (0-{len(text)})")
        elif not text[span.start:span.end].strip():
            self.bad.append(f"{place}: {span.start}-{span.end} of {span.document!r} holds only whitespace")
        else:
            return span
        return None


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _as_span(item: Any) -> Span:
    if not isinstance(item, dict) or not {"document", "start", "end"} <= item.keys():
        raise _NotSpans(f"{item!r} is not a span with document, start and end")
    start, end = item["start"], item["end"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        raise _NotSpans(f"start {start!r} and end {end!r} must be integers")
    if not isinstance(item["document"], (str, int)):
        raise _NotSpans(f"document {item['document']!r} is not a document id")
    return Span(_id_text(item["document"]), start, end)


def locate_passages(corpus: Corpus, documents: Documents,
                    doc_ids: Collection[str] | None = None) -> dict[str, list[Span]]:
    """Every occurrence of each passage's text in the documents (of the passages `doc_ids` names,
    or all): exact occurrences, and occurrences that differ only in whitespace or Unicode
    normalization (an OCR'd page, an NFD document), mapped back to the document's own offsets.
    A passage found nowhere is a DataError naming it."""
    wanted = corpus.doc_ids if doc_ids is None else sorted(set(doc_ids))
    index = corpus.index_of()
    exact, folded = _Haystack(documents, fold=False), _Haystack(documents, fold=True)
    located, missing = {}, []
    for doc_id in wanted:
        text = corpus.contents[index[doc_id]]
        spans = exact.find(text)
        spans += [s for s in folded.find(_fold(text)[0]) if not any(_inside(s, e) for e in spans)]
        if spans:
            located[doc_id] = sorted(set(spans))
        else:
            missing.append(f"doc_id {doc_id!r}: {text[:60]!r}")
    _fail(corpus.source, _count(missing, "passage") + f" not found in the documents {documents.source}", missing,
          "Give the documents these passages were cut from, or leave out the questions that cite them.")
    return located


def spans_from_ids(qa: QASet, corpus: Corpus, documents: Documents) -> SpanQA:
    """A QA set labelled by passage ids as evidence spans in the documents: a group's alternatives
    are every occurrence of every passage it names."""
    cited = {corpus.doc_ids[row] for groups in qa.groups for group in groups for row in group}
    located = locate_passages(corpus, documents, cited)
    evidence = [[sorted({span for row in group for span in located[corpus.doc_ids[row]]}) for group in groups]
                for groups in qa.groups]
    return SpanQA(qa.qids, qa.queries, evidence, qa.domains, qa.source)


def _inside(inner: Span, outer: Span) -> bool:
    return inner.document == outer.document and outer.start <= inner.start and inner.end <= outer.end


_SPACES = np.array([c for c in range(0x3000 + 1) if chr(c).isspace()], dtype=np.uint32)
"""The code points str.isspace counts as whitespace (all of them lie below U+3001)."""
_JAMO_VOWELS_AND_FINALS = re.compile("[\u1160-\u11ff\ud7b0-\ud7ff]")


def _fold(text: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The text without whitespace, in NFC, and for each of its characters the offsets in `text`
    where the characters it came from start and end."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    kept = np.flatnonzero(~np.isin(points, _SPACES))
    folded = points[kept].tobytes().decode("utf-32-le")
    if unicodedata.is_normalized("NFC", folded):
        return folded, kept, kept + 1
    return _composed(folded, kept)


def _composed(folded: str, offsets: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """NFC of `folded` one cluster at a time (a starter and the marks or Hangul jamo after it), so
    that each composed character keeps the offsets of the characters it was composed from."""
    parts: list[str] = []
    starts, ends = [], []
    cluster = 0
    for i in range(1, len(folded) + 1):
        if i < len(folded) and (unicodedata.combining(folded[i]) or _JAMO_VOWELS_AND_FINALS.match(folded[i])):
            continue
        composed = unicodedata.normalize("NFC", folded[cluster:i])
        parts.append(composed)
        starts += [offsets[cluster]] * len(composed)
        ends += [offsets[i - 1] + 1] * len(composed)
        cluster = i
    return "".join(parts), np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


class _Haystack:
    """All documents' texts (or their folded forms) in one string, searched with str.find; each
    match inside one document is mapped back to that document's offsets."""

    SEPARATOR = "\x00"

    def __init__(self, documents: Documents, fold: bool) -> None:
        texts, starts, ends = [], [], []
        for doc in documents:
            text, start, end = _fold(doc.text) if fold else (doc.text, None, None)
            texts.append(text)
            starts.append(np.arange(len(text)) if start is None else start)
            ends.append(np.arange(1, len(text) + 1) if end is None else end)
        self.ids = [d.doc_id for d in documents]
        self.text = self.SEPARATOR.join(texts)
        self.first = np.cumsum([0] + [len(t) + 1 for t in texts])
        self.starts, self.ends = np.concatenate(starts), np.concatenate(ends)

    def find(self, needle: str) -> list[Span]:
        spans = []
        at = self.text.find(needle)
        while at >= 0:
            doc = int(np.searchsorted(self.first, at, side="right")) - 1
            last = at + len(needle) - 1
            if last < self.first[doc + 1] - 1:
                spans.append(Span(self.ids[doc], int(self.starts[at - doc]), int(self.ends[last - doc])))
            at = self.text.find(needle, at + 1)
        return spans
