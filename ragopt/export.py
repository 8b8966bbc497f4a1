"""The winner as a self-contained, schema-versioned best.yaml: the pipeline, how it scored, and
what produced it (model revisions or content hashes, tokenizer and library versions); no data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ragopt.config import ConfigError, describe_errors
from ragopt.files import write_text
from ragopt.spec import PipelineSpec

SCHEMA_VERSION = 2
"""2 adds `provenance`; version 1 files (the same pipeline format) still load."""
READABLE = (1, 2)


def write_best(path: Path, spec: PipelineSpec, evaluation: dict[str, Any], provenance: dict[str, Any]) -> None:
    """Write the pipeline and, for the reader, how it scored and what produced it (neither is
    needed to load it)."""
    document = {"ragopt_pipeline": SCHEMA_VERSION, "pipeline": spec.model_dump(mode="json"),
                "evaluation": evaluation, "provenance": provenance}
    header = ("# The best pipeline found by ragopt. Run it with:\n"
              "#   ragopt query best.yaml --corpus corpus.parquet \"question\"\n"
              "#   ragopt.load_pipeline(\"best.yaml\", \"corpus.parquet\").retrieve(\"question\")\n")
    write_text(path, header + yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


def read_best(path: str | Path) -> PipelineSpec:
    """Load the pipeline of a best.yaml, checking its schema version."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    if not isinstance(document, dict) or "pipeline" not in document:
        raise ConfigError(f"{path}: not a ragopt best.yaml (no 'pipeline' key)")
    version = document.get("ragopt_pipeline")
    if version not in READABLE:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise ConfigError(f"{path}: ragopt_pipeline version {version!r}; this ragopt reads versions {list(READABLE)}"
                          + ("; upgrade ragopt to load it" if newer else ""))
    try:
        return PipelineSpec.model_validate(document["pipeline"])
    except ValidationError as error:
        raise ConfigError(describe_errors(path, error)) from None
