"""The vocabulary of the YAML search space, shared by the config and every plug-in: the strict
pydantic base model, searchable settings (one value, a list, or a numeric range) and the
chooser that turns a searchable setting into one value. Plain data: no torch."""

from __future__ import annotations

import difflib
import hashlib
import math
from typing import Annotated, Any, Callable, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      ValidatorFunctionWrapHandler, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

Problem = tuple[tuple[Union[str, int], ...], str]
"""A problem found by a check across settings: its location in the file and what to change."""

PROBLEM = "ragopt_problem"
"""The pydantic error type of a Problem and of an unknown key (their messages are complete)."""


class StrictModel(BaseModel):
    """A frozen model that rejects unknown keys, naming the closest allowed one, and still
    validates the known keys beside them, so one pass reports both kinds of mistakes."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _known_keys_only(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Validate the known keys, then raise their errors together with one per unknown key."""
        unknown = [k for k in data if k not in cls.model_fields] if isinstance(data, dict) else []
        if not unknown:
            return handler(data)
        errors = [_problem(((k,), unknown_key(str(k), sorted(cls.model_fields)))) for k in unknown]
        try:
            handler({k: v for k, v in data.items() if k not in unknown})
        except ValidationError as error:
            errors += [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"], e.get("ctx")), loc=e["loc"],
                                        input=e["input"]) for e in error.errors(include_url=False)]
        raise ValidationError.from_exception_data(cls.__name__, errors)

    def key(self) -> str:
        """A short content hash of this model, stable across runs and machines."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def did_you_mean(word: str, options: list[str]) -> str:
    """" (did you mean 'x'?)" for the option closest to a misspelt word, or "" when none is close."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: str, allowed: list[str]) -> str:
    """What to do about a key the model does not take."""
    guess = did_you_mean(key, allowed)
    return f"unknown key {key!r}{guess}; {'the' if guess else 'remove it, or use one of the'} keys allowed here: " + (
        ", ".join(allowed))


def reject(title: str, problems: list[Problem]) -> None:
    """Raise every problem at once, each at its own location, so that a run reports all of them."""
    if problems:
        raise ValidationError.from_exception_data(title, [_problem(p) for p in problems])


def _problem(problem: Problem) -> InitErrorDetails:
    """A Problem as pydantic error details, its message kept as it is."""
    loc, message = problem
    return InitErrorDetails(type=PydanticCustomError(PROBLEM, message), loc=loc, input=None)


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
        raise ValueError("an empty list leaves nothing to choose from; give at least one value")
    return values


def _searchable(range_type: type, value_type: type) -> Any:
    """One value, a list of values or a range. A mapping is checked as a range only and anything
    else as a list only, so that a mistake gets one error, not one per form."""
    values = f"list[{value_type.__name__}]"
    return Annotated[
        Union[Annotated[range_type, Tag(range_type.__name__)],
              Annotated[list[value_type], BeforeValidator(_non_empty), Tag(values)]],
        Discriminator(lambda v: range_type.__name__ if isinstance(v, (dict, range_type)) else values),
        BeforeValidator(_listify)]


FloatParam = _searchable(FloatRange, float)
IntParam = _searchable(IntRange, int)


def choices(literal_type: Any) -> Any:
    """A setting chosen among fixed values (names, tokenizers): one (a mapping too, such as
    {type: char_ngram, n: 2}), or a list of them."""
    return Annotated[Annotated[list[literal_type], BeforeValidator(_non_empty)],
                     BeforeValidator(lambda value: value if isinstance(value, list) else [value])]


def bounded_floats(low: float, high: float) -> Any:
    """A searchable float whose every value (a list's items, a range's ends) lies in [low, high]."""
    return Annotated[FloatParam, BeforeValidator(_bounds(low, high))]


def bounded_ints(low: int) -> Any:
    """A searchable int whose every value (a list's items, a range's ends) is at least `low`."""
    return Annotated[IntParam, BeforeValidator(_bounds(low, math.inf))]


def _bounds(low: float, high: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        value = _listify(value)
        numbers = [_number(v) for v in ([value.get("low"), value.get("high")] if isinstance(value, dict) else value)]
        bad = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not (math.isfinite(v) and low <= v <= high)]
        if bad:
            bound = f"in [{low}, {high}]" if high < math.inf else f"finite and at least {low}"
            raise ValueError(f"every value must be {bound}; got {bad}")
        return value

    return check


def _number(value: Any) -> Any:
    """A number YAML left as text (PyYAML reads 5e0 or 1e-5, without a dot, as a string, which
    pydantic then takes as a float): as that float, so that its bounds are checked too."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Options = Union[list, FloatRange, IntRange]
Chooser = Callable[[str, Options], Any]
"""Takes one decision of the search space: `choose(name, options)` returns one of the options
(Optuna's trial draws it; the grid enumerator replays every combination)."""
