"""What produced a result: the versions of the libraries in the computation. They go into cache
keys (an upgraded library recomputes what it could change) and into best.yaml. Read from the
installed packages' metadata, so nothing heavy is imported."""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata

LIBRARIES = ("ragopt", "torch", "transformers", "sentence-transformers", "FlagEmbedding", "tokenizers",
             "huggingface_hub", "faiss-cpu", "bm25s", "kiwipiepy", "kiwipiepy_model", "python-mecab-ko",
             "python-mecab-ko-dic", "numpy", "scipy", "optuna")


@cache
def version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions(*packages: str) -> dict[str, str | None]:
    """The installed versions of some distributions."""
    return {p: version(p) for p in packages}


def library_versions() -> dict[str, str]:
    """Python and every installed library ragopt computes with."""
    return {"python": platform.python_version(), **{k: v for k, v in versions(*LIBRARIES).items() if v}}
