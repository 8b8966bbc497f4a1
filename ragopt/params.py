"""The vocabulary of the YAML search space, shared by the config and every plug-in: the strict
pydantic base model, searchable settings (one value, a list, or a numeric range) and the
chooser that turns a searchable setting into one value. Plain data: no torch."""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Any, Callable, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """A frozen model that rejects unknown keys with the list of allowed ones (pydantic's own
    message does not say what would have been right)."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
        return data

    def key(self) -> str:
        """A short content hash of this model, stable across runs and machines."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class FloatRange(StrictModel):
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self

    def grid(self) -> list[float]:
        """The values a grid visits; only ranges with a step have them."""
        assert self.step is not None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 10) for i in range(count)]


class IntRange(StrictModel):
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log range needs low > 0 and step 1")
        return self

    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


def _listify(value: Any) -> Any:
    return value if isinstance(value, (list, dict)) else [value]


def _non_empty(values: list) -> list:
    if not values:
        raise ValueError("give at least one value")
    return values


FloatParam = Annotated[Union[FloatRange, Annotated[list[float], BeforeValidator(_non_empty)]],
                       BeforeValidator(_listify)]
IntParam = Annotated[Union[IntRange, Annotated[list[int], BeforeValidator(_non_empty)]],
                     BeforeValidator(_listify)]


def choices(literal_type: Any) -> Any:
    """A setting chosen among fixed values (names, tokenizers): one, or a list of them."""
    return Annotated[Annotated[list[literal_type], BeforeValidator(_non_empty)], BeforeValidator(_listify)]


def bounded_floats(low: float, high: float) -> Any:
    """A searchable float whose every value (a list's items, a range's ends) lies in [low, high]."""
    return Annotated[FloatParam, BeforeValidator(_bounds(low, high))]


def bounded_ints(low: int) -> Any:
    """A searchable int whose every value (a list's items, a range's ends) is at least `low`."""
    return Annotated[IntParam, BeforeValidator(_bounds(low, math.inf))]


def _bounds(low: float, high: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        value = _listify(value)
        numbers = [value.get("low"), value.get("high")] if isinstance(value, dict) else value
        bad = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not (math.isfinite(v) and low <= v <= high)]
        if bad:
            bound = f"in [{low}, {high}]" if high < math.inf else f"finite and at least {low}"
            raise ValueError(f"every value must be {bound}; got {bad}")
        return value

    return check


Options = Union[list, FloatRange, IntRange]
Chooser = Callable[[str, Options], Any]
"""Takes one decision of the search space: `choose(name, options)` returns one of the options
(Optuna's trial draws it; the grid enumerator replays every combination)."""
