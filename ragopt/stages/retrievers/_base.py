"""The retriever plug-in kind: a config entry (searchable settings), a spec (one value per
setting) and a Retriever (the index that answers query sets), registered together under the
config's `type`. The space, the engine, the warm-up, the descriptions and the provenance all
dispatch through the registry, so a new retriever is one file that calls `register`.

Contract of a Retriever (checked for every registered type by ragopt.testing.retrievers):
- search returns only passages it retrieved: a lexical retriever the passages sharing a term
  with the query, a dense one every passage; scores finite, best first, ties by corpus row, at
  most `depth` per query, then -1 / -inf;
- a shallower search is a prefix of a deeper one, scores included, and `stats` (over every
  passage retrieved) does not depend on the depth;
- results depend on the corpus's content, never on the order of rows in its file;
- everything expensive goes through the cache, keyed by all that produced it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ragopt.stages.params import Chooser, StrictModel
from ragopt.stages.registry import Registry, tagged_union

if TYPE_CHECKING:
    from ragopt.stages.cache import Cache
    from ragopt.data.qa import Corpus, Queries
    from ragopt.stages.models import Locator, ModelPool
    from ragopt.stages.ranking import Ranking
    from ragopt.stages.retrievers.tokenizers import Tokenizer

MODEL_FIELDS = ("model", "query_model")
"""Settings that name a model (a hub id, a folder relative to the config, or pkg:...)."""


def named_models(settings: Any) -> list[str]:
    """The models a spec's or entry's MODEL_FIELDS name."""
    return [v for f in MODEL_FIELDS if isinstance(v := getattr(settings, f, None), str)]


class RetrieverSpec(StrictModel):
    """A concrete retriever: one value per setting; its JSON form keys its rankings."""

    type: str

    def describe(self) -> str:
        """A short human description for tables and progress bars."""
        raise NotImplementedError

    def kind(self) -> str:
        """The kind of retriever, for comparing choices: its type unless a setting makes another
        kind of retrieval (BGE-M3's mode)."""
        return self.type

    def cost_key(self) -> str:
        """Specs with the same cost key take the same time to answer a query (a latency probe
        measures one of them); by default only equal specs."""
        return self.key()

    def index_key(self) -> str:
        """Specs with the same index key share one Retriever (e.g. every BM25 spec of one
        tokenizer shares its term index); by default each spec has its own."""
        return self.key()

    def components(self) -> list["RetrieverSpec"]:
        """The retrievers a composite (hybrid) spec combines; none for a plain one."""
        return []

    def models(self) -> list[str]:
        """The models this spec loads, its components' included."""
        return list(dict.fromkeys(named_models(self) + [m for c in self.components() for m in c.models()]))

    def tokenizers(self) -> list["Tokenizer"]:
        """The tokenizers this spec uses, its components' included."""
        return [t for c in self.components() for t in c.tokenizers()]


class RetrieverEntry(StrictModel):
    """A retriever in the config: a unique name and searchable settings."""

    type: str
    name: str
    composite: ClassVar[bool] = False
    """Whether this entry combines other entries (which then must not be composite)."""

    def suggest(self, choose: Chooser, resolve: Callable[[str], RetrieverSpec]) -> RetrieverSpec:
        """A concrete spec, taking each open decision from choose('<name>.<setting>', options);
        `resolve(name)` suggests the spec of another entry (for composite entries)."""
        raise NotImplementedError

    def warm_up_specs(self) -> list[RetrieverSpec]:
        """Specs whose indexes cover every spec this entry can suggest (built before the trials)."""
        return []

    def references(self) -> list[str]:
        """Names of the other entries this one combines."""
        return []

    def check(self, max_depth: int) -> str | None:
        """A problem with this entry given the deepest ranking the space needs, or None."""
        return None

    def unused(self) -> set[str]:
        """Settings no suggestion of this entry reads (e.g. a hybrid's weight when it only fuses
        by rrf): their ranges make no space infinite and need no grid step."""
        return set()

    def models(self) -> list[str]:
        """The models this entry can load (their revisions are recorded and checked on resume)."""
        return named_models(self)

    def tokenizers(self) -> list["Tokenizer"]:
        """The tokenizers this entry can use (their library versions are recorded)."""
        return []

    def localized(self, local: Callable[[str], str]) -> "RetrieverEntry":
        """This entry with model folders given relative to the config made absolute."""
        updates = {f: local(v) for f in MODEL_FIELDS if isinstance(v := getattr(self, f, None), str)}
        return self.model_copy(update=updates)


@dataclass
class Context:
    """What a Retriever is built with: the corpus, the disk cache, the model pool and locator,
    the device; `retrieve` and `retriever` reach the engine's other retrievers (for hybrids)."""

    corpus: "Corpus"
    cache: "Cache"
    pool: "ModelPool"
    locate: "Locator"
    device: str
    progress: bool
    exact_search_max: int
    retrieve: Callable[[RetrieverSpec, "Queries", int], "Ranking"]
    retriever: Callable[[RetrieverSpec], "Retriever"]


class Retriever(ABC):
    """An index over one corpus that answers query sets (see the module's contract)."""

    def __init__(self, spec: Any, context: Context) -> None:
        self.context = context

    @abstractmethod
    def search(self, spec: Any, queries: "Queries", depth: int) -> "Ranking":
        """The `depth` best passages of the corpus for each query."""

    def theoretical_min(self, spec: Any) -> float | None:
        """The lowest score any passage can get, for 'tmm' normalization; None if unknown."""
        return None


REGISTRY: Registry[Retriever] = Registry()
register = REGISTRY.register


def spec_union(composite: bool | None = None) -> Any:
    """The registered spec classes as a pydantic union tagged by `type` (only plain ones with
    composite=False)."""
    return REGISTRY.spec_union(lambda plugin: composite is None or plugin.entry.composite == composite)


def entry_union() -> Any:
    """The registered config entry classes as a pydantic union tagged by `type`."""
    return tagged_union(REGISTRY.entries())
