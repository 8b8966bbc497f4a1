"""ragopt: find the best retrieval pipeline for a question-answering corpus.

The public names are imported on first use, so `import ragopt` (and the `ragopt` command's
start-up) stays light: nothing here imports torch until a model runs."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Config": "ragopt.search.config", "load_config": "ragopt.search.config",
    "Corpus": "ragopt.data.qa", "QASet": "ragopt.data.qa", "load_corpus": "ragopt.data.qa",
    "load_dataset": "ragopt.data.qa", "Documents": "ragopt.data.documents", "load_documents": "ragopt.data.documents",
    "ConfigError": "ragopt.errors", "DataError": "ragopt.errors", "ModelError": "ragopt.errors",
    "StudyError": "ragopt.errors", "UserError": "ragopt.errors",
    "Hit": "ragopt.serving.pipeline", "Pipeline": "ragopt.serving.pipeline", "load_pipeline": "ragopt.serving.pipeline",
    "PipelineSpec": "ragopt.stages.spec",
    "Ranking": "ragopt.stages.ranking",
    "Outcome": "ragopt.study", "optimize": "ragopt.study",
    "StudyResults": "ragopt.analysis.compare", "choice_matrix": "ragopt.analysis.compare",
    "runner_ups": "ragopt.analysis.compare", "winners": "ragopt.analysis.compare",
    "build_report": "ragopt.analysis.report_data",
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
