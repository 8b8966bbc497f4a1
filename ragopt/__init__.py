"""ragopt: find the best retrieval pipeline for a question-answering corpus.

The public names are imported on first use, so `import ragopt` (and the `ragopt` command's
start-up) stays light: nothing here imports torch until a model runs."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Config": "ragopt.config", "load_config": "ragopt.config",
    "Corpus": "ragopt.data", "QASet": "ragopt.data", "load_corpus": "ragopt.data", "load_dataset": "ragopt.data",
    "ConfigError": "ragopt.errors", "DataError": "ragopt.errors", "ModelError": "ragopt.errors",
    "StudyError": "ragopt.errors", "UserError": "ragopt.errors",
    "Hit": "ragopt.pipeline", "Pipeline": "ragopt.pipeline", "load_pipeline": "ragopt.pipeline",
    "PipelineSpec": "ragopt.spec",
    "Ranking": "ragopt.ranking",
    "Outcome": "ragopt.study", "optimize": "ragopt.study",
    "StudyResults": "ragopt.compare", "choice_matrix": "ragopt.compare", "runner_ups": "ragopt.compare",
    "winners": "ragopt.compare", "build_report": "ragopt.report_data",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("ragopt")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ragopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
