"""Fine-tuning a bi-encoder inside the study (issue 18): what training costs on a GPU, and whether
tuning helps on held-out questions on this CPU.

    python bench/bench_finetune.py gpu                   # XLM-R-large stand-in, 1,000 rows x 9 texts, bf16
    python bench/bench_finetune.py gpu --arch tiny-xlmr --rows 32 --device cpu   # its code path on a CPU
    python bench/bench_finetune.py cpu                   # configs/autorag-ko-finetune.yaml: base vs tuned MiniLM
    python bench/bench_finetune.py generated             # the same, trained on offline generated questions only
    python bench/bench_finetune.py cpu --smoke           # examples/ko-mini and a tiny stand-in: the code path

gpu: a random-weight stand-in of the architecture (bench_models.py's, with its tokenizer trained on
autorag-ko) trained through ragopt.tune.train.train on a synthetic table of `--rows` rows, each a
question (anchor), a passage (positive) and `--negatives` passages, every text distinct (the r-th
reuse of a text drops its first r characters) so that sentence-transformers' no-duplicates
sampler fills every batch. Tokens are the texts' token counts cut at max_length, as fed. The
share of the bf16 peak counts 6 x non-embedding parameters x tokens (forward and backward; the
embedding lookup does no matrix product), as bench_models.py counts 2 x for encoding; the cached
loss runs every forward twice (once without gradients), so its hardware share is 8/6 of it.
Seconds are train()'s own (trainer.train(), not loading or saving), so per epoch of 10,000 rows
is an upper bound: it includes the trainer's set-up and first-step warm-up.

cpu / generated: `ragopt optimize` in a fresh output folder (kept; its path is printed), then the
wall time, each tuned model's training time (its ragopt_tuning.json in the study's cache), and
base against tuned on the held-out questions: hit@1 and nDCG@10 with intervals and a paired test
(each choice's best trial picked on the selection questions), and ragopt.analysis.compare's
choice x domain matrix. generated: autorag-ko's passages written as one document each, offline
cloze questions generated from them (ragopt.generate), and the config turned into a documents
study (data.documents + corpus + qa, as_given chunks, data.generated_qa) whose tuned models train
on the generated questions only.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (  # noqa: E402  (the benchmark's own stand-ins)
    ARCHITECTURES,
    DATA,
    PEAK_BF16,
    build_model,
    environment,
    measured_peak,
    train_tokenizer,
)

from ragopt import load_dataset  # noqa: E402
from ragopt.stages.models import Locator, pick_device  # noqa: E402
from ragopt.stages.retrievers.dense import DenseSpec  # noqa: E402
from ragopt.stages.retrievers.tuning import FinetuneSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "autorag-ko-finetune.yaml"
KO_MINI = ROOT / "examples" / "ko-mini"
BATCH = {"cached_mnrl": 64, "cached_gist": 64, "mnrl": 16, "gist": 16}
"""Rows per step by loss: the cached losses fit a large batch in little memory; MNRL keeps every
text's activations at once (16 x 9 texts x 256 tokens is ~37k tokens a pass; 64 rows of XLM-R
large would need an estimated ~150 GB)."""
DOMAIN = r"^(\w+) - "
"""The domain in an autorag-ko or ko-mini passage id ('finance - ...')."""
METRICS = ("hit@1", "ndcg@10")


def bf16_peak(device: str) -> float:
    """The GPU's dense bf16 FLOP/s from bench_models.PEAK_BF16 (NaN off CUDA or for another GPU)."""
    if not device.startswith("cuda"):
        return float("nan")
    import torch

    return next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name(device)), float("nan"))


def distinct_texts(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct non-empty texts, shuffled: `texts`, then each of them without its first
    character, then without two, ... (a cut that empties a text or repeats one is passed over)."""
    found: dict[str, None] = {}
    for cut in range(max(map(len, texts))):
        for i in rng.permutation(len(texts)):
            text = texts[i][cut:]
            if text and text not in found:
                found[text] = None
                if len(found) == count:
                    ordered = [*found]
                    return [ordered[j] for j in rng.permutation(count)]
    raise ValueError(f"{len(found)} distinct texts at most from these, not {count}")


def synthetic_table(questions: list[str], passages: list[str], rows: int, negatives: int, seed: int) -> Any:
    """A TrainingTable of `rows` rows: anchor (a question), positive and `negatives` negatives (passages)."""
    from ragopt.tune.pool import TrainingTable

    rng = np.random.default_rng(seed)
    anchors = distinct_texts(questions, rows, rng)
    drawn = distinct_texts(passages, rows * (1 + negatives), rng)
    columns = {"anchor": anchors, "positive": drawn[:rows],
               **{f"negative_{k + 1}": drawn[rows * (k + 1):rows * (k + 2)] for k in range(negatives)}}
    return TrainingTable(columns, [f"q{i}" for i in range(rows)])


def gpu(args: argparse.Namespace) -> list[dict]:
    """Training throughput of the stand-in, one row per loss (a loss that would pass --budget is skipped)."""
    import torch

    from ragopt.tune.train import estimate, train

    started = time.perf_counter()
    device = pick_device(args.device)
    qa, corpus = load_dataset(args.data / "qa.parquet", args.data / "corpus.parquet")
    settings = ARCHITECTURES[args.arch]
    tokenizer = train_tokenizer(settings["family"], corpus.contents + qa.queries.texts)
    max_length = min(args.max_length, settings["max_position_embeddings"] - 2)
    table = synthetic_table(qa.queries.texts, corpus.contents, args.rows, args.negatives, args.seed)
    texts = [text for column in table.columns.values() for text in column]
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    peak, matmul = bf16_peak(device), measured_peak(device)
    flash = importlib.util.find_spec("flash_attn") is not None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as work:
        folder = Path(work) / f"{args.arch}-encoder"
        params = build_model(folder, args.arch, "encoder", tokenizer, seed=0)
        base = Locator()(str(folder))
        dense = DenseSpec(model=str(folder), max_length=max_length)
        print(f"stand-in {args.arch}: {params / 1e6:.1f}M non-embedding parameters; table: {len(table)} rows x "
              f"{len(table.columns)} texts, {tokens} tokens (max_length {max_length}); set-up "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        for loss in args.losses:
            spent = time.perf_counter() - started
            if rows and spent + rows[-1]["wall_s"] > args.budget:
                print(f"{loss}: skipped ({spent:.0f} s spent, the last loss took {rows[-1]['wall_s']:.0f} s, "
                      f"--budget {args.budget:.0f} s)", flush=True)
                continue
            batch = args.batch_size or BATCH[loss]
            ft = FinetuneSpec(loss=loss, epochs=1, learning_rate=2e-5, batch_size=batch, negatives=args.negatives,
                              mini_batch_size=args.mini_batch_size)
            began = time.perf_counter()
            estimated = estimate(base, dense, ft, table, device)
            _release(device)  # the probe's model, so that the peak memory is the training's own
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            log = train(base, dense, ft, table, Path(work) / f"tuned-{loss}", device, seed=args.seed)
            memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.startswith("cuda") else None
            seconds = log["seconds"]
            flops = 6 * params * tokens / seconds
            rows.append({
                "model": args.arch, "non_embedding_params": params, "loss": loss, "device": device,
                "precision": log["precision"],
                "flash_attention_2": flash, "rows": len(table), "texts": len(texts), "tokens": tokens,
                "max_length": max_length, "batch_size": batch,
                "mini_batch_size": args.mini_batch_size if loss.startswith("cached") else None, "steps": log["steps"],
                "seconds": seconds, "estimated_s": round(estimated, 2), "tokens_per_s": round(tokens / seconds),
                "TFLOP_per_s": round(flops / 1e12, 2),
                "of_bf16_peak": round(flops / peak, 3) if peak == peak else None,
                "of_measured_matmul": round(flops / matmul, 3) if matmul == matmul else None,
                "epoch_s_10k_rows": round(seconds * 10_000 / len(table), 1),
                "peak_memory_gib": round(memory, 1) if memory is not None else None,
                "final_loss": log["loss"][-1][2] if log["loss"] else None,
                "wall_s": round(time.perf_counter() - began, 1)})
            print(json.dumps(rows[-1]), flush=True)
            _release(device)
    return rows


def _release(device: str) -> None:
    """Free what the last model left on the device."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def study(args: argparse.Namespace) -> dict[str, Any]:
    """Run the config's study (made a documents study over generated questions in `generated`
    mode) in a fresh output folder and gather its figures."""
    output = Path(tempfile.mkdtemp(prefix=f"finetune-{args.what}-", dir=_out_folder()))
    config, generated = _config(args, output.parent / f"{output.name}-inputs")
    print(f"config {config}; output {output}", flush=True)
    command = [sys.executable, "-m", "ragopt", "optimize", str(config), "--output", str(output)]
    if args.n_trials:
        command += ["--n-trials", str(args.n_trials)]
    began = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    trials = pd.read_csv(output / "trials.csv")
    found = {"mode": args.what, "smoke": args.smoke, "config": str(config), "output": str(output),
             "wall_s": round(wall, 1), "trials": len(trials),
             "by_model": trials["choice.model"].astype(str).value_counts().to_dict(),
             "generated": generated, "models": tuned_models(_cache_folder(config, output)),
             "base_vs_tuned": base_vs_tuned(output)}
    _print_study(found)
    _print_matrices(output)
    return found


def tuned_models(cache: Path) -> list[dict]:
    """Each tuned model the study trained: its part, rows, steps, training seconds, device, last
    loss and curve (from the ragopt_tuning.json the study wrote into its folder)."""
    from ragopt.tune.crossfit import TUNING_FILE

    models = []
    for path in sorted(cache.rglob(TUNING_FILE)):
        about = json.loads(path.read_text(encoding="utf-8"))
        log = about["log"]
        models.append({"folder": path.parent.name[:12], "part": about["part"],
                       "settings": FinetuneSpec(**about["settings"]).describe(), "rows": about["rows"],
                       "real_questions": len(about["questions"]["real"]),
                       "generated_questions": about["questions"]["generated"], "steps": log["steps"],
                       "seconds": log["seconds"], "device": log["device"],
                       "last_loss": log["loss"][-1][2] if log["loss"] else None, "curve": log["curve"]})
    return models


def base_vs_tuned(output: Path) -> list[dict]:
    """Each tuned model choice against its base on the held-out questions, per metric: each
    choice's best trial by its selection mean (ragopt.analysis.compare.ranking), scored with a
    bootstrap interval, and the paired difference tuned - base with its interval and two-sided
    sign-flip p-value (ragopt.analysis.stats, as `ragopt compare` tests)."""
    from ragopt.analysis.compare import Settings, StudyResults, ranking
    from ragopt.analysis.stats import bootstrap_ci, paired_test

    results = StudyResults.load(output)
    settings = Settings(results.manifest["confidence"], 10_000, results.manifest["seed"])
    _, evaluation = results.sides()
    choices = results.trials["choice.model"].astype(str).to_numpy()
    rows = []
    for tuned in sorted(c for c in set(choices) if c.endswith("+ft")):
        base = tuned.removesuffix("+ft")
        for metric in METRICS:
            values = results.values(metric)
            order = ranking(results, metric)
            picks = {name: next((p for p in order if choices[p] == name), None) for name in (base, tuned)}
            if None in picks.values():
                continue
            row: dict[str, Any] = {"metric": metric, "questions": int(evaluation.sum()),
                                   "judged_on": "holdout" if results.has_holdout else "selection (flattered)"}
            for side, name in (("base", base), ("tuned", tuned)):
                mean, low, high = bootstrap_ci(values[evaluation, picks[name]], confidence=settings.confidence,
                                               n_resamples=settings.resamples, seed=settings.seed)
                row.update({f"{side}_trial": int(results.trials["trial"].iloc[picks[name]]),
                            f"{side}_pipeline": results.trials["pipeline"].iloc[picks[name]],
                            side: round(float(mean), 4), f"{side}_interval": [round(float(low), 4),
                                                                              round(float(high), 4)]})
            test = paired_test(values[evaluation, picks[tuned]], values[evaluation, picks[base]],
                               confidence=settings.confidence, n_resamples=settings.resamples, seed=settings.seed)
            row.update({"tuned_minus_base": round(test.difference, 4),
                        "difference_interval": [round(test.low, 4), round(test.high, 4)],
                        "p": round(test.p_value, 4)})
            rows.append(row)
    return rows


def _print_study(found: dict[str, Any]) -> None:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 80)
    print(f"\n=== {found['mode']}{' (smoke)' if found['smoke'] else ''}: {found['trials']} trials in "
          f"{found['wall_s']:.0f} s wall; trials by model: {found['by_model']}")
    if found["generated"]:
        print(f"generated questions: {found['generated']}")
    models = pd.DataFrame(found["models"])
    if len(models):
        print(f"tuned models ({len(models)}; {models['seconds'].sum():.0f} s of training in all):")
        print(models.drop(columns="curve").to_string(index=False))
        for model in found["models"]:
            if model["curve"]:
                print(f"  curve of {model['folder']} ({model['part']}): "
                      + ", ".join(f"epoch {e} {m} {v:.4f}" for e, m, v in model["curve"]))
    for row in found["base_vs_tuned"]:
        print(f"{row['metric']} on {row['questions']} {row['judged_on']} questions: base {row['base']:.4f} "
              f"{row['base_interval']} (trial {row['base_trial']}), tuned {row['tuned']:.4f} {row['tuned_interval']} "
              f"(trial {row['tuned_trial']} {row['tuned_pipeline']}); tuned - base {row['tuned_minus_base']:+.4f} "
              f"{row['difference_interval']}, p = {row['p']:.4f} (two-sided sign-flip)")


def _print_matrices(output: Path) -> None:
    """`ragopt compare OUTPUT --by model`'s choice x domain matrix for each metric."""
    from ragopt.analysis.compare import Settings, StudyResults, choice_matrix, described

    results = StudyResults.load(output)
    settings = Settings(results.manifest["confidence"], 10_000, results.manifest["seed"])
    for metric in METRICS:
        matrix = choice_matrix(results, metric, by="model", settings=settings)
        print(f"--- {metric}, best trial of each model per domain, scored {described(matrix)}")
        print(matrix[["choice", "domain", "questions", "score", "low", "high", "best", "difference", "p", "tied"]]
              .round(4).to_string(index=False))


def _out_folder() -> Path:
    folder = ROOT / "bench" / "out"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _config(args: argparse.Namespace, folder: Path) -> tuple[Path, dict[str, Any] | None]:
    """The config the study runs (written into `folder` unless it is --config as it is) and, in
    generated mode, what the generation did."""
    if args.what == "cpu" and not args.smoke:
        return args.config, None
    folder.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    base = args.config.resolve().parent
    data = config["data"]
    for key in ("qa", "corpus"):
        data[key] = str((base / data[key]).resolve())
    if args.smoke:  # ko-mini and a tiny stand-in: every step in a minute or two
        data.update(qa=str(KO_MINI / "qa.jsonl"), corpus=str(KO_MINI / "corpus.jsonl"), domain_column="domain")
        data.pop("domain_pattern", None)
        model = folder / "tiny-encoder"
        qa, corpus = load_dataset(KO_MINI / "qa.jsonl", KO_MINI / "corpus.jsonl")
        build_model(model, "tiny-xlmr", "encoder", train_tokenizer("xlmr", corpus.contents + qa.queries.texts), 0)
        for entry in config["retrievers"]:  # a random model scores every passage alike: no margin
            if entry.get("type") == "dense":
                entry["model"] = str(model)
                entry.setdefault("finetune", {}).update(epochs=1, margin=0.0)
    generated = None
    if args.what == "generated":
        generated = _documents_study(config, folder, args)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, generated


def _documents_study(config: dict[str, Any], folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Turn the config into a study over documents (one per passage of its corpus) whose tuned
    models train on offline questions generated from them; returns what the generation did."""
    from ragopt.generate import generate_qa

    data = config["data"]
    _, corpus = load_dataset(data["qa"], data["corpus"])
    documents = folder / "documents.jsonl"
    with open(documents, "w", encoding="utf-8") as out:
        for doc_id, text in zip(corpus.doc_ids, corpus.contents):
            out.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    questions = folder / "generated.jsonl"
    made = generate_qa(documents, questions, questions=args.questions, generator="offline", seed=args.seed,
                       domain_pattern=DOMAIN)
    data.update(documents=str(documents), generated_qa=str(questions))
    config["chunkers"] = [{"name": "passage", "type": "as_given"}]
    for entry in config["retrievers"]:
        if entry.get("finetune") is not None:
            entry["finetune"]["questions"] = ["generated"]
    return {"questions": made.written, "passages": made.passages, "rejected": dict(made.rejected),
            "seconds": round(made.seconds, 2)}


def _cache_folder(config: Path, output: Path) -> Path:
    """Where the study keeps its cache: the config's cache_dir (beside the config) or OUTPUT/cache."""
    named = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("cache_dir")
    return (config.resolve().parent / named).resolve() if named else output / "cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["gpu", "cpu", "generated"])
    parser.add_argument("--device", default="auto", help="gpu mode's device")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), default="xlmr-large", help="gpu mode's stand-in")
    parser.add_argument("--rows", type=int, default=1000, help="gpu mode: training rows")
    parser.add_argument("--negatives", type=int, default=7, help="gpu mode: hard negatives per row")
    parser.add_argument("--max-length", type=int, default=256, help="gpu mode: tokens per text at most")
    parser.add_argument("--losses", nargs="+", choices=list(BATCH), default=["cached_mnrl", "mnrl"])
    parser.add_argument("--batch-size", type=int,
                        help="gpu mode: rows per step (default: 64 for the cached losses, 16 for the others)")
    parser.add_argument("--mini-batch-size", type=int, default=64, help="gpu mode: the cached losses' mini-batch")
    parser.add_argument("--budget", type=float, default=120,
                        help="gpu mode: seconds; a further loss is skipped when it would pass them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=lambda p: Path(p).resolve(), default=DATA,
                        help="gpu mode: folder with AutoRAG's qa.parquet and corpus.parquet")
    parser.add_argument("--config", type=lambda p: Path(p).resolve(), default=CONFIG, help="cpu/generated: the study")
    parser.add_argument("--questions", type=int, default=300, help="generated mode: offline questions to generate")
    parser.add_argument("--n-trials", type=int, help="cpu/generated: override study.n_trials")
    parser.add_argument("--smoke", action="store_true",
                        help="cpu/generated: examples/ko-mini and a tiny random stand-in, one epoch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.what == "gpu":
        setting = environment(pick_device(args.device))
        print(json.dumps(setting), flush=True)
        rows = gpu(args)
        pd.set_option("display.width", 250)
        print(pd.DataFrame(rows).to_string(index=False))
        found: dict[str, Any] = {"environment": setting, "rows": rows}
    else:
        if args.smoke and args.what == "generated":
            args.questions = min(args.questions, 40)
        found = {"environment": environment("cpu"), **study(args)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
