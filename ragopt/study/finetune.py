"""`ragopt finetune`: train a config's tuned bi-encoder once, without a study, and judge it
honestly. Nothing is selected, so nothing is cross-fitted: the one (final) model trains on every
question that is not held out (and generated ones, when its `questions` says so), and base and
tuned are scored on the held-out questions it never saw, with intervals and a paired test."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragopt.analysis.splits import HOLDOUT, study_splits
from ragopt.analysis.stats import PairedComparison, bootstrap_ci, paired_test
from ragopt.analysis.summary import difference, interval, table
from ragopt.analysis.trust import Score
from ragopt.errors import ConfigError
from ragopt.files import write_text
from ragopt.provenance import library_versions
from ragopt.scoring.evaluation import Evaluator
from ragopt.search.config import Config, load_config
from ragopt.serving.export import Exported, write_best
from ragopt.stages.labels import model_label
from ragopt.stages.models import device_type
from ragopt.stages.params import FloatRange, IntRange, Options, did_you_mean
from ragopt.stages.protocol import STAGES
from ragopt.stages.retrievers.dense import DenseConfig, DenseSpec
from ragopt.stages.spec import PipelineSpec
from ragopt.study.data import StudyData, load_study_data
from ragopt.study.tuning import TUNED, TUNING_CSV, export_tuned, study_tuner, write_tuning_csv
from ragopt.tune.crossfit import Tuner, read_tuning

METRICS = ("hit@1", "ndcg@10")
"""What base and tuned are compared on, per question."""
REPORT = "finetune"
"""OUT/finetune.json and OUT/finetune.md."""
ONE_MODEL = "ragopt finetune trains one model; give one value per setting or search them with ragopt optimize"


def default_output(config_path: Path) -> Path:
    return config_path.resolve().parent / f"{config_path.stem}-finetune"


@dataclass(frozen=True)
class Comparison:
    """Base against tuned on one metric."""

    base: Score
    tuned: Score
    tuned_minus_base: PairedComparison


@dataclass(frozen=True)
class TunedModel:
    """One tuned entry's final model: what trained it, where it lies, and how it compares."""

    retriever: str
    base: str
    setting: str
    folder: str
    """The tuned model, relative to the output folder (./tuned/<name>)."""
    best: str
    """Its best.yaml-schema file in the output folder (tuned.yaml)."""
    rows: int
    training_questions: int
    generated_questions: int
    seconds: float
    device: str
    scored_on: str | None
    """'held-out' (the study's holdout), 'every real question' (trained on generated ones only), or
    None: every question trained it, so no score is honest."""
    questions: int
    """The questions the comparison is on."""
    compared: dict[str, Comparison] | None


@dataclass(frozen=True)
class Finetuned:
    """What `ragopt finetune` wrote."""

    output: Path
    models: list[TunedModel]


def finetune(config_path: str | Path, output: str | Path | None = None, retriever: str | None = None,
             progress: bool = True) -> Finetuned:
    """Train the final model of each tuned dense entry of a config (or of the one named
    `retriever`) on its questions that are not held out, write each model and its tuned.yaml, and
    compare base and tuned on the held-out questions (finetune.json, finetune.md, tuning.csv)."""
    config_path = Path(config_path)
    config, _ = load_config(config_path)
    entries = _tuned_entries(config, config_path, retriever)
    specs = {entry.name: _pipeline(config, config_path, entry) for entry in entries}
    output = Path(output) if output is not None else default_output(config_path)
    data = load_study_data(config, config.cache_dir or output / "cache", progress)
    held, _ = study_splits(config.study, data.qa.domains, len(data.qa))
    tuner = study_tuner(config, data, held, np.where(held, HOLDOUT, 0), progress, final_only=True)
    assert tuner is not None  # the config has a tuned entry (_tuned_entries)
    evaluator = Evaluator(data.target, data.qa, sorted({*config.top_k, 1, 10}), config.optimize, config.study.seed)
    _clear(output)
    models = [_train_one(config, data, tuner, evaluator, name, spec, output, held, len(entries))
              for name, spec in specs.items()]
    write_tuning_csv(tuner, list(specs.values()), output)
    finished = Finetuned(output, models)
    _write_reports(finished, config_path, config, len(data.qa), held)
    return finished


def _tuned_entries(config: Config, path: Path, name: str | None) -> list[DenseConfig]:
    """The dense entries with `finetune:` (only the one named, when a name is given)."""
    tuned = [e for e in config.retrievers if isinstance(e, DenseConfig) and e.finetune is not None]
    if name is None:
        if not tuned:
            raise ConfigError(f"{path}: no dense retriever has a finetune: block; add one to a dense entry (see "
                              "configs/autorag-ko-finetune.yaml)")
        return tuned
    names = [e.name for e in config.retrievers]
    if name not in names:
        raise ConfigError(f"--retriever {name!r} is not a retriever of {path}{did_you_mean(name, names)}; name one "
                          f"of its dense entries with finetune: {', '.join(e.name for e in tuned) or 'none'}")
    chosen = [e for e in tuned if e.name == name]
    if not chosen:
        raise ConfigError(f"--retriever {name!r} of {path} has no finetune: block; add one, or name a dense entry "
                          f"that has it: {', '.join(e.name for e in tuned) or 'none'}")
    return chosen


def _pipeline(config: Config, path: Path, entry: DenseConfig) -> PipelineSpec:
    """The pipeline that trains and is judged: the tuned dense retriever alone at the largest
    top_k, over the config's one chunking (a study over documents). Every decision must have
    one value: a list or range is a search, which is `ragopt optimize`'s."""
    several: list[str] = []

    def choose(name: str, options: Options) -> Any:
        if name == f"{entry.name}.tuned":
            return True
        if isinstance(options, (FloatRange, IntRange)):
            several.append(name)
            return options.low
        if len(options) > 1:
            several.append(name)
        return options[0]

    dense = entry.suggest(choose, lambda name: None)  # a dense entry names no other retriever
    chunker = next(s for s in STAGES if s.name == "chunker").suggest(config, choose, {"retriever": dense})
    if several:
        raise ConfigError(f"{path}: {', '.join(several)} {'has' if len(several) == 1 else 'have'} several values; "
                          f"{ONE_MODEL}")
    return PipelineSpec(chunker=chunker, retriever=dense, reranker=None, top_k=max(config.top_k))


def _tuned_yaml(name: str, entries: int) -> str:
    """The file of an entry's tuned pipeline: tuned.yaml, or tuned-<entry>.yaml when there are several."""
    return "tuned.yaml" if entries == 1 else f"tuned-{name}.yaml"


def _clear(output: Path) -> None:
    """Remove what an earlier run wrote in the output folder (its cache stays: it is keyed by
    content); only in a folder that run wrote (its finetune.json), so that an --output given by
    mistake keeps its files."""
    if not (output / f"{REPORT}.json").exists():
        return
    shutil.rmtree(output / TUNED, ignore_errors=True)
    for path in [output / TUNING_CSV, output / f"{REPORT}.json", output / f"{REPORT}.md",
                 *output.glob("tuned.yaml"), *output.glob("tuned-*.yaml")]:
        path.unlink(missing_ok=True)


def _train_one(config: Config, data: StudyData, tuner: Tuner, evaluator: Evaluator, name: str, spec: PipelineSpec,
               output: Path, held: np.ndarray, entries: int) -> TunedModel:
    """Train (or find in the cache) one entry's final model, export it with its tuned.yaml, and
    compare it with its base on the questions it never saw."""
    dense = spec.retriever
    assert isinstance(dense, DenseSpec) and dense.finetune is not None
    concrete = tuner.final(spec)
    account = read_tuning(concrete.retriever.model) or {}
    log = account.get("log") or {}
    scored = _scored_questions(dense, held)
    compared = None
    if scored is None:
        warnings.warn(f"{name}: no question is held out (study.holdout is 0), so every question trained the model "
                      "and no honest score exists; no comparison is written. Set study.holdout (e.g. 0.3) to judge "
                      "the tuned model against its base", UserWarning, stacklevel=3)
    else:
        base = evaluator.evaluate(spec.model_copy(update={"retriever": dense.base()}))[0].per_query
        tuned = evaluator.evaluate(concrete)[0].per_query
        compared = {metric: _compare(base[metric][scored], tuned[metric][scored], config)
                    for metric in METRICS}
    best = output / _tuned_yaml(name, entries)
    exported, accounts = export_tuned(tuner, spec, output, best)
    model = TunedModel(
        retriever=name, base=dense.model, setting=dense.describe(), folder=exported.retriever.model,
        best=best.name, rows=int(account.get("rows", 0)),
        training_questions=len((account.get("questions") or {}).get("real", [])),
        generated_questions=int((account.get("questions") or {}).get("generated", 0)),
        seconds=float(log.get("seconds", 0.0)), device=str(log.get("device", "")),
        scored_on=None if scored is None else "held-out" if held.any() else "every real question",
        questions=0 if scored is None else int(scored.sum()), compared=compared)
    engine = data.target(spec).engine
    models = (concrete.chunker.models() if concrete.chunker else []) + concrete.retriever.models()
    provenance = engine.provenance(models, concrete.retriever.tokenizers())
    for absolute, relative in zip(concrete.retriever.models(), exported.retriever.models()):
        provenance["models"][relative] = provenance["models"].pop(absolute)
    evaluation = {"trained_by": "ragopt finetune", "retriever": name, "setting": model.setting,
                  "questions": {"training": model.training_questions, "generated": model.generated_questions,
                                "scored": model.questions, "scored_on": model.scored_on},
                  **({"comparison": _plain(compared)} if compared is not None else {})}
    write_best(best, Exported(exported, config.exact_search_max, device_type(engine.device)), evaluation,
               {**provenance, "tuned": accounts, "libraries": library_versions()}, corpus=data.source)
    return model


def _scored_questions(dense: DenseSpec, held: np.ndarray) -> np.ndarray | None:
    """The real questions no model of this tuning trained on: the held-out ones; every one when
    only generated questions trained it; None when every question trained it."""
    if held.any():
        return held
    assert dense.finetune is not None
    return np.ones(len(held), dtype=bool) if dense.finetune.questions == "generated" else None


def _compare(base: np.ndarray, tuned: np.ndarray, config: Config) -> Comparison:
    """Each model's mean with its bootstrap interval, and the paired test of tuned minus base."""
    confidence, seed = config.study.confidence, config.study.seed
    means, lows, highs = bootstrap_ci(np.stack([base, tuned], axis=1), confidence=confidence, seed=seed)
    paired = paired_test(tuned, base, confidence=confidence, seed=seed)
    sides = [Score(float(m), float(lo), float(hi)) for m, lo, hi in zip(means, lows, highs)]
    return Comparison(sides[0], sides[1], paired)


def _plain(value: Any) -> Any:
    """Dataclasses (and dicts of them) as plain dicts, for JSON and YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def _write_reports(finished: Finetuned, config_path: Path, config: Config, n: int, held: np.ndarray) -> None:
    """finetune.json (every figure, unrounded) and finetune.md (the same for a reader)."""
    study = config.study
    document = {"config": config_path.name, "questions": n, "held_out": int(held.sum()), "holdout": study.holdout,
                "seed": study.seed, "confidence": study.confidence, "metrics": list(METRICS),
                "models": [_plain(m) for m in finished.models]}
    output = finished.output
    write_text(output / f"{REPORT}.json", json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    lines = [f"# ragopt finetune: {config_path.name}", "",
             f"{n} questions, {int(held.sum())} held out (study.holdout {study.holdout}, seed {study.seed}): no "
             "held-out question reaches training.", ""]
    for m in finished.models:
        lines += [f"## {m.retriever}: {m.setting}", "",
                  f"Base {model_label(m.base)}; tuned model {m.folder} ({m.best}), trained on {m.rows} rows from "
                  f"{m.training_questions} real and {m.generated_questions} generated questions in {m.seconds:.1f} s "
                  f"on {m.device}.", ""]
        if m.compared is None:
            lines += ["No held-out questions: every question trained the model, so no honest score exists and base "
                      "and tuned are not compared. Set study.holdout (e.g. 0.3) to judge it.", ""]
            continue
        rows = [[metric, interval(c.base.mean, c.base.low, c.base.high), interval(c.tuned.mean, c.tuned.low,
                 c.tuned.high), difference(c.tuned_minus_base.difference, c.tuned_minus_base.low,
                                           c.tuned_minus_base.high), f"{c.tuned_minus_base.p_value:.3g}"]
                for metric, c in m.compared.items()]
        lines += [f"On {m.questions} questions ({m.scored_on}) that no model trained on; {study.confidence:.0%} "
                  f"bootstrap intervals over them (seed {study.seed}); p: two-sided paired permutation (sign-flip) "
                  "test of tuned - base.", "",
                  table(["metric", "base", "tuned", "tuned - base", "p"], rows)]
    write_text(output / f"{REPORT}.md", "\n".join(lines))
