"""TREC runs and qrels, for re-scoring any trial with trec_eval.

TREC files separate fields by whitespace, and doc ids such as autorag-ko's contain spaces, so ids
are written percent-encoded: '%', whitespace and control characters become %XX (UTF-8 bytes).
urllib.parse.unquote gives the original id back. The run's score column is depth + 1 - rank,
so trec_eval, which sorts by score, keeps ragopt's order exactly (ties included).
"""

from __future__ import annotations

import re
from pathlib import Path

from ragopt.data import Corpus, QASet
from ragopt.files import write_text
from ragopt.ranking import Ranking

_UNSAFE = re.compile(r"[%\s\x00-\x1f\x7f]")


def encode_id(text: str) -> str:
    """A doc or query id as one whitespace-free TREC field."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


class TrecWriter:
    """Writes runs and qrels of one QA set and corpus in TREC format, ids encoded once."""

    def __init__(self, qa: QASet, corpus: Corpus) -> None:
        self.qa = qa
        self.qids = [encode_id(q) for q in qa.qids]
        self.doc_ids = [encode_id(d) for d in corpus.doc_ids]

    def run(self, path: Path, ranking: Ranking, tag: str) -> None:
        """One line 'qid Q0 docid rank score tag' per retrieved passage."""
        depth, doc_ids = ranking.depth, self.doc_ids
        lines = [f"{qid} Q0 {doc_ids[doc]} {rank + 1} {depth - rank} {tag}\n"
                 for qid, row in zip(self.qids, ranking.ids.tolist()) for rank, doc in enumerate(row) if doc >= 0]
        write_text(path, "".join(lines))

    def qrels(self, path: Path) -> None:
        """Every ground-truth id as relevance 1. With one id per group (the usual case) trec_eval
        reproduces ragopt's metrics; alternatives inside a group cannot be expressed in qrels."""
        lines = [f"{qid} 0 {self.doc_ids[doc]} 1\n"
                 for qid, groups in zip(self.qids, self.qa.groups) for group in groups for doc in group]
        write_text(path, "".join(lines))
