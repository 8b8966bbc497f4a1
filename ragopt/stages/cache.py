"""A content-addressed disk cache for the expensive things: tokens, embeddings and reranker
scores. Files are .npz (loaded without pickle) and .parquet, named by a hash of everything that
produced them: the code path's schema version, the model's resolved revision or content hash,
the library versions, the settings and the content hash of the texts. Change any of these and
the entry is computed anew; change none and it is reused."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, TypeVar

import numpy as np
import pandas as pd
from filelock import FileLock

from ragopt.files import atomic_write

T = TypeVar("T")

SCHEMA = {"tokens": 3, "embeddings": 2, "bge_m3": 2, "multi_vector": 1, "rerank": 2, "chunks": 1, "tuned": 1,
          "negatives": 1}
"""The version of each code path's cached output: bump one when ragopt changes how that output
is computed, and every entry made by the old code is recomputed instead of reused."""

MEMORY_BYTES = 2 << 30
"""What the in-process copy of cached arrays and score tables may hold (least recently used out)."""


def nbytes(value: Any) -> int:
    """The memory an array, a dict of arrays or an object with `nbytes` holds."""
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return int(getattr(value, "nbytes", 0))


class Memo(Generic[T]):
    """The most recently used results of in-process computations, bounded by count and by the
    bytes they hold."""

    def __init__(self, capacity: int, max_bytes: int = MEMORY_BYTES, size: Callable[[T], int] = nbytes) -> None:
        self.capacity, self.max_bytes, self.size = capacity, max_bytes, size
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._bytes: dict[Hashable, int] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return sum(self._bytes.values())

    def get(self, key: Hashable, compute: Callable[[], T]) -> tuple[T, bool]:
        """The value for key, computed on a miss, and whether it was already there. A value is
        measured again at every use, so one that grows (a score table) stays within the budget."""
        found = key in self._items
        if found:
            self._items.move_to_end(key)
            value = self._items[key]
        else:
            value = self._items[key] = compute()
        self._bytes[key] = self.size(value)
        while len(self._items) > 1 and (len(self._items) > self.capacity or self.bytes > self.max_bytes):
            old, _ = self._items.popitem(last=False)
            del self._bytes[old]
        return value, found


def cache_key(*parts: object) -> str:
    """Hash any JSON-serializable description of a computation into a file name."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_key(kind: str, *parts: object) -> str:
    """The key of one cached output of `kind`: its schema version plus what produced it."""
    return cache_key(kind, SCHEMA[kind], *parts)


class Cache:
    """Arrays and tables on disk under `root`, or in memory only when root is None. Processes may
    share `root` (a shared file system, workers of one study): an entry is computed by one of
    them while the others wait for it, and every file appears whole or not at all.
    `misses` lists the (kind, key) of every entry computed by this process, in order."""

    def __init__(self, root: str | Path | None, memory_bytes: int = MEMORY_BYTES) -> None:
        self.root = Path(root) if root is not None else None
        self._memory: Memo[Any] = Memo(1 << 20, memory_bytes)
        self.misses: list[tuple[str, str]] = []
        self._unstored = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def unstored(self) -> Iterator[None]:
        """Within this block, entries found are used but new ones are computed and dropped: a
        latency probe measures query-side work without filling the cache with it."""
        self._unstored += 1
        try:
            yield
        finally:
            self._unstored -= 1

    def _path(self, kind: str, key: str, suffix: str) -> Path | None:
        return None if self.root is None else self.root / kind / f"{key}{suffix}"

    def arrays(self, kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]], keep: bool = True
               ) -> dict[str, np.ndarray]:
        """Named arrays stored together as one .npz; computed on a miss. With `keep=False` they are
        not kept in memory (a caller that turns them into something else and drops them: a large
        corpus's tokens would otherwise stay in memory beside the index built from them)."""
        if self._unstored:
            if (kind, key) in self._memory:
                return self._memory.get((kind, key), compute)[0]
            path = self._path(kind, key, ".npz")
            return _load(path) if path is not None and path.exists() else compute()
        if not keep and (kind, key) not in self._memory:
            return self._load_or_compute(kind, key, compute)
        return self._memory.get((kind, key), lambda: self._load_or_compute(kind, key, compute))[0]

    def _load_or_compute(self, kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
                         ) -> dict[str, np.ndarray]:
        path = self._path(kind, key, ".npz")
        if path is None:
            self.misses.append((kind, key))
            return compute()
        if path.exists():
            return _load(path)
        # workers sharing the folder compute each entry once
        with _lock(self.root, kind, key):  # type: ignore[arg-type]
            if path.exists():
                return _load(path)
            self.misses.append((kind, key))
            value = compute()
            atomic_write(path, lambda tmp: _savez(tmp, value))
        return value

    def folder(self, kind: str, key: str, build: Callable[[Path], None]) -> Path:
        """<root>/<kind>/<key>/, filled once by build(folder) (a tuned model): built in a temporary
        folder beside it and renamed into place under the entry's lock, so workers sharing the root
        build it once and none sees it half built; a build that fails leaves nothing. Root None: a
        temporary folder that lives as long as the process."""
        root = self.root if self.root is not None else _process_folder()
        path = root / kind / key
        if path.is_dir():
            return path
        with _lock(root, kind, key):
            if path.is_dir():
                return path
            self.misses.append((kind, key))
            building = root / kind / f".tmp-{uuid.uuid4().hex}"
            building.mkdir(parents=True)
            try:
                build(building)
                os.replace(building, path)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
        return path

    def scores(self, kind: str, key: str) -> "ScoreTable":
        """A growing table of float scores keyed by 64-bit pair hashes (reranker scores)."""
        if self._unstored:
            return ScoreTable(None)
        folder = None if self.root is None else self.root / kind / key
        return self._memory.get((kind, key), lambda: ScoreTable(folder, lambda: self.misses.append((kind, key))))[0]


def _lock(root: Path, kind: str, key: str) -> FileLock:
    """The lock of one entry, shared by every process that uses the same root."""
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{kind}-{key}.lock")


@functools.cache
def _process_folder() -> Path:
    """The folder of Cache(None)'s folder entries, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="ragopt-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


class ScoreTable:
    """Scores for pair hashes, kept in memory and appended to parquet parts on disk (one part per
    batch of new scores, named uniquely so that processes sharing the folder never collide)."""

    def __init__(self, folder: Path | None, on_add: Callable[[], None] = lambda: None) -> None:
        self.folder, self.on_add = folder, on_add
        self.keys = np.empty(0, dtype=np.uint64)
        self.values = np.empty(0, dtype=np.float32)
        if folder is not None and folder.exists():
            parts = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))]
            if parts:
                table = pd.concat(parts).drop_duplicates("key", keep="last")
                self._set(table["key"].to_numpy(np.uint64), table["score"].to_numpy(np.float32))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def _set(self, keys: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(keys)
        self.keys, self.values = keys[order], values[order]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores for `keys` and a mask of which were found."""
        if len(self.keys) == 0:
            return np.zeros(keys.shape, np.float32), np.zeros(keys.shape, bool)
        pos = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        found = self.keys[pos] == keys
        return np.where(found, self.values[pos], 0).astype(np.float32), found

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys) == 0:
            return
        self.on_add()
        merged_keys = np.concatenate([self.keys, keys.astype(np.uint64)])
        merged_values = np.concatenate([self.values, values.astype(np.float32)])
        unique, index = np.unique(merged_keys[::-1], return_index=True)
        self._set(unique, merged_values[::-1][index])
        if self.folder is not None:
            frame = pd.DataFrame({"key": keys.astype(np.uint64), "score": values.astype(np.float32)})
            atomic_write(self.folder / f"{uuid.uuid4().hex}.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
