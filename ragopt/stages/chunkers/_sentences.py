"""Korean sentences (kiwipiepy's split_into_sents) as pieces that partition a text, and the
greedy packing of consecutive pieces up to a size, shared by the sentence and semantic chunkers.
A piece bigger than the size alone is cut first by semchunk (paragraph, line, sentence, word,
then character boundaries)."""

from __future__ import annotations

from functools import lru_cache

import semchunk

from ragopt.stages.chunkers._base import Span
from ragopt.stages.chunkers._units import Units

MEMO_TEXTS = 1024
"""Texts whose sentence boundaries a process keeps: chunkers of several sizes split each once."""

_starts: dict[str, list[int]] = {}


def sentence_pieces(texts: list[str]) -> list[list[Span]]:
    """Each text cut where each of its sentences starts: every piece holds one sentence and the
    whitespace after it (whitespace-only pieces left out), so the pieces cover the text's
    non-whitespace characters whatever kiwipiepy leaves between its sentences."""
    starts = {t: _starts[t] for t in texts if t in _starts}
    todo = [t for t in dict.fromkeys(texts) if t not in starts and t and not t.isspace()]
    if todo:
        from ragopt.stages.retrievers.tokenizers import _kiwi

        for text, sentences in zip(todo, _kiwi().split_into_sents(todo, return_tokens=False)):
            starts[text] = sorted({0} | {min(max(s.start, 0), len(text)) for s in sentences})
            while len(_starts) >= MEMO_TEXTS:
                del _starts[next(iter(_starts))]
            _starts[text] = starts[text]
    pieces = []
    for text in texts:
        cuts = starts.get(text, [])
        bounds = zip(cuts, cuts[1:] + [len(text)])
        pieces.append([(s, e) for s, e in bounds if e > s and not text[s:e].isspace()])
    return pieces


def fit(text: str, pieces: list[Span], size: int, units: Units) -> tuple[list[Span], list[int]]:
    """The pieces with those bigger than `size` cut by semchunk, and the size of each."""
    counts = units.counts([text[s:e] for s, e in pieces])
    if all(n <= size for n in counts):
        return pieces, counts
    count = lru_cache(maxsize=None)(units.count)
    fitted: list[Span] = []
    for (start, end), n in zip(pieces, counts):
        if n <= size:
            fitted.append((start, end))
            continue
        _, offsets = semchunk.chunk(text[start:end], size, count, offsets=True, memoize=False)
        fitted += [(start + s, start + e) for s, e in offsets]
    return fitted, units.counts([text[s:e] for s, e in fitted])


def pack(pieces: list[Span], counts: list[int], size: int, overlap: int = 0) -> list[Span]:
    """Consecutive pieces packed greedily into spans whose pieces' sizes add up to at most
    `size` (a bigger piece alone is a span of its own). Each span after the first repeats up to
    `overlap` pieces of the one before, as many as fit beside the first piece it adds."""
    spans = []
    first = 0
    while first < len(pieces):
        last, total = first, counts[first]
        while last + 1 < len(pieces) and total + counts[last + 1] <= size:
            last += 1
            total += counts[last]
        spans.append((pieces[first][0], pieces[last][1]))
        if last + 1 == len(pieces):
            break
        first = max(first + 1, last + 1 - overlap)
        while first <= last and sum(counts[first:last + 2]) > size:
            first += 1
    return spans
