"""A study's tuned models: the cross-fitting Tuner built from the study's data and splits, the
tuned folders copied beside best.yaml, and tuning.csv (each model's loss per step and held-out
scores per epoch, which the report draws)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ragopt.analysis.splits import fold_ids
from ragopt.files import atomic_write, safe_name
from ragopt.search.config import Config
from ragopt.stages.labels import model_label, tuned_label
from ragopt.stages.retrievers.dense import DenseConfig, DenseSpec
from ragopt.stages.spec import PipelineSpec
from ragopt.study.data import StudyData
from ragopt.tune.crossfit import FINAL, TUNING_CSV, Questions, Tuner, read_tuning

TUNED = "tuned"
"""The folder beside best.yaml that holds the exported tuned models."""


def study_tuner(config: Config, data: StudyData, held: np.ndarray, folds: np.ndarray | None,
                progress: bool, final_only: bool = False) -> Tuner | None:
    """The Tuner of a study whose space has a tuned dense entry (None otherwise): its models follow
    the study's folds when it has them, else each tuning's own folds of the selection questions;
    `final_only` (`ragopt finetune`): the final model alone."""
    if not any(isinstance(entry, DenseConfig) and entry.finetune is not None for entry in config.retrievers):
        return None
    bm25 = {entry.name: entry.warm_up_specs() for entry in config.retrievers if entry.type == "bm25"}
    generated = Questions(data.generated.qa, data.generated.target) if data.generated is not None else None
    domains, seed = data.qa.domains, config.study.seed
    return Tuner(Questions(data.qa, data.target), held, folds, bm25, seed, generated, progress,
                 fold_ids=lambda k: fold_ids(domains, held, k, seed), final_only=final_only)


def export_tuned(tuner: Tuner, spec: PipelineSpec, output: Path, best: Path) -> tuple[PipelineSpec, dict[str, Any]]:
    """The pipeline as best.yaml (at `best`) stores it: each tuned part's final model copied (hard
    links where the file system allows) to `output/tuned/<name>/` and named relative to best.yaml,
    with each model's own account (base, settings, training questions) for the provenance."""
    final = tuner.final(spec)
    tuned = {d.key(): d for d in tuner.tuned(spec)}
    names: dict[str, str] = {}
    accounts: dict[str, Any] = {}
    for original, concrete in zip(spec.retriever.components() or [spec.retriever],
                                  final.retriever.components() or [final.retriever]):
        if original.key() not in tuned:
            continue
        folder = Path(concrete.model)
        name = safe_name(f"{model_label(original.model)}-{original.finetune.loss}-{folder.name[:8]}")
        target = output / TUNED / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, target, copy_function=_link_or_copy)
        relative = Path(os.path.relpath(target, best.parent)).as_posix()
        names[concrete.model] = relative if relative.startswith("..") else f"./{relative}"
        account = read_tuning(folder) or {}
        accounts[names[concrete.model]] = {k: v for k, v in account.items() if k != "log"} | {
            "seconds": (account.get("log") or {}).get("seconds")}

    def renamed(part: Any) -> Any:
        return part.model_copy(update={"model": names[part.model]}) if isinstance(part, DenseSpec) and \
            part.model in names else part

    return final.with_retrievers(renamed), accounts


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_tuning_csv(tuner: Tuner, specs: list[PipelineSpec], output: Path) -> None:
    """tuning.csv: for every tuned setting of the trials, each of its models' training loss per
    step and (final models, with a holdout) held-out nDCG@10 and hit@1 per epoch, epoch 0 the base."""
    rows = []
    seen = set()
    for spec in specs:
        for dense in tuner.tuned(spec):
            key = ((spec.chunker.key() if spec.chunker else ""), dense.key())
            if key in seen:
                continue
            seen.add(key)
            for fold in dict.fromkeys([*tuner.models_of(spec), *([FINAL] if tuner.held.any() else [])]):
                account = read_tuning(tuner.model(spec, dense, fold)) or {}
                log = account.get("log") or {}
                common = {"model": tuned_label(dense.model), "setting": dense.describe(),
                          "part": account.get("part", "")}
                rows += [{**common, "kind": "loss", "on": "training", "step": s, "epoch": e, "value": v}
                         for s, e, v in log.get("loss", [])]
                rows += [{**common, "kind": name, "on": "held-out", "step": None, "epoch": e, "value": v}
                         for e, name, v in log.get("curve", [])]
    if rows:
        atomic_write(output / TUNING_CSV, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
