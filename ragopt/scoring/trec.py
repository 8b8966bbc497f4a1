"""TREC runs and qrels, for re-scoring any trial with trec_eval.

TREC files separate fields by whitespace, and doc ids such as autorag-ko's contain spaces, so ids
are written percent-encoded: '%', whitespace and control characters become %XX (UTF-8 bytes).
urllib.parse.unquote gives the original id back. The run's score column is depth + 1 - rank,
so trec_eval, which sorts by score, keeps ragopt's order exactly (ties included).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ragopt.files import write_text

_UNSAFE = re.compile(r"[%\s\x00-\x1f\x7f]")


def encode_id(text: str) -> str:
    """A doc or query id as one whitespace-free TREC field."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


class TrecWriter:
    """Writes TREC runs and qrels over one set of questions and corpus rows, ids encoded once."""

    def __init__(self, qids: Sequence[str], doc_ids: Sequence[str] | Mapping[int, str]) -> None:
        """`doc_ids`: every corpus row's id, or those of the rows the runs hold, by row."""
        self.qids = [encode_id(q) for q in qids]
        self.doc_ids: Sequence[str] | Mapping[int, str] = (
            {row: encode_id(d) for row, d in doc_ids.items()} if isinstance(doc_ids, Mapping)
            else [encode_id(d) for d in doc_ids])

    def run(self, path: Path, ids: np.ndarray, tag: str) -> None:
        """One line 'qid Q0 docid rank score tag' per retrieved passage of a ranking (corpus
        rows, questions x depth, -1 where nothing more was retrieved)."""
        depth, doc_ids = ids.shape[1], self.doc_ids
        lines = [f"{qid} Q0 {doc_ids[doc]} {rank + 1} {depth - rank} {tag}\n"
                 for qid, row in zip(self.qids, ids.tolist()) for rank, doc in enumerate(row) if doc >= 0]
        write_text(path, "".join(lines))

    def qrels(self, path: Path, groups: Sequence[Sequence[Sequence[int]]]) -> None:
        """Every ground-truth row of each question's groups as relevance 1. With one id per group
        (the usual case) trec_eval reproduces ragopt's metrics; alternatives inside a group cannot
        be expressed in qrels."""
        lines = [f"{qid} 0 {self.doc_ids[doc]} 1\n"
                 for qid, question in zip(self.qids, groups) for group in question for doc in group]
        write_text(path, "".join(lines))
