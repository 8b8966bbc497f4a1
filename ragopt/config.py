"""The YAML search space, validated with pydantic.

A searchable setting is written as a single value (fixed), a list (one of these), or a mapping
{low, high, step?, log?} (a numeric range). Every error names its path in the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from ragopt.metrics import METRICS
from ragopt.spec import (
    BGEM3Mode,
    BGEM3Spec,
    BM25Method,
    CrossEncoderSpec,
    DenseSpec,
    FlagLLMRerankerSpec,
    FlagRerankerSpec,
    Normalization,
    StrictModel,
    Tokenizer,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the offending paths."""


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


class BM25Config(StrictModel):
    """BM25 over the tokens of one or more tokenizers; method, k1, b and delta are searchable."""

    type: Literal["bm25"]
    name: str
    tokenizer: choices(Tokenizer)
    method: choices(BM25Method) = ["lucene"]
    k1: FloatParam = [1.5]
    b: FloatParam = [0.75]
    delta: FloatParam = [0.5]

    @field_validator("tokenizer")
    @classmethod
    def _distinct_tokenizers(cls, value: list) -> list:
        labels = [t.label for t in value]
        if len(set(labels)) != len(labels):
            raise ValueError(f"tokenizers must differ; got {labels}")
        return value


class DenseConfig(DenseSpec):
    """A dense retriever; nothing inside it is searched (list several to compare models)."""

    type: Literal["dense"]
    name: str

    def to_spec(self) -> DenseSpec:
        """The concrete retriever: everything but the name."""
        return DenseSpec(**self.model_dump(exclude={"name"}))


class HybridConfig(StrictModel):
    """Fusion of named retrievers. With two, `weight` is the first one's share; with more, each
    retriever draws a weight from `weight` and the weights are normalized to sum to 1."""

    type: Literal["hybrid"]
    name: str
    retrievers: list[str] = Field(min_length=2)
    fusion: choices(Literal["rrf", "convex"]) = ["rrf"]
    rrf_k: IntParam = [60]
    normalization: choices(Normalization) = ["min_max"]
    weight: FloatParam = FloatRange(low=0.0, high=1.0)
    depth: int = Field(100, ge=1)


class BGEM3Config(BGEM3Spec):
    """BGE-M3 through FlagEmbedding; `mode` (dense, sparse, colbert) is searchable, and entries
    of the same model share one encoding pass, so a hybrid of two modes encodes once."""

    type: Literal["bge_m3"]
    name: str
    mode: choices(BGEM3Mode) = ["dense"]

    def to_spec(self, mode: str) -> BGEM3Spec:
        return BGEM3Spec(**self.model_dump(exclude={"name", "mode"}), mode=mode)


RetrieverConfig = Annotated[Union[BM25Config, DenseConfig, BGEM3Config, HybridConfig], Field(discriminator="type")]


class NoReranker(StrictModel):
    type: Literal["none"]
    name: str = "none"


class _RerankerEntry:
    """What the reranker entries share: a name, and a searchable `depth` (candidates handed over)."""

    spec_class: ClassVar[type]

    def to_spec(self, depth: int) -> CrossEncoderSpec | FlagRerankerSpec | FlagLLMRerankerSpec:
        return self.spec_class(**self.model_dump(exclude={"name", "depth"}), depth=depth)


class CrossEncoderConfig(_RerankerEntry, CrossEncoderSpec):
    """A sentence-transformers CrossEncoder reranker."""

    spec_class: ClassVar[type] = CrossEncoderSpec
    type: Literal["cross_encoder"]
    name: str
    depth: IntParam = [20]


class FlagRerankerConfig(_RerankerEntry, FlagRerankerSpec):
    """A FlagEmbedding FlagReranker."""

    spec_class: ClassVar[type] = FlagRerankerSpec
    type: Literal["flag_reranker"]
    name: str
    depth: IntParam = [20]


class FlagLLMRerankerConfig(_RerankerEntry, FlagLLMRerankerSpec):
    """A FlagEmbedding FlagLLMReranker."""

    spec_class: ClassVar[type] = FlagLLMRerankerSpec
    type: Literal["flag_llm_reranker"]
    name: str
    depth: IntParam = [20]


def _reranker_shorthand(value: Any) -> Any:
    return {"type": "none"} if value in ("none", None) else value


RerankerConfig = Annotated[Union[NoReranker, CrossEncoderConfig, FlagRerankerConfig, FlagLLMRerankerConfig],
                           Field(discriminator="type"), BeforeValidator(_reranker_shorthand)]


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
    same command resumes the study; grid enumerates the whole space and ignores n_trials."""

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    n_trials: int = Field(50, ge=1)
    timeout: float | None = Field(None, gt=0)
    seed: int = 0
    name: str | None = None
    storage: str | None = None
    pruner: Literal["none", "wilcoxon"] = "none"
    prune_steps: int = Field(8, ge=2)
    prune_p: float = Field(0.1, gt=0, lt=1)


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
        plain = {r.name for r in self.retrievers if not isinstance(r, HybridConfig)}
        for i, r in enumerate(self.retrievers):
            if isinstance(r, HybridConfig):
                bad = [n for n in r.retrievers if n not in plain]
                if bad or len(set(r.retrievers)) != len(r.retrievers):
                    raise ValueError(f"retrievers[{i}].retrievers: {bad or r.retrievers} must be distinct names of "
                                     f"bm25, dense or bge_m3 retrievers in this file; choose from {sorted(plain)}")
        for name in self.optimize:
            metric, _, k = name.partition("@")
            if metric not in METRICS or (k and (not k.isdigit() or int(k) not in self.top_k)):
                raise ValueError(f"optimize: unknown metric {name!r}; use one of {list(METRICS)}, alone (scored "
                                 f"at the trial's top_k) or as metric@k with k in top_k {self.top_k}")
        for i, r in enumerate(self.retrievers):
            if isinstance(r, HybridConfig) and r.depth < self.max_depth:
                raise ValueError(f"retrievers[{i}].depth: {r.depth} is below the deepest ranking this space needs "
                                 f"({self.max_depth}, from top_k and reranker depths); raise it")
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
        depths = [d for r in self.rerankers if not isinstance(r, NoReranker)
                  for d in (r.depth.grid() if isinstance(r.depth, IntRange) else r.depth)]
        return max(self.top_k + depths)


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
                                        or part in _TAGS or part in ("FloatRange", "IntRange")):
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


_TAGS = {"bm25", "dense", "bge_m3", "hybrid", "none", "cross_encoder", "flag_reranker", "flag_llm_reranker", "kiwi",
         "mecab", "whitespace", "char_ngram", "huggingface"}


def _with_local_models(entry: Any, base: Path) -> Any:
    """Model folders given relative to the config file become absolute; hub ids stay as they are."""

    def local(name: str) -> str:
        candidate = base / name
        return str(candidate.resolve()) if not Path(name).is_absolute() and candidate.exists() else name

    if isinstance(entry, BM25Config):
        tokenizers = [t.model_copy(update={"model": local(t.model)}) if t.type == "huggingface" else t
                      for t in entry.tokenizer]
        return entry.model_copy(update={"tokenizer": tokenizers})
    if isinstance(entry, DenseConfig) and entry.query_model is not None:
        return entry.model_copy(update={"model": local(entry.model), "query_model": local(entry.query_model)})
    if isinstance(entry, (DenseConfig, BGEM3Config, CrossEncoderConfig, FlagRerankerConfig, FlagLLMRerankerConfig)):
        return entry.model_copy(update={"model": local(entry.model)})
    return entry


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
    updates: dict[str, Any] = {"data": data, "retrievers": [_with_local_models(r, base) for r in config.retrievers],
                               "rerankers": [_with_local_models(r, base) for r in config.rerankers]}
    if config.cache_dir is not None:
        updates["cache_dir"] = (base / config.cache_dir).resolve()
    return config.model_copy(update=updates), base
