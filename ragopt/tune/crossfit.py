"""Cross-fitting: which tuned model answers which question, so that no question is ever scored by a
model trained on it. The selection questions are dealt into folds (the study's own folds, else
the tuning's); the model of fold f trains on the other folds' questions and answers fold f's; the
final model trains on every selection question, answers the held-out ones and is what best.yaml
exports. A model trained on generated questions only answers every real question."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from ragopt.data.qa import QASet
from ragopt.errors import StudyError
from ragopt.provenance import versions
from ragopt.scoring.evaluation import Target
from ragopt.stages.cache import cache_key, entry_key
from ragopt.stages.models import device_type
from ragopt.stages.retrievers import RetrieverSpec
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tuning import GIST_LOSSES, FinetuneSpec
from ragopt.stages.spec import PipelineSpec
from ragopt.tune.pool import TrainingSource, TrainingTable, normalized, training_table, unseen_generated

FINAL = None
"""The part of the final model (every selection question), beside folds 0..k-1."""
TUNING_FILE = "ragopt_tuning.json"
"""What a tuned model's folder says of itself: base, part, settings, training questions, log."""
TRAINING_FILE = "training.jsonl"
"""The training table a tuned model's folder keeps: the audit of what it saw."""
TUNING_CSV = "tuning.csv"
"""Each tuned model's loss per step and held-out scores per epoch, in a study's output folder."""

Plan = list[tuple[PipelineSpec, np.ndarray]]


@dataclass(frozen=True)
class Questions:
    """A question set and what its pipelines are scored against (per chunking over documents)."""

    qa: QASet
    target: Callable[[PipelineSpec], Target]


class Tuner:
    """Trains (once, through the cache) the tuned models a study's pipelines name, and says which
    of them answers each question.

    Example:
        tuner = Tuner(Questions(qa, data.target), held, folds=None, bm25={"bm25": specs}, seed=7)
        for concrete, rows in tuner.plan(spec):  # concrete: the tuned folders in place of `finetune`
            ranking = engine.run(concrete, Queries([qa.queries.texts[i] for i in rows]))
        best = tuner.final(spec)                   # what best.yaml exports
    """

    def __init__(self, questions: Questions, held: np.ndarray, folds: np.ndarray | None,
                 bm25: dict[str, list[RetrieverSpec]], seed: int, generated: Questions | None = None,
                 progress: bool = False, fold_ids: Callable[[int], np.ndarray] | None = None,
                 final_only: bool = False) -> None:
        """`folds`: the study's folds of the selection questions (HOLDOUT for held-out ones), which
        the tuned models then follow; None: `fold_ids(k)` deals them into a tuning's k folds.
        `final_only`: nothing is selected (`ragopt finetune`), so nothing is cross-fitted: the
        final model is the only one."""
        self.questions, self.held, self.folds, self.generated = questions, held, folds, generated
        self.bm25, self.seed, self.progress = bm25, seed, progress
        self.fold_ids, self.final_only = fold_ids, final_only
        self._models: dict[tuple[str, str, int, int | None], Path] = {}

    def tuned(self, spec: PipelineSpec) -> list[DenseSpec]:
        """The pipeline's dense parts that ask to be tuned."""
        parts = spec.retriever.components() or [spec.retriever]
        return [p for p in parts if isinstance(p, DenseSpec) and p.finetune is not None]

    def parts(self, spec: PipelineSpec) -> np.ndarray:
        """Each real question's fold for this pipeline's tuning (HOLDOUT: held out)."""
        if self.folds is not None:
            return self.folds
        assert self.fold_ids is not None, "a Tuner without study folds needs fold_ids"
        return self.fold_ids(self.tuned(spec)[0].finetune.folds)

    def plan(self, spec: PipelineSpec) -> Plan:
        """The concrete pipelines that answer the questions, each with the QA rows it answers."""
        n = len(self.questions.qa)
        if not self.tuned(spec):
            return [(spec, np.arange(n))]
        if self.generated_only(spec):  # no real question trains: one model answers them all
            return [(self.concrete(spec, FINAL), np.arange(n))]
        part = self.parts(spec)
        return [(self.concrete(spec, f), np.flatnonzero(part == f if f is not FINAL else self.held))
                for f in self.models_of(spec)]

    def generated_only(self, spec: PipelineSpec) -> bool:
        """Whether only generated questions train the pipeline's models."""
        return all(d.finetune.questions == "generated" for d in self.tuned(spec))

    def models_of(self, spec: PipelineSpec) -> list[int | None]:
        """The parts whose models answer the pipeline's questions: each fold's, then the final
        model's when some questions are held out (or it alone, trained on generated questions)."""
        if self.final_only or self.generated_only(spec):
            return [FINAL]
        return [*range(int(self.parts(spec).max()) + 1), *([FINAL] if self.held.any() else [])]

    def final(self, spec: PipelineSpec) -> PipelineSpec:
        """The pipeline with its final models: trained on every selection question (best.yaml's)."""
        return self.concrete(spec, FINAL)

    def concrete(self, spec: PipelineSpec, fold: int | None) -> PipelineSpec:
        """The pipeline with each tuned part replaced by the folder of its model for `fold`."""
        if not self.tuned(spec):
            return spec

        def swap(part: RetrieverSpec) -> RetrieverSpec:
            if isinstance(part, DenseSpec) and part.finetune is not None:
                return part.base().model_copy(update={"model": str(self.model(spec, part, fold))})
            return part

        return spec.with_retrievers(swap)

    def model(self, spec: PipelineSpec, dense: DenseSpec, fold: int | None) -> Path:
        """The folder of the model tuned for this pipeline's corpus, trained (once) on the
        questions the fold allows."""
        chunker = spec.chunker.key() if spec.chunker is not None else ""
        split = int(self.parts(spec).max()) + 1  # the folds this pipeline's questions are dealt into
        memo = (chunker, dense.key(), split, fold)
        if memo not in self._models:
            self._models[memo] = self._train(spec, dense, fold)
        return self._models[memo]

    def allowed(self, spec: PipelineSpec, ft: FinetuneSpec, fold: int | None) -> np.ndarray:
        """The only door into training: the real questions a model of `fold` may see (never a
        held-out one, never one of its own fold, never one whose text, NFC and whitespace folded,
        is also the text of a question the model answers)."""
        if ft.questions == "generated":
            return np.zeros(len(self.held), dtype=bool)
        part = self.parts(spec)
        allowed = (part >= 0) & ~self.held  # held-out questions have no fold (-1)
        if fold is not FINAL:
            allowed &= part != fold
        texts = [normalized(t) for t in self.questions.qa.queries.texts]
        answered = {texts[i] for i in np.flatnonzero(~allowed)}
        return allowed & np.array([t not in answered for t in texts], dtype=bool)

    def sources(self, spec: PipelineSpec, ft: FinetuneSpec,
                fold: int | None) -> list[tuple[TrainingSource, np.ndarray]]:
        """The questions a model trains on, each set over its own corpus."""
        qa, target = self.questions.qa, self.questions.target(spec)
        rows = np.flatnonzero(self.allowed(spec, ft, fold))
        found = []
        if len(rows):
            found.append((TrainingSource(target.engine, qa.qids, qa.queries.texts, target.groups), rows))
        if ft.questions != "selection" and self.generated is not None:
            generated = self.generated.qa
            gen_target = self.generated.target(spec)
            source = TrainingSource(gen_target.engine, generated.qids, generated.queries.texts, gen_target.groups,
                                    generated=True)
            found.append((source, unseen_generated(source, qa.queries.texts)))
        return found

    def _train(self, spec: PipelineSpec, dense: DenseSpec, fold: int | None) -> Path:
        from ragopt.tune.train import estimate, train

        ft = dense.finetune
        assert ft is not None
        base = dense.base()
        target = self.questions.target(spec)
        engine = target.engine
        sources = self.sources(spec, ft, fold)
        table = training_table(sources, base, ft, self._bm25(ft), self.progress)
        if not len(table):
            why = (f"every question lacked {ft.negatives} hard negatives below the margin ({table.dropped} pairs left "
                   "out): lower finetune.margin or finetune.negatives" if table.dropped else
                   "no question may train it: lower study.holdout or finetune.folds, or add generated questions")
            raise StudyError(f"{dense.describe()} has nothing to train on for {part_name(fold, spec, self)}: {why}")
        located = engine.locate(base.model)
        guide = engine.locate(ft.guide) if ft.guide and ft.loss in GIST_LOSSES else None
        curve = self._curve(spec, fold)
        settings = base.model_dump(exclude={"model", "batch_size", "dtype"})
        key = entry_key("tuned", located.identity, guide.identity if guide else None, settings,
                        ft.model_dump(exclude={"folds", "bm25", "guide"}), table.key(), _curve_key(curve),
                        self.seed, device_type(engine.device),
                        versions("torch", "transformers", "sentence-transformers", "datasets", "accelerate"))

        def build(folder: Path) -> None:
            seconds = estimate(located, base, ft, table, engine.device)
            if self.progress:
                tqdm.write(f"tuning {dense.describe()} ({part_name(fold, spec, self)}): {len(table)} training rows, "
                           f"about {_duration(seconds)} on {device_type(engine.device)}")
            log = train(located, base, ft, table, folder, engine.device, self.seed, curve, guide, self.progress)
            real = {q for s, r in sources if not s.generated for q in _qids(s, r)} & set(table.qids)
            held = {self.questions.qa.qids[i] for i in np.flatnonzero(self.held)}
            _write_audit(folder, table, {
                "base": {"model": base.model, "identity": located.identity},
                "part": part_name(fold, spec, self), "settings": ft.model_dump(mode="json"),
                "questions": {"real": sorted(real), "generated": sum(len(r) for s, r in sources if s.generated),
                              "held_out_in_training": len(real & held)},
                "rows": len(table), "log": log})

        return engine.cache.folder("tuned", key, build)

    def _bm25(self, ft: FinetuneSpec) -> list[RetrieverSpec]:
        if ft.negatives == 0 or ft.negatives_from == "model":
            return []
        return self.bm25[ft.bm25] if ft.bm25 is not None else next(iter(self.bm25.values()))

    def _curve(self, spec: PipelineSpec, fold: int | None) -> Any:
        """The held-out questions a final model is scored on after each epoch (none for fold models)."""
        from ragopt.tune.train import CurveSet

        if fold is not FINAL or not self.held.any():
            return None
        qa, target = self.questions.qa, self.questions.target(spec)
        corpus = target.engine.corpus
        rows = np.flatnonzero(self.held)
        ids = corpus.doc_ids
        return CurveSet(queries={qa.qids[i]: qa.queries.texts[i] for i in rows},
                        corpus=dict(zip(ids, corpus.contents)),
                        relevant={qa.qids[i]: {ids[r] for g in target.groups[i] for r in g} for i in rows})


def part_name(fold: int | None, spec: PipelineSpec, tuner: Tuner) -> str:
    """'final' or 'fold 2 of 3', as the audit and the progress say it."""
    if fold is FINAL:
        return "final"
    return f"fold {fold + 1} of {int(tuner.parts(spec).max()) + 1}"


def _qids(source: TrainingSource, rows: np.ndarray) -> list[str]:
    return [source.qids[i] for i in rows]


def _write_audit(folder: Path, table: TrainingTable, about: dict[str, Any]) -> None:
    """The model's own account (TUNING_FILE) and its training table (TRAINING_FILE), one row a line."""
    (folder / TUNING_FILE).write_text(json.dumps(about, ensure_ascii=False, indent=1), encoding="utf-8")
    names = list(table.columns)
    with open(folder / TRAINING_FILE, "w", encoding="utf-8") as out:
        for i, qid in enumerate(table.qids):
            out.write(json.dumps({"qid": qid, **{n: table.columns[n][i] for n in names}}, ensure_ascii=False) + "\n")


def _curve_key(curve: Any) -> str | None:
    """The content of a curve's questions, corpus and relevance (None: no curve)."""
    if curve is None:
        return None
    return cache_key(curve.queries, curve.corpus, sorted((q, sorted(r)) for q, r in curve.relevant.items()))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def read_tuning(folder: str | Path) -> dict[str, Any] | None:
    """A tuned model folder's own account, or None for a model that ragopt did not tune."""
    path = Path(folder) / TUNING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def trained_on(folders: Sequence[Path]) -> set[str]:
    """Every question id any of these tuned models' tables holds (for audits and tests)."""
    found: set[str] = set()
    for folder in folders:
        with open(Path(folder) / TRAINING_FILE, encoding="utf-8") as rows:
            found.update(json.loads(line)["qid"] for line in rows)
    return found
