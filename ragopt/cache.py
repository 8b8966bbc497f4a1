"""A content-addressed disk cache for the expensive things: tokens, embeddings, BM25 term
statistics and reranker scores. Files are .npy (never pickled), .json and .parquet, named by a
hash of what produced them (model, settings, content hash of the texts)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Hashable, TypeVar

import numpy as np
import pandas as pd


T = TypeVar("T")


class Memo(Generic[T]):
    """The most recently used results of in-process computations (rankings, scored trials)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, T] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, compute: Callable[[], T]) -> tuple[T, bool]:
        """The value for key, computed on a miss, and whether it was already there."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], True
        value = self._items[key] = compute()
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value, False


def cache_key(*parts: object) -> str:
    """Hash any JSON-serializable description of a computation into a file name."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Cache:
    """Arrays and tables on disk under `root`, or in memory only when root is None."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, object] = {}
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: str, suffix: str) -> Path | None:
        return None if self.root is None else self.root / kind / f"{key}{suffix}"

    def arrays(self, kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Named arrays stored together as one .npz (loaded without pickle); computed on a miss."""
        memo = f"{kind}/{key}"
        if memo in self._memory:
            return self._memory[memo]  # type: ignore[return-value]
        path = self._path(kind, key, ".npz")
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as stored:
                value = {name: stored[name] for name in stored.files}
        else:
            value = compute()
            if path is not None:
                _atomic(path, lambda tmp: np.savez(tmp, **value))
        self._memory[memo] = value
        return value

    def scores(self, kind: str, key: str) -> "ScoreTable":
        """A growing table of float scores keyed by 64-bit pair hashes (reranker scores)."""
        memo = f"{kind}/{key}"
        if memo not in self._memory:
            folder = None if self.root is None else self.root / kind / key
            self._memory[memo] = ScoreTable(folder)
        return self._memory[memo]  # type: ignore[return-value]


class ScoreTable:
    """Scores for pair hashes, kept in memory and appended to parquet parts on disk."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.keys = np.empty(0, dtype=np.uint64)
        self.values = np.empty(0, dtype=np.float32)
        if folder is not None and folder.exists():
            parts = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))]
            if parts:
                table = pd.concat(parts).drop_duplicates("key", keep="last")
                self._set(table["key"].to_numpy(np.uint64), table["score"].to_numpy(np.float32))

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
        merged_keys = np.concatenate([self.keys, keys.astype(np.uint64)])
        merged_values = np.concatenate([self.values, values.astype(np.float32)])
        unique, index = np.unique(merged_keys[::-1], return_index=True)
        self._set(unique, merged_values[::-1][index])
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            part = self.folder / f"{len(list(self.folder.glob('*.parquet'))):06d}-{os.getpid()}.parquet"
            frame = pd.DataFrame({"key": keys.astype(np.uint64), "score": values.astype(np.float32)})
            _atomic(part, lambda tmp: frame.to_parquet(tmp, index=False))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
