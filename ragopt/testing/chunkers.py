"""The contract every chunker type passes. A test module subclasses ChunkerContract and provides
a `case` fixture:

    class TestRecursive(ChunkerContract):
        @pytest.fixture
        def case(self):
            return ChunkerCase(RecursiveSpec(size=64), RecursiveConfig(type="recursive", name="r"))

Every case is checked on the texts of TEXTS (Korean paragraphs, text padded with whitespace,
blank texts, a long unbroken token) and the case's own `texts`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest
from pydantic import TypeAdapter

from ragopt.stages.chunkers import REGISTRY, ChunkContext, ChunkerEntry, ChunkerSpec, chunk_documents
from ragopt.stages.chunkers._base import spec_union
from ragopt.data.documents import Document, Documents
from ragopt.stages.params import FloatRange, IntRange

KOREAN = """금융위원회는 핀테크 투자 생태계를 활성화하기 위한 방안을 발표했다.
정책금융기관의 출자를 늘리고 해외 진출을 돕는다.
이번 방안은 초기 기업에 대한 투자가 줄어든 데 따른 것이다

디지털 커머스 시대에 B2B 기업은 온라인 판매를 통합해야 한다.
비용이 줄고 매출이 늘기 때문이다! 그렇다면 무엇부터 시작해야 할까?
첫째, 고객의 구매 과정을 분석한다. 둘째, 주문과 결제를 하나의 시스템으로 묶는다.

형사 피고인이 법정에서 진술을 거부할 권리는 헌법이 보장한다.
법원은 이 권리를 미리 알려야 하며 그렇지 않으면 절차가 위법하다.
마지막 문단은 짧다."""

TEXTS = {
    "korean paragraphs": KOREAN,
    "padded": "\n\n \t  제목 한 줄\n본문은 여기에 있습니다.   다음 문장도 있습니다.\u3000\n\n\n ",
    "empty": "",
    "blank": " \n\t\u3000\r\n ",
    "long unbroken token": "시작 " + "데이터분석플랫폼" * 300 + " 끝.",
}
BLANK = ("empty", "blank")


def hashed_embeddings(model: str, texts: list[str], dim: int = 64) -> np.ndarray:
    """Stand-in sentence embeddings for tests: L2-normalized counts of hashed character bigrams."""
    out = np.zeros((len(texts), dim))
    for i, text in enumerate(texts):
        for a, b in zip(text, text[1:]):
            out[i, zlib.crc32((a + b).encode()) % dim] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class ChunkerCase:
    """A chunker spec, a config entry of its type and the context to cut with."""

    spec: ChunkerSpec
    entry: ChunkerEntry
    context: ChunkContext = field(default_factory=lambda: ChunkContext(embed=hashed_embeddings))
    texts: dict[str, str] = field(default_factory=dict)
    """Texts of this type's own to check beside TEXTS."""

    def all_texts(self) -> dict[str, str]:
        return {**TEXTS, **self.texts}

    def spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        return REGISTRY[self.spec.type].implementation(self.spec, self.context).spans(texts)


def first_choice(name: str, options: object) -> object:
    """A chooser taking the first value of a list and the low end of a range."""
    return options.low if isinstance(options, (FloatRange, IntRange)) else options[0]


class ChunkerContract:
    @pytest.fixture
    def case(self) -> ChunkerCase:
        raise NotImplementedError

    @pytest.fixture
    def cut(self, case: ChunkerCase) -> dict[str, list[tuple[int, int]]]:
        texts = case.all_texts()
        return dict(zip(texts, case.spans(list(texts.values()))))

    def test_spans_are_inside_non_empty_trimmed_distinct_and_sorted(self, case: ChunkerCase, cut) -> None:
        for name, text in case.all_texts().items():
            spans = cut[name]
            assert spans == sorted(set(spans)), name
            for start, end in spans:
                assert isinstance(start, int) and isinstance(end, int), name
                assert 0 <= start < end <= len(text), (name, start, end)
                assert not text[start].isspace() and not text[end - 1].isspace(), (name, text[start:end])

    def test_every_non_whitespace_character_is_in_a_chunk(self, case: ChunkerCase, cut) -> None:
        for name, text in case.all_texts().items():
            covered = np.zeros(len(text), dtype=bool)
            for start, end in cut[name]:
                covered[start:end] = True
            missed = [i for i, c in enumerate(text) if not c.isspace() and not covered[i]]
            assert missed == [], (name, missed[:10])

    def test_a_blank_text_has_no_chunk_and_others_have_some(self, case: ChunkerCase, cut) -> None:
        for name in case.all_texts():
            assert (cut[name] == []) == (name in BLANK), name

    def test_a_texts_spans_depend_only_on_it_and_the_spec(self, case: ChunkerCase, cut) -> None:
        texts = case.all_texts()
        for name, text in texts.items():
            assert case.spans([text]) == [cut[name]], name
        again = dict(zip(reversed(texts), case.spans(list(reversed(texts.values())))))
        assert again == cut

    def test_chunk_documents_aligns_the_corpus_with_the_spans(self, case: ChunkerCase, cut) -> None:
        texts = case.all_texts()
        documents = Documents([Document(f"doc {i}.txt", text, {"title": name}) for i, (name, text) in
                               enumerate(texts.items())], source="contract")
        chunking = chunk_documents(case.spec, documents, case.context)
        corpus, spans = chunking.corpus, chunking.spans
        assert len(corpus) == len(spans) == sum(map(len, cut.values()))
        assert corpus.doc_ids == sorted(corpus.doc_ids)
        for row in range(len(corpus)):
            document = documents[int(spans.document[row])]
            start, end = int(spans.start[row]), int(spans.end[row])
            assert corpus.doc_ids[row] == f"{document.doc_id}#{start}-{end}"
            assert corpus.contents[row] == document.text[start:end]
            assert corpus.metadata_of(row) == {"title": document.metadata["title"], "document": document.doc_id,
                                               "start": start, "end": end}
            assert (start, end) in cut[document.metadata["title"]]

    def test_no_documents_make_an_empty_corpus(self, case: ChunkerCase) -> None:
        chunking = chunk_documents(case.spec, Documents([]), case.context)
        assert len(chunking.corpus) == len(chunking.spans) == 0

    def test_the_spec_round_trips_and_describes_itself(self, case: ChunkerCase) -> None:
        adapter = TypeAdapter(spec_union())
        assert adapter.validate_json(case.spec.model_dump_json()) == case.spec
        assert case.spec.describe().startswith(case.spec.type)
        assert case.spec.key() == type(case.spec).model_validate(case.spec.model_dump()).key()

    def test_the_entry_suggests_a_spec_of_its_type_under_its_names(self, case: ChunkerCase) -> None:
        asked = []

        def choose(name: str, options: object) -> object:
            asked.append(name)
            return first_choice(name, options)

        spec = case.entry.suggest(choose)
        assert spec.type == case.entry.type == case.spec.type
        assert all(name.startswith(f"{case.entry.name}.") for name in asked)
        assert sorted(asked) == sorted(set(asked))
