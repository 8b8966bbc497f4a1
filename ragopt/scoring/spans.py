"""Relevance and metrics by evidence span, comparable across chunkings (numpy only).

A chunk is relevant to a question when it covers at least `min_coverage` of one of its evidence
spans, or the span covers that share of the chunk: o = |chunk ∩ span| > 0 and
(o >= min_coverage * |span| or o >= min_coverage * |chunk|). Each relevant chunk is a required
group of its own, so ragopt.scoring.metrics gives trec_eval's numbers on these binary qrels.

Because bigger chunks cover more by themselves, the span metrics score the retrieved characters
instead (Chroma's chunking evaluation): R = the characters of the top k chunks (overlapping chunks
count once), E = the evidence (in each group, the alternative covering most of R), and
    evidence_recall = |E∩R| / |E|,  evidence_precision = |E∩R| / |R| (0 when R is empty),
    evidence_iou = |E∩R| / |E∪R|;
at a token budget, R is the ranked chunks in order cut after `budget` tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ragopt.data.documents import ChunkSpans

SPAN_METRICS = ("evidence_recall", "evidence_precision", "evidence_iou")
WORD_TOKEN = re.compile(r"\w+|[^\w\s]")
"""The default token counter: a run of word characters, or one other non-space character."""
SLACK = 1e-9
"""Tolerance of the coverage comparison, so that o = min_coverage * |s| counts whatever the float rounding."""


class SpanLike(Protocol):
    """An evidence span: ragopt.data.documents.Span or anything with these attributes."""

    document: str
    start: int
    end: int


Evidence = Sequence[Sequence[Sequence[SpanLike]]]
"""Per question, its required groups, each a list of alternative spans."""


@dataclass(frozen=True)
class TokenEnds:
    """Per chunk, the character offsets (from the chunk's start) where each of its tokens ends,
    packed: chunk r's are ends[offsets[r]:offsets[r + 1]]."""

    ends: np.ndarray
    offsets: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """The number of tokens of each chunk."""
        return np.diff(self.offsets)


def token_ends(texts: Sequence[str], tokenizer: Any = None) -> TokenEnds:
    """The token ends of each chunk text, as the budget metrics count tokens: by WORD_TOKEN, or
    by a Hugging Face fast tokenizer (its offset mapping, special tokens left out). Give the texts
    as they stand in the documents (document.text[start:end]), which the offsets refer to."""
    if tokenizer is None:
        per_text = [[m.end() for m in WORD_TOKEN.finditer(text)] for text in texts]
    else:
        mapping = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        per_text = [np.maximum.accumulate([end for _, end in pairs]).tolist() if pairs else [] for pairs in mapping]
    offsets = np.cumsum([0] + [len(ends) for ends in per_text]).astype(np.int64)
    ends = np.fromiter((e for ends in per_text for e in ends), dtype=np.int64, count=int(offsets[-1]))
    return TokenEnds(ends, offsets)


def span_qrels(evidence: Evidence, chunks: ChunkSpans, doc_index: Mapping[str, int],
               min_coverage: float = 0.5) -> list[list[list[int]]]:
    """Each question's relevant chunk rows by the coverage rule, each its own group ([[row], ...],
    rows ascending): the ground truth ragopt.scoring.metrics.relevance takes. A question none of whose
    group of evidence no chunk covers enough (a span split across chunks at a gap they leave out)
    makes the chunks that overlap it most relevant, so that every group has a relevant chunk
    wherever its evidence is indexed."""
    flat = _Flat(evidence, doc_index)
    width = max(int(chunks.end.max(initial=0)), int(flat.end.max(initial=0))) + 1
    key = chunks.document.astype(np.int64) * width + chunks.start
    order = np.argsort(key, kind="stable")
    c_lo, c_hi = key[order], key[order] - chunks.start[order] + chunks.end[order]
    longest = int((chunks.end - chunks.start).max(initial=0))
    relevant: list[set[int]] = [set() for _ in evidence]
    groups = int(flat.group.max(initial=-1)) + 1
    covered = np.zeros(groups, dtype=bool)
    most: list[tuple[int, set[int]]] = [(0, set()) for _ in range(groups)]
    for q, g, lo, hi in zip(flat.question.tolist(), flat.group.tolist(), (flat.doc * width + flat.start).tolist(),
                            (flat.doc * width + flat.end).tolist()):
        near = slice(np.searchsorted(c_lo, lo - longest), np.searchsorted(c_lo, hi))
        size = c_hi[near] - c_lo[near]
        overlap = np.minimum(c_hi[near], hi) - np.maximum(c_lo[near], lo)
        hit = (overlap > 0) & ((overlap >= min_coverage * (hi - lo) - SLACK) | (overlap >= min_coverage * size - SLACK))
        relevant[q].update(order[near][hit].tolist())
        covered[g] |= bool(hit.any())
        if len(overlap) and (top := int(overlap.max())) >= most[g][0] and top > 0:
            rows = set(order[near][overlap == top].tolist())
            most[g] = (top, rows | most[g][1] if top == most[g][0] else rows)
    for q, g in zip(flat.question.tolist(), flat.group.tolist()):
        if not covered[g]:
            relevant[q].update(most[g][1])
    return [[[row] for row in sorted(rows)] for rows in relevant]


def span_metrics(ranked: np.ndarray, evidence: Evidence, chunks: ChunkSpans, doc_index: Mapping[str, int],
                 ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Evidence recall, precision and IoU (per question) of the characters of the top k chunks
    of a ranking of corpus rows (-1 = nothing), keyed 'evidence_recall@k'."""
    depth = ranked.shape[1]
    if max(ks) > depth:
        raise ValueError(f"ranking depth {depth} is smaller than k={max(ks)}")
    line = _Line(ranked, evidence, chunks, doc_index)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        rows = ranked[:, :k]
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        scores = line.scores(safe[valid], np.broadcast_to(line.questions[:, None], rows.shape)[valid],
                             chunks.end[safe[valid]])
        out.update({f"{name}@{k}": value for name, value in zip(SPAN_METRICS, scores)})
    return out


def budget_metrics(ranked: np.ndarray, evidence: Evidence, chunks: ChunkSpans, doc_index: Mapping[str, int],
                   ends: TokenEnds, budgets: Sequence[int]) -> dict[str, np.ndarray]:
    """The span metrics of a context of at most `budget` tokens: the ranked chunks in order, the
    one that crosses the budget cut after its last token that fits; keyed 'evidence_recall@512t'."""
    line = _Line(ranked, evidence, chunks, doc_index)
    valid = ranked >= 0
    safe = np.where(valid, ranked, 0)
    counts = np.where(valid, ends.counts[safe], 0)
    before = np.cumsum(counts, axis=1) - counts
    out: dict[str, np.ndarray] = {}
    for budget in budgets:
        kept = np.clip(budget - before, 0, counts)
        use = kept > 0
        rows, kept_here = safe[use], kept[use]
        last = ends.ends[np.minimum(ends.offsets[rows] + kept_here - 1, len(ends.ends) - 1)]
        cut = np.where(kept_here == counts[use], chunks.end[rows], chunks.start[rows] + last)
        scores = line.scores(rows, np.broadcast_to(line.questions[:, None], ranked.shape)[use], cut)
        out.update({f"{name}@{budget}t": value for name, value in zip(SPAN_METRICS, scores)})
    return out


class _Flat:
    """The evidence as flat arrays, one entry per alternative span, the alternatives of a group
    adjacent; `group` numbers the non-empty groups of all questions 0, 1, 2, ..."""

    def __init__(self, evidence: Evidence, doc_index: Mapping[str, int]) -> None:
        entries: list[tuple[int, int, int, int, int]] = []
        for q, groups in enumerate(evidence):
            for group in groups:
                g = entries[-1][1] + 1 if entries else 0
                entries += [(q, g, doc_index[s.document], s.start, s.end) for s in group]
        columns = np.array(entries, dtype=np.int64).reshape(-1, 5).T
        self.question, self.group, self.doc, self.start, self.end = columns
        self.group_first = np.flatnonzero(np.r_[True, self.group[1:] != self.group[:-1]])[:len(self.group)]


class _Line:
    """Every (question, document) pair on one number line of its own, so that the characters of
    all questions are measured with one sort: position = (question * documents + document) * width + offset."""

    def __init__(self, ranked: np.ndarray, evidence: Evidence, chunks: ChunkSpans,
                 doc_index: Mapping[str, int]) -> None:
        if ranked.shape[0] != len(evidence):
            raise ValueError(f"the ranking has {ranked.shape[0]} rows for {len(evidence)} questions")
        self.n_questions = len(evidence)
        self.questions = np.arange(self.n_questions, dtype=np.int64)
        self.chunks = chunks
        flat = _Flat(evidence, doc_index)
        self.n_docs = max(len(doc_index), int(chunks.document.max(initial=-1)) + 1, int(flat.doc.max(initial=-1)) + 1)
        self.width = max(int(chunks.end.max(initial=0)), int(flat.end.max(initial=0))) + 1
        base = (flat.question * self.n_docs + flat.doc) * self.width
        self.e_lo, self.e_hi = base + flat.start, base + flat.end
        self.group, self.group_first = flat.group, flat.group_first

    def scores(self, rows: np.ndarray, questions: np.ndarray, cut_end: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recall, precision and IoU per question of the retrieved pieces: chunk `rows` for
        `questions`, each from its chunk's start to `cut_end`."""
        base = (questions * self.n_docs + self.chunks.document[rows]) * self.width
        r_lo, r_hi = base + self.chunks.start[rows], base + cut_end
        chosen = self._chosen(r_lo, r_hi)
        e_lo, e_hi = self.e_lo[chosen], self.e_hi[chosen]
        points = np.concatenate([r_lo, r_hi, e_lo, e_hi])
        in_r = np.concatenate([np.ones_like(r_lo), -np.ones_like(r_hi), np.zeros_like(e_lo), np.zeros_like(e_hi)])
        in_e = np.concatenate([np.zeros_like(r_lo), np.zeros_like(r_hi), np.ones_like(e_lo), -np.ones_like(e_hi)])
        order = np.argsort(points, kind="stable")
        points, covered_r, covered_e = points[order], np.cumsum(in_r[order]) > 0, np.cumsum(in_e[order]) > 0
        length = np.diff(points)
        question = points[:-1] // (self.n_docs * self.width)

        def total(mask: np.ndarray) -> np.ndarray:
            return np.bincount(question, weights=length * mask[:-1], minlength=self.n_questions)

        both, r_len, e_len = total(covered_r & covered_e), total(covered_r), total(covered_e)
        union = total(covered_r | covered_e)
        recall = np.divide(both, e_len, out=np.zeros_like(both), where=e_len > 0)
        precision = np.divide(both, r_len, out=np.zeros_like(both), where=r_len > 0)
        iou = np.divide(both, union, out=np.zeros_like(both), where=union > 0)
        return recall, precision, iou

    def _chosen(self, r_lo: np.ndarray, r_hi: np.ndarray) -> np.ndarray:
        """In each group, the first alternative covering most of the retrieved characters."""
        points = np.concatenate([r_lo, r_hi])
        order = np.argsort(points, kind="stable")
        points = points[order]
        active = np.cumsum(np.concatenate([np.ones_like(r_lo), -np.ones_like(r_hi)])[order]) > 0
        covered_before = np.concatenate([[0], np.cumsum(np.diff(points) * active[:-1])])

        def covered_until(x: np.ndarray) -> np.ndarray:
            i = np.searchsorted(points, x, side="right") - 1
            at = np.maximum(i, 0)
            return np.where(i >= 0, covered_before[at] + (x - points[at]) * active[at], 0) if len(points) else \
                np.zeros_like(x)

        overlap = covered_until(self.e_hi) - covered_until(self.e_lo)
        if not len(overlap):
            return np.zeros(0, dtype=np.int64)
        best = np.maximum.reduceat(overlap, self.group_first)
        candidates = np.flatnonzero(overlap == best[self.group])
        _, first = np.unique(self.group[candidates], return_index=True)
        return candidates[first]
