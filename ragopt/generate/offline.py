"""Questions with no model, by inverse cloze: a sentence of a passage is the question and the
passage its evidence; the sentence itself is masked (blanked out of the indexed documents), so
retrieval has to find the passage from its context, not by matching the sentence word for word."""

from __future__ import annotations

import random

from ragopt.generate.passages import query_sentence, sentences
from ragopt.generate.runner import Outcome, Task

GENERATOR = {"type": "offline", "method": "inverse cloze"}


def cloze(task: Task, seed: int) -> Outcome:
    """The task's question: one of its passage's sentences that reads as one (see
    passages.query_sentence), chosen by a generator seeded with the passage; whitespace inside
    it (PDF line breaks) collapsed to single spaces. No such sentence, or none that leaves other
    text of the passage once masked (nothing would be left to find the passage by): rejected as
    no_sentence."""
    passage = task.passages[0]
    found = [query_sentence(passage.text, *unit) for unit in sentences(passage.text)]
    text = passage.text
    candidates = [s for s in found if s is not None and (text[:s[0]] + text[s[1]:]).strip()]
    if not candidates:
        return Outcome(task, reason="no_sentence")
    start, end = random.Random(f"{seed}:{passage.key}").choice(candidates)
    query = " ".join(passage.text[start:end].split())
    return Outcome(task, query, masked=((passage.document, passage.start + start, passage.start + end),))
