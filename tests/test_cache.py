"""The disk cache and output files: entries keyed by everything that made them, files written
under unique temporary names and renamed, in-memory caches bounded."""

import os
import threading
import time

import numpy as np
import pytest

from ragopt.stages import cache as cache_module
from ragopt.stages.cache import Cache, Memo, ScoreTable, entry_key
from ragopt.files import atomic_write, write_text


def test_entry_keys_change_with_the_schema_version_and_with_every_part(monkeypatch):
    key = entry_key("tokens", {"type": "kiwi"}, {"kiwipiepy": "0.24.1"}, "texts")
    assert entry_key("tokens", {"type": "kiwi"}, {"kiwipiepy": "0.24.1"}, "texts") == key
    assert entry_key("tokens", {"type": "kiwi", "pos": "content"}, {"kiwipiepy": "0.24.1"}, "texts") != key
    assert entry_key("tokens", {"type": "kiwi"}, {"kiwipiepy": "0.25.0"}, "texts") != key
    monkeypatch.setitem(cache_module.SCHEMA, "tokens", cache_module.SCHEMA["tokens"] + 1)
    assert entry_key("tokens", {"type": "kiwi"}, {"kiwipiepy": "0.24.1"}, "texts") != key


def test_arrays_are_computed_once_then_read_from_disk(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3)}

    first = Cache(tmp_path)
    np.testing.assert_array_equal(first.arrays("kind", "k", compute)["x"], [0, 1, 2])
    np.testing.assert_array_equal(first.arrays("kind", "k", compute)["x"], [0, 1, 2])
    second = Cache(tmp_path)
    np.testing.assert_array_equal(second.arrays("kind", "k", compute)["x"], [0, 1, 2])
    assert calls == [1] and first.misses == [("kind", "k")] and second.misses == []
    assert [p.name for p in (tmp_path / "kind").iterdir()] == ["k.npz"]  # no temporary file left


def test_memory_caches_are_bounded_by_bytes_and_count():
    memo = Memo(capacity=10, max_bytes=3000)
    for i in range(5):
        memo.get(i, lambda: np.zeros(100))  # 800 bytes each
    assert len(memo) == 3 and memo.bytes == 2400 and 4 in memo and 1 not in memo
    small = Memo(capacity=2, max_bytes=1 << 30)
    for i in range(4):
        small.get(i, lambda: np.zeros(1))
    assert len(small) == 2 and 3 in small and 2 in small
    cache = Cache(None, memory_bytes=2000)
    for i in range(4):
        cache.arrays("kind", str(i), lambda: {"x": np.zeros(100)})
    assert cache._memory.bytes <= 2000


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "trials.csv"
    write_text(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["trials.csv"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would make it, readable by other workers


def test_writers_sharing_a_pid_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Containers often run every worker as PID 1: two writers of the same file must not write
    to one temporary name."""
    monkeypatch.setattr(os, "getpid", lambda: 1)
    path, seen = tmp_path / "best.yaml", []

    def slow(text):
        def write(tmp):
            seen.append(tmp.name)
            tmp.write_text(text[:5])
            time.sleep(0.05)
            with open(tmp, "a") as handle:
                handle.write(text[5:])
        return write

    threads = [threading.Thread(target=atomic_write, args=(path, slow(t * 20))) for t in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 2 and path.read_text() in ("a" * 20, "b" * 20)


def test_score_tables_from_two_writers_merge(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: 1)
    one, two = ScoreTable(tmp_path / "t"), ScoreTable(tmp_path / "t")
    one.add(np.array([1, 2], np.uint64), np.array([0.1, 0.2], np.float32))
    two.add(np.array([3], np.uint64), np.array([0.3], np.float32))
    merged = ScoreTable(tmp_path / "t")
    scores, found = merged.lookup(np.array([1, 2, 3, 4], np.uint64))
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_allclose(scores[:3], [0.1, 0.2, 0.3])


def _compute_in_another_process(root, log):
    def compute():
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return {"x": np.arange(4)}

    return Cache(root).arrays("embeddings", "shared", compute)["x"].tolist()


def test_processes_sharing_a_cache_compute_each_entry_once(tmp_path):
    import multiprocessing

    log = tmp_path / "computed.log"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.starmap(_compute_in_another_process, [(tmp_path / "cache", log)] * 3)
    assert results == [[0, 1, 2, 3]] * 3
    assert len(log.read_text().split()) == 1  # one process computed it; the others waited and read it


def test_arrays_not_kept_are_stored_but_left_out_of_memory(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(4)}

    cache = Cache(tmp_path)
    np.testing.assert_array_equal(cache.arrays("tokens", "corpus", compute, keep=False)["x"], [0, 1, 2, 3])
    assert ("tokens", "corpus") not in cache._memory and cache._memory.bytes == 0
    np.testing.assert_array_equal(cache.arrays("tokens", "corpus", compute, keep=False)["x"], [0, 1, 2, 3])
    assert calls == [1] and (tmp_path / "tokens" / "corpus.npz").exists()  # read back from disk


def test_a_folder_entry_is_built_once_and_a_failed_build_leaves_nothing(tmp_path):
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "weights.txt").write_text("trained")

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("out of memory")

    for root in (tmp_path, None):
        builds.clear()
        first = Cache(root)
        path = first.folder("tuned", "k", build)
        assert path.name == "k" and (path / "weights.txt").read_text() == "trained"
        assert first.folder("tuned", "k", build) == path and Cache(root).folder("tuned", "k", build) == path
        assert len(builds) == 1 and builds[0] != path and first.misses == [("tuned", "k")]
        with pytest.raises(RuntimeError, match="out of memory"):
            first.folder("tuned", "bad", broken)
        assert sorted(p.name for p in path.parent.iterdir()) == ["k"]  # no half-built or temporary folder
    assert path.parent.parent != tmp_path and (tmp_path / "tuned" / "k" / "weights.txt").exists()
