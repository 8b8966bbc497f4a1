"""What a study's pipelines run over: a QA set over one corpus, or questions labelled by evidence
spans over documents that every trial cuts with its own chunker. Both give the objective the
same things: the questions, an engine and relevance per pipeline, and the corpus of a trial's
ranking rows (for its TREC run and qrels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragopt.stages.cache import Cache, cache_key
from ragopt.scoring.chunkings import Chunkings, as_qa
from ragopt.search.config import Config
from ragopt.data.qa import Corpus, QASet, load_corpus, load_dataset, load_qa
from ragopt.data.documents import require_evidence, Documents, SpanQA, load_documents, load_span_qa, spans_from_ids
from ragopt.stages.engine import Engine
from ragopt.scoring.evaluation import Target
from ragopt.stages.models import Locator, fast_tokenizer, require_available
from ragopt.stages.spec import PipelineSpec


@dataclass
class StudyData:
    """The questions of a study and what each pipeline is scored against.

    Example:
        data = load_study_data(config, Cache("out/cache"))
        target = data.target(spec)   # the engine over spec's corpus, and the qrels there
    """

    qa: QASet
    engine: Engine
    """The engine whose cache, models and device every trial's engine shares."""
    key: str
    """The content of the data, for the stored study's fingerprint."""
    chunkings: Chunkings | None = None
    generated: "StudyData | None" = None
    """The generated questions over the same documents (data.generated_qa), which every trial is
    also scored on: a measurement of whether they rank pipelines as the real ones do, not a target."""

    def target(self, spec: PipelineSpec) -> Target:
        """The engine over the pipeline's corpus and its questions' relevance there."""
        if self.chunkings is not None:
            return self.chunkings.target(spec)
        return Target(self.engine, self.qa.groups)

    def corpus_of(self, spec: PipelineSpec) -> Corpus:
        """The corpus whose rows the pipeline's rankings hold."""
        return self.target(spec).engine.corpus

    @property
    def source(self) -> str:
        """What the study searched, as best.yaml's header names it: the corpus file or the documents."""
        return self.chunkings.documents.source if self.chunkings is not None else self.engine.corpus.source


@dataclass(frozen=True)
class StudyInputs:
    """A config's data as read and checked, before anything is indexed: the questions, and the
    corpus they are labelled on or the documents with their evidence spans."""

    qa: QASet
    corpus: Corpus | None = None
    documents: Documents | None = None
    spans: SpanQA | None = None
    generated: SpanQA | None = None
    """The questions generated from the documents (data.generated_qa), when given."""


def read_inputs(config: Config) -> StudyInputs:
    """Read the data a config names, every record checked, and check that every model it names
    can be loaded; imports no torch and writes nothing (what `ragopt validate` runs)."""
    data = config.data
    if data.documents is None:
        qa, corpus = load_dataset(qa=data.qa, corpus=data.corpus, beir=data.beir, split=data.split,
                                  domain_column=data.domain_column, domain_pattern=data.domain_pattern)
        require_available(config.models())
        return StudyInputs(qa, corpus)
    documents = load_documents(data.documents)
    assert data.qa is not None
    if data.corpus is not None:
        corpus = load_corpus(data.corpus)
        spans = spans_from_ids(load_qa(data.qa, corpus, data.domain_column, data.domain_pattern), corpus, documents)
    else:
        spans = load_span_qa(Path(data.qa), documents, data.domain_column, data.domain_pattern)
    generated = (load_span_qa(data.generated_qa, documents, data.domain_column, data.domain_pattern)
                 if data.generated_qa is not None else None)
    for questions in (spans, generated):
        if questions is not None:
            require_evidence(documents, questions)
    require_available(config.models())
    return StudyInputs(as_qa(spans), None, documents, spans, generated)


def load_study_data(config: Config, cache_dir: Path | None, progress: bool = False) -> StudyData:
    """The data a config names, read and checked before anything is written (the cache folder
    included; no cache_dir: a cache in memory), with the engines its trials run on."""
    inputs, data = read_inputs(config), config.data
    if inputs.corpus is not None and inputs.documents is None:
        engine = Engine(inputs.corpus, Cache(cache_dir), config.device, progress, config.exact_search_max)
        return StudyData(inputs.qa, engine, cache_key(inputs.corpus.key, inputs.qa.groups))
    assert inputs.documents is not None and inputs.spans is not None
    chunkings = Chunkings(inputs.documents, inputs.spans, Cache(cache_dir), config.device, progress,
                          config.exact_search_max, data.min_coverage, tuple(config.budgets),
                          budget_tokenizer(data.budget_tokenizer))
    key = cache_key(chunkings.documents.key, _evidence(inputs.spans), data.min_coverage, config.budgets,
                    data.budget_tokenizer)
    generated = None
    if inputs.generated is not None:  # its own chunkings: the documents blanked at its questions' masked spans
        qa, shared = as_qa(inputs.generated), chunkings.sharing(inputs.documents, inputs.generated)
        generated_key = cache_key(shared.documents.key, _evidence(inputs.generated), qa.queries.key, qa.qids)
        generated = StudyData(qa, shared.engine, generated_key, shared)
        key = cache_key(key, generated_key)
    return StudyData(inputs.qa, chunkings.engine, key, chunkings, generated)


def _evidence(spans: SpanQA) -> list[list[list[tuple[str, int, int]]]]:
    """Every question's evidence as plain tuples, for a content key."""
    return [[[(s.document, s.start, s.end) for s in alt] for alt in q] for q in spans.evidence]


def budget_tokenizer(name: str | None) -> Any:
    """The Hugging Face tokenizer that counts a context budget's tokens (None: words and punctuation)."""
    return None if name is None else fast_tokenizer(Locator()(name))
