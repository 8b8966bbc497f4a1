"""The generated QA file (one JSON record a line, appended and flushed one at a time) and the
rejected items beside it, read back so that a rerun with the same output resumes: the items
(passages and kind, by their `source` key) found in either are not asked again."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ragopt.errors import DataError


def rejected_path(path: Path) -> Path:
    """Where the rejected items of `path` go: qa.jsonl -> qa.rejected.jsonl."""
    return path.with_name(f"{path.stem}.rejected{path.suffix or '.jsonl'}")


class QAFile:
    """The output of one generation, opened for appending: `records` already written, `done` the
    source keys of everything written or rejected before, `queries` the kept questions."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rejects = rejected_path(self.path)
        self.records = _read(self.path)
        self.done = {r["source"] for r in self.records} | {r["source"] for r in _read(self.rejects)}
        self.queries = [r["query"] for r in self.records]
        self._qids = {r["qid"] for r in self.records}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("a", encoding="utf-8")
        self._rejected = self.rejects.open("a", encoding="utf-8")

    def __enter__(self) -> "QAFile":
        return self

    def __exit__(self, *_: Any) -> None:
        self._out.close()
        self._rejected.close()

    @property
    def count(self) -> int:
        return len(self.records)

    def add(self, record: dict[str, Any], domain: str | None) -> str:
        """Write a question, given the next free qid: g<n>, with _<domain> when it has one (so a
        domain_pattern of r"_([^_]+)$" reads it back, as in AutoRAG's qids)."""
        n = len(self.records)
        while (qid := f"g{n}" + (f"_{domain}" if domain else "")) in self._qids:
            n += 1
        record = {"qid": qid, **record}
        _append(self._out, record)
        self.records.append(record)
        self.queries.append(record["query"])
        self._qids.add(qid)
        self.done.add(record["source"])
        return qid

    def reject(self, entry: dict[str, Any]) -> None:
        """Write a rejected item (its source key, the reason and what was generated)."""
        _append(self._rejected, entry)
        self.done.add(entry["source"])


def _append(out: Any, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def _read(path: Path) -> list[dict[str, Any]]:
    """The records of a file written before, or none. A last line cut short (the run was killed
    while writing it) is removed from the file with a warning; any other line that is not a
    record with a source key stops the run: the file is not one this command wrote."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, without its newline: cut short
                _cut(path, text, line)
                return records
            record = None
        if not isinstance(record, dict) or "source" not in record:
            raise DataError(f"{path}: line {number} is not a record generate-qa wrote (a JSON object with a source "
                            "key), so the file cannot be resumed; give another output file, or move this one away.")
        records.append(record)
    if lines[-1].strip():  # a whole record without its newline: the next one goes on a line of its own
        with path.open("a", encoding="utf-8") as out:
            out.write("\n")
    return records


def _cut(path: Path, text: str, line: str) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(text[:len(text) - len(line)])
    warnings.warn(f"{path}: its last line was cut short (the run was stopped while writing it) and is removed; that "
                  "item is generated again.", UserWarning, stacklevel=3)
