"""Settings of a bi-encoder tuned inside the study (a dense entry's `finetune:`): the searchable
form in the config and the concrete form a trial's spec carries. Plain data: the training itself
is ragopt.tune's, which turns a spec with `finetune` into one whose model is the tuned folder."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ragopt.stages.params import (Chooser, IntRange, Problem, StrictModel, bounded_floats, bounded_ints, choices,
                                  did_you_mean)

Loss = Literal["mnrl", "cached_mnrl", "gist", "cached_gist"]
"""sentence-transformers' MultipleNegativesRankingLoss, GISTEmbedLoss and their cached (gradient
cache) forms, which fit large batches in little memory."""
GIST_LOSSES = ("gist", "cached_gist")
NegativesFrom = Literal["model", "bm25", "both"]
"""Where hard negatives are mined: the base model's nearest passages, the best BM25 of the
study's bm25 entry, or the two interleaved."""
TrainingQuestions = Literal["selection", "generated", "both"]
"""Which questions train: the real ones the study selects on (never the held-out ones), the
generated ones (data.generated_qa), or both."""


class FinetuneSpec(StrictModel):
    """One way to tune a bi-encoder: every setting one value."""

    loss: Loss = "mnrl"
    guide: str | None = None
    """GIST's guide model (None: the base model itself, frozen)."""
    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(16, ge=2)
    negatives: int = Field(1, ge=0)
    """Hard negatives per question (0: in-batch negatives only)."""
    negatives_from: NegativesFrom = "model"
    bm25: str | None = None
    """The bm25 entry that mines (None: the config's first)."""
    margin: float = Field(0.05, ge=0.0, lt=1.0)
    """Relative margin: a candidate scoring above (1 - margin) x its question's lowest positive
    (by the base model) is too close to be a sure negative and is skipped; GIST's margin too."""
    questions: TrainingQuestions = "selection"
    folds: int = Field(3, ge=2)
    """Cross-fitting folds of the selection questions when the study has no folds of its own."""
    mini_batch_size: int = Field(32, ge=1)
    """The cached losses' mini-batch (memory, not results)."""

    def describe(self) -> str:
        """A short label: loss, epochs, learning rate, negatives and their source, questions."""
        negatives = f"n={self.negatives}:{self.negatives_from}" if self.negatives else "n=0"
        questions = "" if self.questions == "selection" else f",q={self.questions}"
        return f"ft({self.loss},e={self.epochs},lr={self.learning_rate:g},{negatives}{questions})"


class FinetuneConfig(StrictModel):
    """A dense entry's `finetune:`: the tuned model is a choice beside the base one (keep_base) and
    each setting is searchable like any other."""

    keep_base: bool = True
    """Keep the untuned model in the space (parameter '<entry>.tuned' in [false, true])."""
    loss: choices(Loss) = ["mnrl"]
    guide: str | None = None
    epochs: bounded_ints(1) = [1]
    learning_rate: bounded_floats(1e-9, 1.0) = [2e-5]
    batch_size: bounded_ints(2) = [16]
    negatives: bounded_ints(0) = [1]
    negatives_from: choices(NegativesFrom) = ["model"]
    bm25: str | None = None
    margin: bounded_floats(0.0, 0.99) = [0.05]
    questions: choices(TrainingQuestions) = ["selection"]
    folds: int = Field(3, ge=2)
    mini_batch_size: int = Field(32, ge=1)

    def suggest(self, name: str, choose: Chooser) -> FinetuneSpec | None:
        """The tuning of one trial ('<name>.finetune.<setting>' decisions), None for the base model.
        A margin is asked only when something uses it (GIST, or mined negatives)."""
        if not choose(f"{name}.tuned", [False, True] if self.keep_base else [True]):
            return None
        prefix = f"{name}.finetune"
        loss = choose(f"{prefix}.loss", self.loss)
        negatives = choose(f"{prefix}.negatives", self.negatives)
        source = choose(f"{prefix}.negatives_from", self.negatives_from) if negatives else "model"
        margin = choose(f"{prefix}.margin", self.margin) if negatives or loss in GIST_LOSSES else 0.0
        return FinetuneSpec(
            loss=loss, guide=self.guide if loss in GIST_LOSSES else None,
            epochs=choose(f"{prefix}.epochs", self.epochs),
            learning_rate=choose(f"{prefix}.learning_rate", self.learning_rate),
            batch_size=choose(f"{prefix}.batch_size", self.batch_size), negatives=negatives,
            negatives_from=source, bm25=self.bm25 if negatives and source != "model" else None, margin=margin,
            questions=choose(f"{prefix}.questions", self.questions), folds=self.folds,
            mini_batch_size=self.mini_batch_size)

    def models(self) -> list[str]:
        """The guide, when one is named (the base is the entry's own model)."""
        return [self.guide] if self.guide else []

    def unused(self) -> set[str]:
        """Settings no suggestion reads, by their path in the entry: the margin when nothing mines
        and no loss is GIST's."""
        gist = any(loss in GIST_LOSSES for loss in self.loss)
        mines = self.negatives.high > 0 if isinstance(self.negatives, IntRange) else any(self.negatives)
        return set() if gist or mines else {"finetune.margin"}

    def problems(self, retrievers: dict[str, str], generated: bool) -> list[Problem]:
        """What this tuning needs from the rest of the config, at its settings' paths inside the
        block: the bm25 entry that mines (given `retrievers`' types by name) and generated
        questions (data.generated_qa) when it trains on them."""
        problems: list[Problem] = []
        lexical = [name for name, kind in retrievers.items() if kind == "bm25"]
        named = f": {', '.join(lexical)}" if lexical else (
            " (this file has none: add one, e.g. - {name: bm25, type: bm25, tokenizer: kiwi})")
        if self.bm25 is not None and self.bm25 not in retrievers:
            guess = did_you_mean(self.bm25, lexical)
            problems.append((("bm25",), f"{self.bm25!r} is not a retriever of this file{guess}; name a bm25 entry"
                                        f"{named}"))
        elif self.bm25 is not None and retrievers[self.bm25] != "bm25":
            problems.append((("bm25",), f"{self.bm25!r} is a {retrievers[self.bm25]} retriever; name a bm25 entry"
                                        f"{named}"))
        if self.bm25 is None and not lexical and any(source != "model" for source in self.negatives_from):
            problems.append((("negatives_from",), "mining with BM25 (negatives_from: bm25 or both) needs a bm25 entry, "
                             "but this file has none; add one (e.g. - {name: bm25, type: bm25, tokenizer: kiwi}), or "
                             "give negatives_from: model"))
        if not generated and any(questions != "selection" for questions in self.questions):
            problems.append((("questions",), "training on generated questions (questions: generated or both) needs "
                             "data.generated_qa (e.g. from ragopt generate-qa over data.documents); give it, or train "
                             "on questions: selection"))
        return problems
