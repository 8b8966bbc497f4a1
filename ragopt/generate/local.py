"""A Hugging Face chat model run here through transformers: the prompt through the tokenizer's
chat template, greedy generation, on the GPU where there is one (bfloat16), else the CPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ragopt.errors import ModelError
from ragopt.generate.prompts import PROMPT_VERSION
from ragopt.generate.runner import Usage


class LocalChat:
    """A causal language model with a chat template, from a hub id (recorded with the commit of
    its snapshot) or a local folder. One generation at a time (a lock), so threads may share it."""

    def __init__(self, model: str, max_tokens: int = 512, device: str = "auto") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ragopt.stages.models import Located, hub_snapshot, load_model, local_folder, pick_device, torch_dtype

        folder = local_folder(model)
        if folder is None:
            folder = hub_snapshot(model)
            self.located = Located(model, folder, {"hub": model, "revision": Path(folder).name})
        else:
            self.located = Located(model, folder, {"path": folder})
        self.device = pick_device(device)
        self.tokenizer = load_model("chat", self.located, AutoTokenizer.from_pretrained)
        if not self.tokenizer.chat_template:
            raise ModelError(f"model {model!r} has no chat template in its tokenizer, so it is not a chat model; give "
                             "an instruction-tuned (chat) model, e.g. Qwen/Qwen2.5-7B-Instruct.")
        dtype = torch_dtype("auto", self.device)
        self.model = load_model("chat", self.located, lambda path: AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype)).to(self.device).eval()
        self.max_tokens = max_tokens
        self.usage = Usage()
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        revision = {"revision": self.located.identity["revision"]} if "revision" in self.located.identity else {}
        return {"type": "local", "model": self.located.name, **revision, "prompt": PROMPT_VERSION}

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's greedy reply, special tokens left out; thinking switched off where the
        template has the switch (Qwen3's enable_thinking)."""
        import torch

        with self._lock:
            inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                        return_tensors="pt", enable_thinking=False).to(self.device)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
                self.tokenizer.eos_token_id
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False,
                                             pad_token_id=pad)
            prompt_length = inputs["input_ids"].shape[1]
            reply = output[0, prompt_length:]
            self.usage.add(int(prompt_length), int(reply.shape[0]))
            return self.tokenizer.decode(reply, skip_special_tokens=True)
