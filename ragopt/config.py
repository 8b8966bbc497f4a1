"""The YAML search space, validated with pydantic.

A searchable setting is written as a single value (fixed), a list (one of these), or a mapping
{low, high, step?, log?} (a numeric range). Retriever and reranker entries are the registered
plug-in types (ragopt.retrievers, ragopt.rerankers). Every error names its path in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ragopt.errors import ConfigError
from ragopt.metrics import METRICS
from ragopt.params import FloatRange, IntRange, StrictModel
from ragopt.rerankers import _base as rerankers
from ragopt.retrievers import _base as retrievers

RetrieverConfig = retrievers.entry_union()
RerankerConfig = rerankers.entry_union()
NoReranker = rerankers.NoReranker


class DataConfig(StrictModel):
    """Either qa + corpus files (AutoRAG parquet, JSONL, CSV) or a BEIR folder."""

    qa: Path | None = None
    corpus: Path | None = None
    beir: Path | None = None
    split: str = "test"
    domain_column: str | None = None
    domain_pattern: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.beir is None) == (self.qa is None or self.corpus is None):
            raise ValueError("give either both 'qa' and 'corpus', or 'beir' (a BEIR folder)")
        if self.domain_column and self.domain_pattern:
            raise ValueError("give domain_column or domain_pattern, not both")
        return self


class StudyConfig(StrictModel):
    """Optuna settings. storage defaults to a SQLite file in the output folder, so rerunning the
    same command resumes the study; grid enumerates the whole space and ignores n_trials.
    holdout keeps a share of every domain's questions out of the selection to score the winner on;
    folds reports the held-out score of selecting among the trials by k-fold; every pipeline's
    seconds per question are measured (latency: off skips it), latency: pareto optimizes them
    with quality, latency_budget keeps the winner under a limit."""

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    n_trials: int = Field(50, ge=1)
    timeout: float | None = Field(None, gt=0)
    seed: int = 0
    name: str | None = None
    storage: str | None = None
    pruner: Literal["none", "wilcoxon"] = "none"
    prune_steps: int = Field(8, ge=2)
    prune_p: float = Field(0.1, gt=0, lt=1)
    holdout: float = Field(0.0, ge=0, lt=1)
    folds: int = Field(0, ge=0)
    per_domain: bool = False
    min_domain_questions: int = Field(20, ge=2)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    latency: Literal["measure", "pareto", "off"] = "measure"
    latency_budget: float | None = Field(None, gt=0)
    heartbeat: float = Field(60, ge=1)

    @field_validator("latency", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare `off` (and `false`) as False."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _compatible(self) -> "StudyConfig":
        if self.folds == 1:
            raise ValueError("folds: give 0 (no k-fold selection) or at least 2")
        if self.latency == "off" and self.latency_budget is not None:
            raise ValueError("latency_budget needs the latency measured: remove latency: off")
        if self.latency == "pareto" and self.pruner != "none":
            raise ValueError("pruner: Optuna prunes single-objective studies only; use pruner: none with "
                             "latency: pareto, or latency_budget for one objective under a latency limit")
        return self


class Config(StrictModel):
    data: DataConfig
    retrievers: list[RetrieverConfig] = Field(min_length=1)
    rerankers: list[RerankerConfig] = [NoReranker(type="none")]
    top_k: list[Annotated[int, Field(ge=1)]] = [1, 3, 5, 10]
    metrics: list[Literal[tuple(METRICS)]] = list(METRICS)  # type: ignore[valid-type]
    optimize: dict[str, float] = {"f1": 1.0}
    study: StudyConfig = StudyConfig()
    device: str = "auto"
    cache_dir: Path | None = None
    exact_search_max: int = Field(1_000_000, ge=1)

    @field_validator("optimize", mode="before")
    @classmethod
    def _single_metric(cls, value: Any) -> Any:
        return {value: 1.0} if isinstance(value, str) else value

    @field_validator("top_k")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one k")
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        _check_names("retrievers", [r.name for r in self.retrievers])
        _check_names("rerankers", [r.name for r in self.rerankers])
        plain = {r.name for r in self.retrievers if not r.composite}
        for i, r in enumerate(self.retrievers):
            names = r.references()
            bad = [n for n in names if n not in plain]
            if bad or len(set(names)) != len(names):
                raise ValueError(f"retrievers[{i}].retrievers: {bad or names} must be distinct names of "
                                 f"non-hybrid retrievers in this file; choose from {sorted(plain)}")
            problem = r.check(self.max_depth)
            if problem:
                raise ValueError(f"retrievers[{i}].{problem}")
        for name, weight in self.optimize.items():
            metric, _, k = name.partition("@")
            if metric not in METRICS or (k and (not k.isdigit() or int(k) not in self.top_k)):
                raise ValueError(f"optimize: unknown metric {name!r}; use one of {list(METRICS)}, alone (scored "
                                 f"at the trial's top_k) or as metric@k with k in top_k {self.top_k}")
            if weight < 0:
                raise ValueError(f"optimize.{name}: weights must not be negative; got {weight}")
        if sum(self.optimize.values()) <= 0:
            raise ValueError("optimize: give at least one metric a positive weight")
        if self.study.sampler == "grid":
            for path, value in self._ranges():
                if isinstance(value, FloatRange) and value.step is None:
                    raise ValueError(f"{path}: the grid sampler needs a step for every float range "
                                     f"(e.g. {{low: {value.low}, high: {value.high}, step: 0.1}}) or a list of values")
                if value.log:
                    raise ValueError(f"{path}: the grid sampler cannot enumerate a log range; give a list of values")
        return self

    def _ranges(self) -> list[tuple[str, FloatRange | IntRange]]:
        found = []
        for group in ("retrievers", "rerankers"):
            for i, entry in enumerate(getattr(self, group)):
                for field, value in entry:
                    if isinstance(value, (FloatRange, IntRange)):
                        found.append((f"{group}[{i}].{field}", value))
        return found

    @property
    def finite(self) -> bool:
        """Whether the space is a finite set of pipelines (no float range without a step)."""
        return all(not isinstance(v, FloatRange) or v.step is not None for _, v in self._ranges())

    @property
    def max_depth(self) -> int:
        """The depth every retriever runs to, once: smaller k and reranker depths are slices."""
        return max(self.top_k + [d for r in self.rerankers for d in r.depths()])

    def models(self) -> list[str]:
        """Every model the space can load."""
        return list(dict.fromkeys(m for entry in [*self.retrievers, *self.rerankers] for m in entry.models()))

    def tokenizers(self) -> list[Any]:
        """Every tokenizer the space can use, once each."""
        return list({t.key(): t for entry in self.retrievers for t in entry.tokenizers()}.values())


def _check_names(group: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{group}: names must be unique; repeated: {repeated}")


def _where(loc: tuple) -> str:
    """pydantic's location tuple as a YAML path, without the union tags it inserts."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("function-", "tagged-union", "list[", "union["))
                                        or part in _tags() or part in ("FloatRange", "IntRange")):
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _local_models(base: Path):
    """Model folders given relative to the config file become absolute; hub ids stay as they are."""

    def local(name: str) -> str:
        candidate = base / name
        return str(candidate.resolve()) if not Path(name).is_absolute() and candidate.exists() else name

    return local


def _tags() -> set[str]:
    """The union tags pydantic puts in error locations: every plug-in and tokenizer type."""
    from ragopt.retrievers.tokenizers import TOKENIZERS

    tokenizers = {c.model_fields["type"].default for c in TOKENIZERS}
    return {"none", *retrievers.REGISTRY, *rerankers.REGISTRY, *tokenizers}


def describe_errors(path: Path | str, error: ValidationError) -> str:
    """One line per problem, each starting with its path in the file."""
    lines = []
    for e in error.errors(include_url=False):
        message = e["msg"].removeprefix("Value error, ")
        shown = e["type"] not in ("value_error", "missing") and not isinstance(e["input"], (dict, list))
        lines.append(f"  {_where(e['loc'])}: {message}" + (f" (got {e['input']!r})" if shown else ""))
    return f"{path}: invalid config\n" + "\n".join(dict.fromkeys(lines))


def load_config(path: str | Path) -> tuple[Config, Path]:
    """Read and validate a config file; returns it with data paths made absolute, and its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys data, retrievers, ...; got {type(raw).__name__}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_errors(path, error)) from None
    base = path.resolve().parent
    data = config.data.model_copy(update={
        key: (base / value).resolve()
        for key in ("qa", "corpus", "beir") if (value := getattr(config.data, key)) is not None})
    local = _local_models(base)
    updates: dict[str, Any] = {"data": data, "retrievers": [r.localized(local) for r in config.retrievers],
                               "rerankers": [r.localized(local) for r in config.rerankers]}
    if config.cache_dir is not None:
        updates["cache_dir"] = (base / config.cache_dir).resolve()
    return config.model_copy(update=updates), base
