"""What chunk sizes are counted in: characters, or the tokens of a Hugging Face fast tokenizer,
whose offset mapping gives each token's exact character span (token windows cut there)."""

from __future__ import annotations

from typing import Any, Callable

from ragopt.stages.chunkers._base import CHARACTERS, Span
from ragopt.stages.models import Located, fast_tokenizer


class Units:
    """Sizes in characters (`name` CHARACTERS) or in the tokens of the named tokenizer (special
    tokens not counted)."""

    def __init__(self, name: str, locate: Callable[[str], Located]) -> None:
        self.tokenizer = None if name == CHARACTERS else fast_tokenizer(locate(name))

    def _encode(self, texts: list[str], offsets: bool) -> Any:
        if not texts:
            return {"input_ids": [], "offset_mapping": []}
        return self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets, truncation=False,
                              return_attention_mask=False, return_token_type_ids=False, verbose=False)

    def count(self, text: str) -> int:
        """The size of one text."""
        return self.counts([text])[0]

    def counts(self, texts: list[str]) -> list[int]:
        """The size of each text."""
        if self.tokenizer is None:
            return [len(t) for t in texts]
        return [len(ids) for ids in self._encode(texts, offsets=False)["input_ids"]]

    def offsets(self, texts: list[str]) -> list[list[Span]]:
        """The character span of each unit of each text (a tokenizer's leave out the whitespace
        between tokens)."""
        if self.tokenizer is None:
            return [[(i, i + 1) for i in range(len(t))] for t in texts]
        return [[tuple(o) for o in offsets] for offsets in self._encode(texts, offsets=True)["offset_mapping"]]


def overlap_units(size: int, overlap: float) -> int:
    """An overlap setting in units: below 1 a share of `size` (rounded down), else a count; at
    most size - 1, so that every chunk moves on."""
    return min(int(size * overlap) if overlap < 1 else int(overlap), size - 1)
