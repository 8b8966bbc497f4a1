"""Plug-in registries: each plug-in kind (retrievers, rerankers) maps a config `type` to the
config entry, the spec and the implementation registered for it, and builds the pydantic unions
the config and the pipeline spec accept. Plain data: no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Generic, Iterator, TypeVar, Union

from pydantic import BaseModel, Field

T = TypeVar("T")


@dataclass(frozen=True)
class Plugin(Generic[T]):
    """One registered type: its config entry, its spec and what runs it."""

    entry: type[BaseModel]
    spec: type[BaseModel]
    implementation: type[T]


def tagged_union(classes: tuple[type, ...]) -> Any:
    """A pydantic union of models told apart by their `type` literal (a single class stands alone)."""
    return Annotated[Union[classes], Field(discriminator="type")] if len(classes) > 1 else classes[0]


class Registry(Generic[T]):
    """The registered types of one plug-in kind, by the `type` literal their spec declares."""

    def __init__(self) -> None:
        self._plugins: dict[str, Plugin[T]] = {}

    def register(self, entry: type[BaseModel], spec: type[BaseModel], implementation: type[T]) -> None:
        """Make a type known to the config, the space and the engine; entry and spec must share
        the same `type` literal."""
        if entry.model_fields["type"].annotation != spec.model_fields["type"].annotation:
            raise TypeError(f"{entry.__name__} and {spec.__name__} must share the same `type` literal")
        self._plugins[spec.model_fields["type"].default] = Plugin(entry, spec, implementation)

    def __getitem__(self, type_name: str) -> Plugin[T]:
        return self._plugins[type_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plugins)

    def spec_union(self, keep: Callable[[Plugin[T]], bool] = lambda plugin: True) -> Any:
        """The registered spec classes (those `keep` accepts) as a union tagged by `type`."""
        return tagged_union(tuple(p.spec for p in self._plugins.values() if keep(p)))

    def entries(self) -> tuple[type[BaseModel], ...]:
        """The registered config entry classes, in registration order."""
        return tuple(p.entry for p in self._plugins.values())
