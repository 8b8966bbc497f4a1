"""Documents cut into sentences and into the passages questions are asked about, as character
offsets into the document text exactly as loaded (PDF text layers: lines wrapped mid-sentence,
bullets, headings and table cells on lines of their own)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_PASSAGE = 300
MAX_PASSAGE = 800
SHORTEST_PASSAGE = 50
"""A window shorter than this is asked nothing about (a page number, a footer, a lone heading)."""
HEADING = 25
"""A line this short that starts a sentence and has no sentence ending is a heading or a cell."""

_LIST_LETTER = "[가나다라마바사아자차카타파하]"
"""The Hangul letters that number list items (가. 나. 다. or 가) 나) 다))."""
_END = r"(?<=[^\d\s][.?!])['\"’”)\]]*"
_NOMINAL_END = "(?:(?<=[함임됨남짐옴줌봄])|(?<=[있없았었였했겠같받높많좋적낮작]음))"
"""Korean report style ends sentences without a period: "...필요함", "...예정임", "...있음"."""
_BREAK = re.compile(
    r"\n[ \t]*\n\s*"  # a blank line: a paragraph or page ends
    rf"|{_END}\s+"  # a sentence ends in punctuation after a word (not the dot of 2017. 12. or of item 1.)
    rf"|{_NOMINAL_END}[ \t]*\n\s*"  # a report-style ending at the end of a line ("...함", "...있음")
    rf"|\s*\n\s*(?=[·•○●□■◦▪※\-–*>]|\d{{1,2}}[.)]\s|{_LIST_LETTER}[.)]\s|\(\d{{1,2}}\)|<)")  # a bullet starts a line
_BULLET = re.compile(rf"(?:[·•○●□■◦▪※\-–*>]+|(?:\d{{1,2}}\.)*\d{{1,2}}[.)]|{_LIST_LETTER}[.)]|\(\d{{1,2}}\))\s*")
_ENDS_SENTENCE = re.compile(rf"(?:{_END}|다|{_NOMINAL_END})$")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Passage:
    """A window of a document: `text` is `document text[start:end]`."""

    document: str
    start: int
    end: int
    text: str
    domain: str | None

    @property
    def key(self) -> str:
        """The passage's stable name in resume keys: document and span."""
        return f"{self.document}:{self.start}-{self.end}"


def sentences(text: str) -> list[tuple[int, int]]:
    """The sentence-like units of `text` as (start, end) offsets, none empty, none starting or
    ending on whitespace: cut after sentence punctuation, at Korean line-final endings, at blank
    lines, before bullets and numbered lines, and after a short heading line."""
    units: list[tuple[int, int]] = []
    position = 0
    for found in _BREAK.finditer(text):
        units.extend(_headings_off(text, position, found.start()))
        position = found.end()
    units.extend(_headings_off(text, position, len(text)))
    return units


def _headings_off(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The unit text[start:end] (stripped), its first lines split off while they fill a line of
    their own, are short and end no sentence: headings and table cells are not part of the
    sentence below them (a sentence that starts mid-line may well have a short first line)."""
    units = []
    while True:
        start, end = _stripped(text, start, end)
        if start >= end:
            return units
        line_end = text.find("\n", start, end)
        if line_end < 0 or text[text.rfind("\n", 0, start) + 1:start].strip():
            break
        line = text[start:line_end].strip()
        if len(line) >= HEADING or _ENDS_SENTENCE.search(line):
            break
        units.append(_stripped(text, start, line_end))
        start = line_end + 1
    units.append((start, end))
    return units


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def query_sentence(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The unit text[start:end] without its bullet, when it reads as a sentence to ask with: 15
    to 200 characters, a sentence ending, mostly Hangul and few digits; else None (a heading, a
    table row, a reference)."""
    bullet = _BULLET.match(text, start, end)
    if bullet:
        start = bullet.end()
    sentence = text[start:end]
    visible = [c for c in sentence if not c.isspace()]
    if not 15 <= len(sentence) <= 200 or not _ENDS_SENTENCE.search(sentence):
        return None
    hangul = sum("가" <= c <= "힣" for c in visible)
    digits = sum(c.isdigit() for c in visible)
    if hangul < 0.4 * len(visible) or digits > 0.3 * len(visible):
        return None
    return start, end


def cut_passages(text: str, low: int = MIN_PASSAGE, high: int = MAX_PASSAGE) -> list[tuple[int, int]]:
    """Paragraph-ish windows of `text` of about `low` to `high` characters: whole sentences
    packed in order, a window closed at a blank line once it is `low` long or before it would
    pass `high`; a sentence longer than `high` is cut at whitespace. Windows do not overlap."""
    paragraph_ends = {m.start() for m in _PARAGRAPH.finditer(text)}
    windows: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for start, end in (piece for unit in sentences(text) for piece in _at_most(text, *unit, high)):
        if current is not None and end - current[0] > high:
            windows.append(current)
            current = None
        current = (start, end) if current is None else (current[0], end)
        if current[1] - current[0] >= low and _ends_paragraph(text, current[1], paragraph_ends):
            windows.append(current)
            current = None
    if current is not None:
        windows.append(current)
    return [w for w in windows if w[1] - w[0] >= SHORTEST_PASSAGE]


def _ends_paragraph(text: str, end: int, paragraph_ends: set[int]) -> bool:
    """Whether a blank line (or the end of the text) follows text[:end]."""
    while end < len(text) and text[end] in " \t":
        end += 1
    return end == len(text) or end in paragraph_ends


def _at_most(text: str, start: int, end: int, high: int) -> list[tuple[int, int]]:
    """text[start:end] in pieces of at most `high` characters, cut at the last whitespace that fits."""
    pieces = []
    while end - start > high:
        cut = max(text.rfind(" ", start + 1, start + high), text.rfind("\n", start + 1, start + high))
        cut = cut if cut > start else start + high
        pieces.append(_stripped(text, start, cut))
        start = _stripped(text, cut, end)[0]
    pieces.append((start, end))
    return [p for p in pieces if p[0] < p[1]]
