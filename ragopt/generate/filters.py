"""Why a generated question is not kept: an answer that says the passage does not tell, a
question that only makes sense with the passage in hand, or a near-duplicate of a kept one."""

from __future__ import annotations

import re
from collections import Counter

DONT_KNOW = re.compile(r"모르|알 수 없|정보가 없|나와 있지 않|언급되(어 있)?지 않|제공되지 않|답할 수 없"
                       r"|don't know|do not know|not mentioned|cannot be determined|no information", re.IGNORECASE)
"""An answer saying the passage does not tell."""
NEEDS_PASSAGE = re.compile(
    r"(?<![가-힣])(?:이|위|위의|아래|주어진|제시된|해당) ?(?:글|문서|문단|단락|지문|자료|본문|텍스트|기사|보고서|내용)"
    r"(?:에서는|에서도|에서의|에서|에는|에도|으로는|으로|만으로는|만으로|[은는이가을를에의도와과만])?(?![가-힣])"
    r"|본문(?:에|의|을|은|에서)|글 ?[12](?!\d)|(?:첫|두) ?번째 (?:글|문서)|두 (?:글|문서)"
    r"|\b(?:this|the above|the given|the following|the) (?:passage|text|document|article|excerpt)\b", re.IGNORECASE)
"""A question that refers to the passage it was written from ("이 문서에서", "위 글에 따르면", "this passage")."""
DUPLICATE = 0.7
"""Character 3-gram Jaccard similarity above which a question is a near-duplicate of a kept one."""
_IGNORED = re.compile(r"[\W_]+")


def rejection(question: str, answer: str) -> str | None:
    """Why a generated (question, answer) is not kept by its text alone, or None: no_question,
    dont_know, needs_passage."""
    if not question:
        return "no_question"
    if DONT_KNOW.search(answer):
        return "dont_know"
    if NEEDS_PASSAGE.search(question):
        return "needs_passage"
    return None


def trigrams(text: str) -> set[str]:
    """The character 3-grams of a text, lowercased, without whitespace and punctuation."""
    folded = _IGNORED.sub("", text.lower())
    return {folded[i:i + 3] for i in range(max(1, len(folded) - 2))} if folded else set()


class NearDuplicates:
    """The questions kept so far, and whether a new one is a near-duplicate of one of them:
    character 3-gram Jaccard similarity above `threshold`, found through an inverted index of
    the 3-grams (candidates share one), so thousands of questions stay fast."""

    def __init__(self, threshold: float = DUPLICATE, kept: list[str] | None = None) -> None:
        self.threshold = threshold
        self.kept: list[str] = []
        self._grams: list[set[str]] = []
        self._index: dict[str, list[int]] = {}
        for question in kept or []:
            self.add(question)

    def duplicate_of(self, question: str) -> str | None:
        """The kept question this one nearly repeats (the most similar), or None."""
        grams = trigrams(question)
        shared = Counter(i for gram in grams for i in self._index.get(gram, ()))
        best, similarity = None, 0.0
        for i, n in sorted(shared.items()):
            jaccard = n / (len(grams) + len(self._grams[i]) - n)
            if jaccard > similarity:
                best, similarity = i, jaccard
        return self.kept[best] if best is not None and similarity > self.threshold else None

    def add(self, question: str) -> None:
        grams = trigrams(question)
        for gram in grams:
            self._index.setdefault(gram, []).append(len(self.kept))
        self.kept.append(question)
        self._grams.append(grams)
