"""Loading documents (.txt/.md, .pdf, .jsonl; folder, glob, file), span QA files, and locating an
existing corpus's passages in the documents."""

import io
import json
import unicodedata
from collections import Counter

import pytest

from conftest import AUTORAG_KO, AUTORAG_KO_DOCS
from ragopt.data.qa import DataError, QASet, Queries, corpus_of, load_corpus, load_qa
from ragopt.data.documents import (Document, Documents, Span, load_documents, load_span_qa, locate_passages,
                              spans_from_ids)

DOCS = AUTORAG_KO_DOCS
needs_autorag = pytest.mark.skipif(not (AUTORAG_KO.exists() and DOCS.exists()),
                                   reason="../shared/data/autorag-ko(-docs) is not beside this checkout")


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal PDF, one page per string (ASCII, one line in Helvetica; an empty string is a page
    with no text), with a correct cross-reference table."""
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {n} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                       f">> /Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    """Documents of every type, beside files that are no documents."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "a.txt").write_bytes("\ufeff첫 줄\r\n  둘째 줄  \n".encode())
    (root / "sub" / "b.md").write_text(unicodedata.normalize("NFD", "# 한글 제목\n"), encoding="utf-8")
    (root / "sub" / "c.pdf").write_bytes(pdf_bytes(["Hello PDF", "Page two"]))
    write_jsonl(root / "d.jsonl", [{"id": "rec-1", "text": "첫 기록", "year": 2024},
                                   {"doc_id": 7, "contents": "둘째 기록", "tags": ["x"]}])
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / ".cache" / "copy.txt").write_text("a hidden copy")
    return root


def test_folder_reads_every_type_with_text_exactly_as_read(folder):
    docs = load_documents(folder)
    assert [d.doc_id for d in docs] == ["7", "a.txt", "rec-1", "sub/b.md", "sub/c.pdf"]
    by_id = {d.doc_id: d for d in docs}
    assert by_id["a.txt"].text == "첫 줄\r\n  둘째 줄  \n"  # byte order mark dropped, nothing else touched
    assert by_id["sub/b.md"].text == unicodedata.normalize("NFD", "# 한글 제목\n")
    assert by_id["rec-1"] == Document("rec-1", "첫 기록", {"year": 2024})
    assert by_id["7"] == Document("7", "둘째 기록", {"tags": ["x"]})
    pdf = by_id["sub/c.pdf"]
    assert pdf.text.split("\n\n") == ["Hello PDF", "Page two"]
    assert pdf.metadata == {"pages": [0, len("Hello PDF") + 2]}
    assert pdf.text[pdf.metadata["pages"][1]:] == "Page two"
    assert docs.source == str(folder) and docs.index_of()["a.txt"] == 1


def test_glob_ids_are_relative_to_its_fixed_folder_and_one_file_is_its_name(folder):
    assert [d.doc_id for d in load_documents(f"{folder}/sub/*")] == ["b.md", "c.pdf"]
    assert [d.doc_id for d in load_documents(f"{folder}/**/*.md")] == ["sub/b.md"]
    assert [d.doc_id for d in load_documents(folder / "sub" / "b.md")] == ["b.md"]


def test_key_follows_ids_and_texts_not_file_order():
    a, b = Document("a", "x"), Document("b", "y")
    assert Documents([a, b]).key == Documents([b, a]).key != Documents([a, Document("b", "z")]).key
    assert Documents([a, b]).key != Documents([Document("a", "x"), Document("c", "y")]).key


def test_masked_blanks_the_spans_and_keeps_every_offset():
    docs = Documents([Document("a", "하나. 둘. 셋."), Document("b", "keep")])
    masked = docs.masked([Span("a", 4, 6), Span("a", 0, 1)])
    assert masked[0].text == " 나.    셋." and len(masked[0].text) == len(docs[0].text)
    assert masked[1] is docs[1] and masked.key != docs.key
    assert docs.masked([]) is docs


def test_folder_without_documents_names_the_types(tmp_path):
    (tmp_path / "table.csv").write_text("a\n")
    with pytest.raises(DataError, match=r"no documents found; documents are \.txt, \.md, \.pdf, \.jsonl files"):
        load_documents(tmp_path)
    with pytest.raises(DataError, match=r"unknown document type '\.csv'"):
        load_documents(tmp_path / "table.csv")
    with pytest.raises(DataError, match="no documents found"):
        load_documents(f"{tmp_path}/*.txt")


def test_missing_path_suggests_close_names(folder):
    with pytest.raises(DataError, match=r"no such file or folder.*Did you mean a\.txt"):
        load_documents(folder / "a.tx")


def test_duplicate_ids_are_named_with_every_place(tmp_path):
    write_jsonl(tmp_path / "one.jsonl", [{"id": "x", "text": "1"}, {"id": "y", "text": "2"}])
    write_jsonl(tmp_path / "two.jsonl", [{"id": "z", "text": "3"}, {"id": "x", "text": "4"}])
    with pytest.raises(DataError) as error:
        load_documents(tmp_path)
    message = str(error.value)
    assert "1 duplicate document id" in message
    assert f"document id 'x': {tmp_path / 'one.jsonl'}: line 1, {tmp_path / 'two.jsonl'}: line 2" in message


def test_jsonl_records_without_text_or_id_are_named_by_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "ok"}, {"id": "b", "body": "?"},
                                              {"text": "no id"}])
    with pytest.raises(DataError) as error:
        load_documents(path)
    message = str(error.value)
    assert "2 records without a text and an id" in message
    assert "line 2: fields ['body', 'id']" in message and "line 3: fields ['text']" in message


def test_empty_documents_are_named(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "b.txt").write_text(" \n")
    with pytest.raises(DataError, match=r"1 empty document:\n  - .*b\.txt"):
        load_documents(tmp_path)


def test_pdf_without_text_layer_says_ocr_first(tmp_path):
    (tmp_path / "scan.pdf").write_bytes(pdf_bytes(["", ""]))
    with pytest.raises(DataError, match=r"scan\.pdf: the PDF has no text layer .*OCR it first"):
        load_documents(tmp_path)


def test_password_protected_pdf_is_named(tmp_path):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(["secret"]))))
    writer.encrypt(user_password="pw", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(DataError, match=r"locked\.pdf: the PDF is password protected"):
        load_documents(tmp_path / "locked.pdf")


def test_broken_pdf_and_legacy_encoding_name_the_file(tmp_path):
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf at all")
    with pytest.raises(DataError, match=r"broken\.pdf: cannot be read as a PDF"):
        load_documents(tmp_path / "broken.pdf")
    (tmp_path / "euc.txt").write_bytes("한글 문서".encode("cp949"))
    with pytest.raises(DataError, match=r"euc\.txt: not UTF-8 text.*CP949"):
        load_documents(tmp_path / "euc.txt")


@pytest.fixture
def small_docs():
    return Documents([Document("a.txt", "하나 둘 셋\n넷 다섯"), Document("b.txt", "alpha beta gamma")])


def test_span_qa_groups_alternatives_masked_and_domains(tmp_path, small_docs):
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"qid": "q1", "query": "하나?", "domain": "ko", "evidence": [{"document": "a.txt", "start": 0, "end": 2}],
         "masked": [{"document": "a.txt", "start": 3, "end": 4}]},
        {"qid": "q2", "query": unicodedata.normalize("NFD", "둘?"), "domain": "mix", "evidence": [
            {"document": "b.txt", "start": 6, "end": 10},
            [{"document": "a.txt", "start": 3, "end": 4}, {"document": "b.txt", "start": 0, "end": 5}]]}])
    qa = load_span_qa(path, small_docs)
    assert qa.qids == ["q1", "q2"] and qa.queries.texts == ["하나?", "둘?"] and qa.domains is None
    assert qa.evidence == [[[Span("a.txt", 0, 2)]],
                           [[Span("b.txt", 6, 10)], [Span("a.txt", 3, 4), Span("b.txt", 0, 5)]]]
    assert qa.masked == [Span("a.txt", 3, 4)]
    assert load_span_qa(path, small_docs, domain_column="domain").domains == ["ko", "mix"]
    assert load_span_qa(path, small_docs, domain_pattern=r"(\d)$").domains == ["1", "2"]
    with pytest.raises(DataError, match="no column 'domian'.*Did you mean 'domain'"):
        load_span_qa(path, small_docs, domain_column="domian")


def test_every_bad_span_is_named_with_its_line_at_once(tmp_path, small_docs):
    def question(i, evidence, **more):
        return {"qid": f"q{i}", "query": "?", "evidence": evidence, **more}

    path = write_jsonl(tmp_path / "qa.jsonl", [
        question(1, [{"document": "a.txt", "start": 0, "end": 2}]),
        question(2, [{"document": "a.text", "start": 0, "end": 2}]),
        question(3, [{"document": "b.txt", "start": 5, "end": 99}]),
        question(4, [{"document": "b.txt", "start": 5, "end": 5}]),
        question(5, [{"document": "a.txt", "start": 2, "end": 3}]),
        question(6, [{"document": "a.txt", "start": "0", "end": 2}]),
        question(7, []),
        question(8, [{"document": "a.txt", "start": 0, "end": 2}], masked=[{"document": "c.txt", "start": 0,
                                                                            "end": 1}]),
        question(9, [[]])])
    with pytest.raises(DataError) as error:
        load_span_qa(path, small_docs)
    message = str(error.value)
    assert "8 bad evidence spans" in message
    for expected in ["line 2: qid 'q2': evidence 0: no document 'a.text'; did you mean 'a.txt'?",
                     "line 3: qid 'q3': evidence 0: 5-99 is not a non-empty range inside 'b.txt' (0-16)",
                     "line 4: qid 'q4': evidence 0: 5-5 is not a non-empty range",
                     "line 5: qid 'q5': evidence 0: 2-3 of 'a.txt' holds only whitespace",
                     "line 6: qid 'q6': evidence 0: start '0' and end 2 must be integers",
                     "line 7: qid 'q7': evidence: [] is not a non-empty list of spans",
                     "line 8: qid 'q8': masked 0: no document 'c.txt'",
                     "line 9: qid 'q9': evidence 0: an empty group of alternatives"]:
        assert expected in message
    assert "line 1" not in message


def test_span_qa_needs_its_fields_and_unique_qids(tmp_path, small_docs):
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"qid": "1", "query": "?", "retrieval_gt": ["a"]}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['evidence'\]"):
        load_span_qa(wrong, small_docs)
    span = [{"document": "a.txt", "start": 0, "end": 2}]
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"qid": "1", "query": "?", "evidence": span}] * 2)
    with pytest.raises(DataError, match="1 duplicate qid:\n  - qid '1': line 1, line 2"):
        load_span_qa(twice, small_docs)


@needs_autorag
def test_autorag_ko_docs_spans_are_the_pages_they_cite():
    docs = load_documents(DOCS / "documents")
    qa = load_span_qa(DOCS / "qa.jsonl", docs, domain_column="domain")
    corpus = load_corpus(AUTORAG_KO / "corpus.parquet")
    assert (len(docs), len(qa)) == (32, 114)
    assert len({s.document for groups in qa.evidence for group in groups for s in group}) == 32
    assert qa.domains == [q.rsplit("_", 1)[1] for q in qa.qids]
    records = [json.loads(line) for line in (DOCS / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = {d.doc_id: d.text for d in docs}
    contents = dict(zip(corpus.doc_ids, corpus.contents))
    for record, groups in zip(records, qa.evidence):
        assert [[(s.document, s.start, s.end)] for s in (g[0] for g in groups)] == \
            [[(e["document"], e["start"], e["end"])] for e in record["evidence"]]
        for group, cited in zip(groups, record["evidence"]):
            assert texts[group[0].document][group[0].start:group[0].end] == contents[cited["page_id"]]


@needs_autorag
def test_every_autorag_ko_page_is_located_where_the_span_qa_says():
    docs = load_documents(DOCS / "documents")
    corpus = load_corpus(AUTORAG_KO / "corpus.parquet")
    located = locate_passages(corpus, docs)
    assert len(located) == 720
    assert Counter(len(spans) for spans in located.values()) == {1: 719, 2: 1}
    texts = {d.doc_id: d.text for d in docs}
    assert all(texts[s.document][s.start:s.end] == corpus.contents[corpus.index_of()[p]]
               for p, spans in located.items() for s in spans)
    by_ids = spans_from_ids(load_qa(AUTORAG_KO / "qa.parquet", corpus), corpus, docs)
    by_spans = load_span_qa(DOCS / "qa.jsonl", docs)
    assert by_ids.qids == by_spans.qids and by_ids.evidence == by_spans.evidence


def test_locate_maps_whitespace_and_nfd_differences_back_to_exact_offsets():
    text = "머리말\n가  나\n다 끝. 가 나 다 다시. " + unicodedata.normalize("NFD", "한글 문서")
    docs = Documents([Document("d.txt", text), Document("e.txt", "가 나 다")])
    corpus = corpus_of(["p", "q", "r"], ["가 나 다", "한글\n문서", "다시"])
    located = locate_passages(corpus, docs)
    first = text.index("가  나")
    second = text.index("가 나 다")
    nfd = text.index(unicodedata.normalize("NFD", "한"))
    assert located == {"p": [Span("d.txt", first, first + len("가  나\n다")), Span("d.txt", second, second + 5),
                             Span("e.txt", 0, 5)],
                       "q": [Span("d.txt", nfd, len(text))],
                       "r": [Span("d.txt", text.index("다시"), text.index("다시") + 2)]}
    assert text[located["q"][0].start:located["q"][0].end] == unicodedata.normalize("NFD", "한글 문서")


def test_locate_finds_overlapping_occurrences_and_names_every_passage_not_found():
    docs = Documents([Document("d", "aaaa b")])
    assert locate_passages(corpus_of(["p"], ["aa"]), docs) == {"p": [Span("d", 0, 2), Span("d", 1, 3),
                                                                     Span("d", 2, 4)]}
    corpus = corpus_of(["p", "q", "r"], ["aa", "ab", "zz"])
    with pytest.raises(DataError) as error:
        locate_passages(corpus, docs)
    message = str(error.value)
    assert "1 passage not found in the documents" in message and "doc_id 'r': 'zz'" in message
    assert locate_passages(corpus, docs, ["q"]) == {"q": [Span("d", 3, 6)]}


def test_spans_from_ids_keeps_groups_and_every_occurrence():
    docs = Documents([Document("d", "x ab y ab"), Document("e", "cd")])
    corpus = corpus_of(["p1", "p2", "p3"], ["ab", "cd", "never"])
    qa = QASet(["q"], Queries(["?"]), [[[0, 1], [1]]], ["dom"], "qa.jsonl")
    spans = spans_from_ids(qa, corpus, docs)
    assert spans.evidence == [[[Span("d", 2, 4), Span("d", 7, 9), Span("e", 0, 2)], [Span("e", 0, 2)]]]
    assert (spans.qids, spans.domains, spans.source, spans.masked) == (["q"], ["dom"], "qa.jsonl", [])
