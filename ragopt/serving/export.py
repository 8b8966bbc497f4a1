"""The winner as a self-contained, schema-versioned best.yaml: the pipeline, how it scored, and
what produced it (model revisions or content hashes, tokenizer and library versions); no data."""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ragopt.search.config import ConfigError, describe_errors
from ragopt.files import write_text
from ragopt.provenance import version
from ragopt.stages.spec import PipelineSpec

SCHEMA_VERSION = 3
"""2 adds `engine` (settings of the search that shape the ranking) and `provenance`; 3 adds the
engine's `device` (cpu, cuda, mps: what an `auto` precision and the numerics resolve on).
Versions 1 and 2 still load."""
READABLE = (1, 2, 3)
DEFAULT_EXACT_SEARCH_MAX = 1_000_000


@dataclass(frozen=True)
class Exported:
    """What best.yaml gives back: the pipeline and the search settings it was scored with."""

    spec: PipelineSpec
    exact_search_max: int = DEFAULT_EXACT_SEARCH_MAX
    device: str | None = None
    """The device type the trial ran on; None where not recorded (files before version 3)."""

    def engine(self) -> dict[str, Any]:
        """best.yaml's `engine` section: the search settings, the device where it is known."""
        settings: dict[str, Any] = {"exact_search_max": self.exact_search_max}
        return settings if self.device is None else {**settings, "device": self.device}


def write_best(path: Path, exported: Exported, evaluation: dict[str, Any], provenance: dict[str, Any],
               corpus: str | Path | None = None) -> None:
    """Write the pipeline and its search settings and, for the reader, how it scored and what
    produced it (not needed to load it), under a header that describes the pipeline and says how
    to run it on `corpus`, the corpus the study searched. The pipeline keeps every digit of its
    values (a rounded k1 or b would change every BM25 score, and so the ranking); what is only
    read is rounded to the digits it has: the scores to 6 significant digits, times to 3."""
    document = {"ragopt_pipeline": SCHEMA_VERSION, "pipeline": exported.spec.model_dump(mode="json"),
                "engine": exported.engine(), "evaluation": _readable(evaluation), "provenance": provenance}
    write_text(path, _header(path, exported.spec, evaluation, corpus)
               + yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


def _header(path: Path, spec: PipelineSpec, evaluation: dict[str, Any], corpus: str | Path | None) -> str:
    """best.yaml's comment: the pipeline in words and the commands that run it from its folder."""
    trial = f" (trial {evaluation['trial']})" if "trial" in evaluation else ""
    domain = f" for the {evaluation['domain']} questions" if "domain" in evaluation else ""
    known = corpus is not None and not str(corpus).startswith("<")  # not a corpus held in memory ("<memory>")
    chunked = spec.chunker is not None
    noun, option, argument = ("documents", "--documents", "documents=") if chunked else ("corpus", "--corpus", "")
    shown = _beside(path, corpus) if known else noun.upper()
    where = f"on the {noun} the study searched" if known else f"on your {noun} ({noun.upper()})"
    return (f"# The best pipeline found by ragopt{domain}: {spec.describe()}{trial}.\n"
            f"# Run it from this folder {where}:\n"
            f"#   ragopt query {shlex.quote(path.name)} {option} {shlex.quote(shown)} \"question\"\n"
            f"#   ragopt.load_pipeline({json.dumps(path.name, ensure_ascii=False)}, "
            f"{argument}{json.dumps(shown, ensure_ascii=False)}).retrieve(\"question\")\n")


def _beside(path: Path, corpus: str | Path) -> str:
    """`corpus` as seen from `path`'s folder: relative when the two share a folder below the
    root (an output folder next to the data), else in full."""
    target, folder = Path(os.path.abspath(corpus)), Path(os.path.abspath(path.parent))
    try:
        shared = Path(os.path.commonpath([target, folder]))
    except ValueError:  # another drive
        return target.as_posix()
    return Path(os.path.relpath(target, folder)).as_posix() if shared.parent != shared else target.as_posix()


def _readable(value: Any, key: str = "") -> Any:
    """The evaluation's numbers to the digits they have: times (keys with 'seconds') to 3
    significant digits, scores to 6."""
    if isinstance(value, dict):
        return {k: _readable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_readable(v, key) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{3 if 'seconds' in key else 6}g}")
    return value


def read_best(path: str | Path) -> PipelineSpec:
    """The pipeline of a best.yaml."""
    return read_export(path).spec


def read_export(path: str | Path) -> Exported:
    """Load a best.yaml, checking its schema version."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    if not isinstance(document, dict) or "pipeline" not in document:
        raise ConfigError(f"{path}: not a ragopt best.yaml (no 'pipeline' key)")
    schema = _schema(path, document.get("ragopt_pipeline"))
    pipeline = _from_version_1(document["pipeline"]) if schema == 1 else document["pipeline"]
    try:
        spec = PipelineSpec.model_validate(pipeline)
    except ValidationError as error:
        raise ConfigError(describe_errors(path, error)) from None
    engine = document.get("engine") or {}
    return Exported(_models_beside(spec, path.parent), int(engine.get("exact_search_max", DEFAULT_EXACT_SEARCH_MAX)),
                    _device(path, engine))


def _models_beside(spec: PipelineSpec, folder: Path) -> PipelineSpec:
    """The pipeline with retriever models named relative to best.yaml ('./tuned/...', the tuned
    models a study exports beside it) made absolute, so the file loads from any directory."""
    from ragopt.stages.retrievers._base import MODEL_FIELDS

    def located(part: Any) -> Any:
        updates = {f: str((folder / value).resolve()) for f in MODEL_FIELDS
                   if isinstance(value := getattr(part, f, None), str) and value.startswith(("./", "../"))}
        return part.model_copy(update=updates) if updates else part

    return spec.with_retrievers(located)


def _schema(path: Path, schema: Any) -> int:
    """The file's schema version, or an error saying what to do when this ragopt cannot read it."""
    if type(schema) is int and schema in READABLE:  # not True, which equals 1
        return schema
    newer = isinstance(schema, int) and schema > SCHEMA_VERSION
    advice = ("it was written by a later ragopt: upgrade ragopt (pip install -U ragopt) to load it" if newer
              else "export the pipeline again with this ragopt")
    raise ConfigError(f"{path}: ragopt_pipeline version {schema!r}, but this ragopt ({version('ragopt')}) reads "
                      f"versions {', '.join(map(str, READABLE))}; {advice}")


def _device(path: Path, engine: dict[str, Any]) -> str | None:
    """The recorded device type (absent before version 3), checked to be one."""
    device = engine.get("device")
    if device is not None and (not isinstance(device, str) or ":" in device or not device):
        raise ConfigError(f"{path}: engine.device must be a device type such as cpu or cuda; got {device!r}")
    return device


def _from_version_1(pipeline: Any) -> Any:
    """Version 1 allowed `max_length: null` for FlagEmbedding rerankers, meaning 512."""
    reranker = pipeline.get("reranker") if isinstance(pipeline, dict) else None
    flag = isinstance(reranker, dict) and str(reranker.get("type")).startswith("flag_")
    if flag and reranker.get("max_length") is None:
        return {**pipeline, "reranker": {**reranker, "max_length": 512}}
    return pipeline
