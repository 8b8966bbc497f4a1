"""Training one tuned bi-encoder with sentence-transformers' own trainer, losses, no-duplicates
batches and retrieval evaluator: ragopt states the settings, reads the log back and saves the
model. The curve (scores on questions the model never trains on, after each epoch) is only
reported: it never stops training early nor picks an epoch."""

from __future__ import annotations

import functools
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragopt.errors import ModelError
from ragopt.provenance import versions
from ragopt.stages.cache import cache_key
from ragopt.stages.models import Located, attention_kernels, device_type, load_model
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tuning import GIST_LOSSES, FinetuneSpec

if TYPE_CHECKING:
    from ragopt.tune.pool import TrainingTable

WARMUP = 0.1
"""The share of the steps over which the learning rate rises linearly from 0."""
CURVE = {"ndcg@10": "ndcg@10", "hit@1": "accuracy@1"}
"""The curve's metrics by ragopt's names, with the names sentence-transformers' evaluator logs them under."""
LIBRARIES = ("torch", "transformers", "sentence-transformers", "datasets", "accelerate")


@dataclass(frozen=True)
class CurveSet:
    """Questions a model never trains on, scored after each epoch (InformationRetrievalEvaluator).
    Texts as the data has them: train() adds the dense spec's prefixes and prompts."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    name: str = "held-out"


def train(base: Located, dense: DenseSpec, ft: FinetuneSpec, table: TrainingTable, folder: Path, device: str,
          seed: int, curve: CurveSet | None = None, guide: Located | None = None, progress: bool = False
          ) -> dict[str, Any]:
    """Train a fresh fp32 copy of the base model on the table, save it into `folder`
    (SentenceTransformer.save) and return the log: steps, seconds, device, precision, the loss
    at every step ([step, epoch, value]), the curve ([epoch, metric, value], epoch 0 before
    training; none when no curve question has a relevant passage) and the library versions.
    GIST's guide is the base model itself unless named."""
    if curve is not None and not any(curve.relevant.get(qid) for qid in curve.queries):
        curve = None
    model = _load(base, dense, device)
    guide_model = _load(guide or base, dense, device, frozen=True) if ft.loss in GIST_LOSSES else None
    with tempfile.TemporaryDirectory(prefix="ragopt-tune-") as scratch:
        trainer = _trainer(model, dense, ft, table, device, seed, scratch, curve, guide_model, progress)
        start = time.perf_counter()
        with attention_kernels(device):
            trainer.train()
        seconds = time.perf_counter() - start
    model.save(str(folder), create_model_card=False)
    history = trainer.state.log_history
    return {"steps": trainer.state.global_step, "seconds": round(seconds, 3), "device": device,
            "precision": _precision(device),
            "loss": [[entry["step"], entry["epoch"], entry["loss"]] for entry in history if "loss" in entry],
            "curve": _curve(history, curve, dense),
            "versions": versions(*LIBRARIES)}


_STEP_SECONDS: dict[tuple, float] = {}


def estimate(base: Located, dense: DenseSpec, ft: FinetuneSpec, table: TrainingTable, device: str) -> float:
    """Seconds one training of this table will take: one probe step (forward and backward on
    the first batch, no optimizer step) times the steps. The probe is measured once per base
    model, input length, loss, batch size, column count and device in a process."""
    key = (cache_key(base.identity), dense.max_length, ft.loss, ft.batch_size, len(table.columns), device)
    if key not in _STEP_SECONDS:
        _STEP_SECONDS[key] = _probe(base, dense, ft, table, device)
    return _STEP_SECONDS[key] * math.ceil(len(table) / ft.batch_size) * ft.epochs


def _probe(base: Located, dense: DenseSpec, ft: FinetuneSpec, table: TrainingTable, device: str) -> float:
    import torch

    model = _load(base, dense, device)
    guide = _load(base, dense, device, frozen=True) if ft.loss in GIST_LOSSES else None
    with tempfile.TemporaryDirectory(prefix="ragopt-tune-") as scratch:
        trainer = _trainer(model, dense, ft, table, device, 0, scratch, guide_model=guide)
        batch = next(iter(trainer.get_train_dataloader()))
        model.train()
        start = time.perf_counter()
        with attention_kernels(device), trainer.accelerator.autocast():
            loss = trainer.compute_loss(model, batch)
        trainer.accelerator.backward(loss)
        if device_type(device) == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def _precision(device: str) -> str:
    """Mixed precision on CUDA (bf16 where the GPU has it, else fp16) over fp32 weights; fp32 elsewhere."""
    if device_type(device) != "cuda":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _load(located: Located, dense: DenseSpec, device: str, frozen: bool = False) -> Any:
    """A fresh copy of the model in fp32 (never the pool's inference copy: training changes it),
    with FlashAttention-2 on CUDA where flash_attn is installed (sentence-transformers then packs
    the batch without padding). Frozen: GIST's guide, never trained."""
    import importlib.util

    import torch
    from sentence_transformers import SentenceTransformer

    flash = device_type(device) == "cuda" and importlib.util.find_spec("flash_attn") is not None
    kwargs = {"attn_implementation": "flash_attention_2"} if flash else {}
    model = load_model("dense", located, lambda path: SentenceTransformer(
        path, device=device, trust_remote_code=dense.trust_remote_code, model_kwargs=kwargs))
    model.to(torch.float32)
    if dense.max_length is not None:
        model.max_seq_length = dense.max_length
    if frozen:
        model.requires_grad_(False)
        model.eval()
    return model


def _trainer(model: Any, dense: DenseSpec, ft: FinetuneSpec, table: TrainingTable, device: str, seed: int,
             output_dir: str, curve: CurveSet | None = None, guide_model: Any = None, progress: bool = False) -> Any:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import PrinterCallback, ProgressCallback

    precision, prompts = _precision(device), _prompts(model, dense)
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=ft.epochs, per_device_train_batch_size=ft.batch_size,
        learning_rate=ft.learning_rate, warmup_steps=WARMUP, seed=seed, data_seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=1, logging_nan_inf_filter=False,
        eval_strategy="epoch" if curve is not None else "no", eval_on_start=curve is not None,
        save_strategy="no", load_best_model_at_end=False, report_to="none",
        use_cpu=device_type(device) == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
        prompts=_column_prompts(prompts, list(table.columns)) or None, disable_tqdm=not progress)
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_dict(table.columns), loss=_loss(model, ft, guide_model),
        evaluator=_evaluator(curve, dense, prompts) if curve is not None else None)
    trainer.remove_callback(ProgressCallback if progress else PrinterCallback)  # no line per logged step
    if progress:
        trainer.add_callback(_bar())
    return trainer


@functools.cache
def _trainer_class() -> type:
    import torch
    from sentence_transformers import SentenceTransformerTrainer

    class Trainer(SentenceTransformerTrainer):
        """sentence-transformers' trainer whose evaluation leaves the random state as it found it
        (its data loader draws a seed from torch's generator, which changed the dropout of every
        later step: the curve steered the training), without the model card's bookkeeping (no card
        is written; it tokenizes a sample of the table and draws widget examples)."""

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            with torch.random.fork_rng(devices=[] if self.args.device.type == "cpu" else [self.args.device]):
                return super().evaluate(*args, **kwargs)

        def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
            pass

    return Trainer


def _bar() -> Any:
    """The trainer's progress bar without its line per log entry (a log entry every step here)."""
    from transformers import ProgressCallback

    class Bar(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            pass

    return Bar()


def _prompts(model: Any, dense: DenseSpec) -> dict[str, str]:
    """The prompt text of the query and of the passage, as the retriever's model.encode applies
    them: the named prompt, else the model's default prompt, else none (""). Training and the
    curve use the same; prefixes are already in the texts."""
    found = {}
    for role, name in (("query", dense.query_prompt_name), ("passage", dense.passage_prompt_name)):
        name = name if name is not None else model.default_prompt_name
        if name is not None and name not in model.prompts:
            raise ModelError(f"model {dense.model!r} has no prompt named {name!r} (it has {sorted(model.prompts)}); "
                             "fix query_prompt_name / passage_prompt_name, or use query_prefix / passage_prefix")
        found[role] = (model.prompts[name] or "") if name is not None else ""
    return found


def _column_prompts(prompts: dict[str, str], columns: list[str]) -> dict[str, str]:
    """The trainer's prompt per column: the query's for the anchor, the passage's for the others."""
    found = {column: prompts["query" if column == "anchor" else "passage"] for column in columns}
    return {column: prompt for column, prompt in found.items() if prompt}


def _loss(model: Any, ft: FinetuneSpec, guide: Any) -> Any:
    from sentence_transformers.sentence_transformer import losses

    if ft.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model)
    if ft.loss == "cached_mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=ft.mini_batch_size)
    if ft.loss == "gist":
        return losses.GISTEmbedLoss(model, guide, margin_strategy="relative", margin=ft.margin)
    return losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=ft.mini_batch_size, margin_strategy="relative",
                                      margin=ft.margin)


def _similarity(dense: DenseSpec) -> str:
    """What the retriever ranks by: cosine when it normalizes, else the dot product."""
    return "cosine" if dense.normalize else "dot"


def _evaluator(curve: CurveSet, dense: DenseSpec, prompts: dict[str, str]) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim, dot_score

    return InformationRetrievalEvaluator(
        queries={qid: dense.query_prefix + text for qid, text in curve.queries.items()},
        corpus={cid: dense.passage_prefix + text for cid, text in curve.corpus.items()},
        relevant_docs=curve.relevant, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[1],
        map_at_k=[10], batch_size=dense.batch_size, name=curve.name, write_csv=False,
        score_functions={_similarity(dense): cos_sim if dense.normalize else dot_score},
        query_prompt=prompts["query"], corpus_prompt=prompts["passage"])


def _curve(history: list[dict[str, Any]], curve: CurveSet | None, dense: DenseSpec) -> list[list[Any]]:
    """[epoch, metric, value] from the trainer's log: its evaluations in order are epochs 0 (before
    training), 1, 2... (counted, not read from the log's fractional epoch, which an epoch of fewer
    batches than planned leaves short of a whole number)."""
    if curve is None:
        return []
    keys = {name: f"eval_{curve.name}_{_similarity(dense)}_{key}" for name, key in CURVE.items()}
    evaluations = [entry for entry in history if keys["ndcg@10"] in entry]
    return [[epoch, name, entry[key]] for epoch, entry in enumerate(evaluations) for name, key in keys.items()]
