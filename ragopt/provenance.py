"""What produced a result: the versions of the libraries in the computation. They go into cache
keys (an upgraded library recomputes what it could change) and into best.yaml. Read from the
installed packages' metadata, so nothing heavy is imported; the same metadata says how ragopt
was installed, for the command that adds an extra to it."""

from __future__ import annotations

import json
import platform
import shlex
from functools import cache
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

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


def install_command(extra: str) -> str:
    """The pip command that adds one of ragopt's extras (serve, postgres, llama-index) to this
    installation: from the source folder of an editable install (its direct_url.json says so),
    else from PyPI. The installed metadata is read, not a checkout's build leftovers
    (ragopt.egg-info) that the current folder may put first on the path."""
    recorded = [text for d in metadata.distributions(name="ragopt") if (text := d.read_text("direct_url.json"))]
    try:
        origin = json.loads(recorded[0]) if recorded else {}
    except ValueError:
        origin = {}
    if not origin.get("dir_info", {}).get("editable"):
        return f"pip install {shlex.quote(f'ragopt[{extra}]')}"
    folder = Path(url2pathname(urlparse(origin["url"]).path))
    where = "." if folder.resolve() == Path.cwd() else str(folder)
    return f"pip install -e {shlex.quote(f'{where}[{extra}]')}"
