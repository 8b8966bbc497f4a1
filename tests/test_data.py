"""Loading and validating QA sets and corpora in every supported layout."""

import json
import unicodedata
from collections import Counter

import pandas as pd
import pytest

from conftest import AUTORAG_KO
from ragopt.data.qa import Corpus, DataError, corpus_of, load_beir, load_corpus, load_dataset, load_qa


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path, document):
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def test_bundled_example(ko_mini):
    qa, corpus = ko_mini
    assert (len(qa), len(corpus)) == (48, 60)
    assert Counter(qa.domains) == {"finance": 12, "law": 12, "medical": 12, "tech": 12}
    assert sum(len(g) == 2 for g in qa.groups) == 4
    first = qa.groups[0][0][0]
    assert corpus.doc_ids[first] == "finance - 예금자보호제도"


@pytest.mark.skipif(not AUTORAG_KO.exists(), reason="../shared/data/autorag-ko is not beside this checkout")
def test_autorag_parquet_with_domain_from_qid_suffix():
    qa, corpus = load_dataset(qa=AUTORAG_KO / "qa.parquet", corpus=AUTORAG_KO / "corpus.parquet",
                              domain_pattern=r"_([^_]+)$")
    assert (len(qa), len(corpus)) == (114, 720)
    assert Counter(qa.domains) == {"law": 37, "public": 29, "commerce": 26, "finance": 22}
    assert all(len(g) == 1 and len(g[0]) == 1 for g in qa.groups)


def test_nfd_ids_and_text_are_normalized(tmp_path):
    nfd = unicodedata.normalize("NFD", "은행 - 1")
    passage = {"doc_id": nfd, "contents": unicodedata.normalize("NFD", "예금")}
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", [passage]))
    question = {"qid": "1", "query": "예금", "retrieval_gt": [["은행 - 1"]]}
    qa = load_qa(write_jsonl(tmp_path / "q.jsonl", [question]), corpus)
    assert corpus.doc_ids == ["은행 - 1"] and corpus.contents == ["예금"]
    assert qa.groups == [[[0]]]


def test_missing_gt_id_names_file_row_and_id(tmp_path):
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", [{"doc_id": "a", "contents": "x"}]))
    path = write_jsonl(tmp_path / "q.jsonl", [{"qid": "1", "query": "q", "retrieval_gt": [["a"]]},
                                              {"qid": "2", "query": "q", "retrieval_gt": [["zz"]]}])
    with pytest.raises(DataError) as error:
        load_qa(path, corpus)
    message = str(error.value)
    assert str(path) in message and "line 2: qid '2': 'zz'" in message and "missing from the corpus" in message


@pytest.mark.parametrize("rows, problem", [
    ([{"doc_id": "a", "contents": "x"}, {"doc_id": "a", "contents": "y"}], "duplicate doc_id"),
    ([{"doc_id": "a", "contents": "  "}], "empty passage"),
    ([{"doc_id": "", "contents": "x"}], "empty doc_id"),
])
def test_bad_corpus_rows(tmp_path, rows, problem):
    with pytest.raises(DataError, match=problem):
        load_corpus(write_jsonl(tmp_path / "c.jsonl", rows))


@pytest.mark.parametrize("rows, problem", [
    ([{"qid": "1", "query": "", "retrieval_gt": [["a"]]}], "empty query"),
    ([{"qid": "1", "query": "q", "retrieval_gt": [["a"]]}, {"qid": "1", "query": "r", "retrieval_gt": [["a"]]}],
     "duplicate qid"),
    ([{"qid": "1", "query": "q", "retrieval_gt": []}], "no retrieval_gt"),
    ([{"qid": "1", "query": "q", "retrieval_gt": [["a"], ["a"]]}], "listed twice"),
])
def test_bad_qa_rows(tmp_path, rows, problem):
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", [{"doc_id": "a", "contents": "x"}]))
    with pytest.raises(DataError, match=problem):
        load_qa(write_jsonl(tmp_path / "q.jsonl", rows), corpus)


def test_csv_retrieval_gt_follows_autorag_casting(tmp_path):
    pd.DataFrame({"doc_id": ["a", "b", "c"], "contents": ["x", "y", "z"]}).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame({"qid": ["1", "2", "3"], "query": ["q", "r", "s"],
                  "retrieval_gt": ['[["a"], ["b"]]', '["a", "c"]', "b"]}).to_csv(tmp_path / "q.csv", index=False)
    qa, _ = load_dataset(qa=tmp_path / "q.csv", corpus=tmp_path / "c.csv")
    # list of lists: two required groups; flat list: one group of alternatives; string: one id
    assert qa.groups == [[[0], [1]], [[0, 2]], [[1]]]


INT_CORPUS = [{"doc_id": d, "contents": f"passage {d}"} for d in (3, 1, 10, 2)]
"""A corpus with integer ids; its rows follow the ids as text: '1', '10', '2', '3'."""
INT_GT = [[1, 2], [[1], [10]], 3, "10", [["2", 3]], [7.0]]
"""A flat list of ints, a list of lists, an int, a string naming an int id, a group mixing both, a
whole float (what pandas makes of an integer column with a gap)."""


def write_int_dataset(folder, suffix: str):
    """INT_CORPUS with passage 7, and a question per INT_GT, as files of the given type (CSV cells
    hold the retrieval_gt as JSON, a lone string id as it is)."""
    corpus = [*INT_CORPUS, {"doc_id": 7, "contents": "passage 7"}]
    qa = [{"qid": f"q{i}", "query": f"question {i}", "retrieval_gt": gt} for i, gt in enumerate(INT_GT)]
    if suffix == "csv":
        qa = [{**r, "retrieval_gt": r["retrieval_gt"] if isinstance(r["retrieval_gt"], str)
               else json.dumps(r["retrieval_gt"])} for r in qa]
        pd.DataFrame(corpus).to_csv(folder / "c.csv", index=False)
        pd.DataFrame(qa).to_csv(folder / "q.csv", index=False)
    elif suffix == "json":
        write_json(folder / "c.json", corpus)
        write_json(folder / "q.json", qa)
    else:
        write_jsonl(folder / "c.jsonl", corpus)
        write_jsonl(folder / "q.jsonl", qa)
    return folder / f"q.{suffix}", folder / f"c.{suffix}"


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv"])
def test_integer_ids_match_as_text_in_every_shape_of_retrieval_gt(tmp_path, suffix):
    qa_path, corpus_path = write_int_dataset(tmp_path, suffix)
    qa, corpus = load_dataset(qa=qa_path, corpus=corpus_path)
    assert corpus.doc_ids == ["1", "10", "2", "3", "7"]
    assert corpus.contents[corpus.doc_ids.index("10")] == "passage 10"
    assert qa.qids == [f"q{i}" for i in range(6)]
    assert qa.groups == [[[0, 2]], [[0], [1]], [[3]], [[1]], [[2, 3]], [[4]]]


@pytest.mark.parametrize("retrieval_gt, groups", [
    ([[[1], [10]], [[2, 3]], [[1, 2]]], [[[0], [1]], [[2, 3]], [[0, 2]]]),  # AutoRAG's: arrays of arrays
    ([[1, 2], [10], [3]], [[[0, 2]], [[1]], [[3]]]),  # flat lists: one group of alternatives each
    ([3, 10, 1], [[[3]], [[1]], [[0]]]),  # an int64 column: one id each
])
def test_integer_ids_in_parquet_read_as_numpy_arrays(tmp_path, retrieval_gt, groups):
    pd.DataFrame(INT_CORPUS).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"qid": [0, 1, 2], "query": ["a", "b", "c"], "retrieval_gt": retrieval_gt}).to_parquet(
        tmp_path / "q.parquet")
    assert type(pd.read_parquet(tmp_path / "q.parquet")["retrieval_gt"][0]).__module__ == "numpy"
    qa, corpus = load_dataset(qa=tmp_path / "q.parquet", corpus=tmp_path / "c.parquet")
    assert corpus.doc_ids == ["1", "10", "2", "3"]
    assert qa.qids == ["0", "1", "2"] and qa.groups == groups


def test_a_whole_float_id_is_its_integer_on_both_sides(tmp_path):
    """pandas turns an integer column with a gap into floats: 3.0 must still be passage 3."""
    pd.DataFrame({"doc_id": [1.0, 3.0], "contents": ["x", "y"]}).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"qid": ["a", "b"], "query": ["q", "r"], "retrieval_gt": [3, 1]}).to_parquet(tmp_path / "q.parquet")
    qa, corpus = load_dataset(qa=tmp_path / "q.parquet", corpus=tmp_path / "c.parquet")
    assert corpus.doc_ids == ["1", "3"] and qa.groups == [[[1]], [[0]]]


def test_beir_folder(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "은행", "text": "예금 보호"},
                                            {"_id": "d2", "title": "", "text": "대출 금리"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "예금"}, {"_id": "q2", "text": "금리"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td1\t0\n")
    qa, corpus = load_beir(tmp_path)
    assert corpus.contents == ["은행\n예금 보호", "대출 금리"]
    assert qa.qids == ["q1", "q2"] and qa.groups == [[[0]], [[1]]]
    with pytest.raises(DataError, match="set data.split"):
        load_beir(tmp_path, "dev")


def test_beir_folder_with_integer_ids(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": 10, "title": "", "text": "예금"}, {"_id": 2, "text": "금리"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": 1, "text": "예금"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t2\t1\n1\t10\t1\n")
    qa, corpus = load_beir(tmp_path)
    assert corpus.doc_ids == ["10", "2"] and qa.qids == ["1"] and qa.groups == [[[1], [0]]]


def test_domain_pattern_must_match_every_qid(tmp_path):
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", [{"doc_id": "a", "contents": "x"}]))
    path = write_jsonl(tmp_path / "q.jsonl", [{"qid": "0_law", "query": "q", "retrieval_gt": "a"},
                                              {"qid": "nodomain", "query": "q", "retrieval_gt": "a"}])
    assert load_qa(write_jsonl(tmp_path / "ok.jsonl", [{"qid": "0_law", "query": "q", "retrieval_gt": "a"}]),
                   corpus, domain_pattern=r"_([^_]+)$").domains == ["law"]
    with pytest.raises(DataError, match="nodomain"):
        load_qa(path, corpus, domain_pattern=r"_([^_]+)$")


def test_an_empty_corpus_or_qa_file_is_refused(tmp_path):
    (tmp_path / "c.csv").write_text("doc_id,contents\n")
    with pytest.raises(DataError, match="no passages"):
        load_corpus(tmp_path / "c.csv")
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", [{"doc_id": "a", "contents": "x"}]))
    (tmp_path / "q.csv").write_text("qid,query,retrieval_gt\n")
    with pytest.raises(DataError, match="no questions"):
        load_qa(tmp_path / "q.csv", corpus)


def test_unknown_file_type_and_missing_columns(tmp_path):
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_corpus(tmp_path / "c.txt")
    with pytest.raises(DataError, match=r"missing column\(s\) \['contents'\]"):
        load_corpus(write_jsonl(tmp_path / "c.jsonl", [{"doc_id": "a", "text": "x"}]))


def test_a_corpus_files_other_columns_are_each_passages_metadata(tmp_path):
    rows = [{"doc_id": "b", "contents": "y", "metadata": {"page": 2}, "title": "B"},
            {"doc_id": "a", "contents": "x", "title": "A"}]
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows))
    assert corpus.doc_ids == ["a", "b"]  # sorted by id, the metadata with them; a missing value left out
    assert [corpus.metadata_of(i) for i in range(2)] == [{"title": "A"}, {"page": 2, "title": "B"}]
    assert corpus.key == Corpus(["a", "b"], ["x", "y"]).key  # metadata is no part of the cache key
    pd.DataFrame({"doc_id": ["a"], "contents": ["x"], "page": [3], "tags": [["p", "q"]]}).to_parquet(
        tmp_path / "c.parquet")
    metadata = load_corpus(tmp_path / "c.parquet").metadata_of(0)
    assert metadata == {"page": 3, "tags": ["p", "q"]} and type(metadata["page"]) is int
    plain = load_corpus(write_jsonl(tmp_path / "plain.jsonl", [{"doc_id": "a", "contents": "x"}]))
    assert plain.metadata is None and plain.metadata_of(0) == {}


def test_passages_in_memory_are_checked_as_a_corpus_file_is():
    corpus = corpus_of(["n2", "n1"], ["둘", unicodedata.normalize("NFD", "하나")], [{"page": 2}, {"page": 1}])
    assert (corpus.doc_ids, corpus.contents) == (["n1", "n2"], ["하나", "둘"])
    assert [corpus.metadata_of(i) for i in range(2)] == [{"page": 1}, {"page": 2}]
    with pytest.raises(DataError, match=r"1 duplicate doc_id .*\n  - doc_id 'n1': node 0, node 2"):
        corpus_of(["n1", "n2", "n1"], ["a", "b", "c"], noun="node")


def test_a_llama_index_qa_dataset_is_read_as_qa_and_corpus(tmp_path):
    dataset = {"queries": {"0_law": "계약", "1_tax": "세금"}, "corpus": {"b": "세금 신고", "a": "계약 해지"},
               "relevant_docs": {"0_law": ["a"], "1_tax": ["b", "a"]}, "mode": "text"}
    path = write_json(tmp_path / "qa.json", dataset)
    qa, corpus = load_dataset(qa=path, corpus=path, domain_pattern=r"_([^_]+)$")
    assert (corpus.doc_ids, corpus.contents) == (["a", "b"], ["계약 해지", "세금 신고"])
    assert qa.qids == ["0_law", "1_tax"] and qa.domains == ["law", "tax"]
    assert qa.groups == [[[0]], [[1], [0]]]  # each relevant node is a required group
    bad = write_json(tmp_path / "bad.json", {**dataset, "relevant_docs": {"0_law": "a", "1_tax": ["zz"]}})
    with pytest.raises(DataError, match="1 question whose relevant_docs is not a list:\n  - qid '0_law'"):
        load_qa(bad, corpus)
    missing = write_json(tmp_path / "missing.json", {**dataset, "relevant_docs": {"0_law": ["a"], "1_tax": ["zz"]}})
    with pytest.raises(DataError, match="missing from the corpus .*\n  - row 1: qid '1_tax': 'zz'"):
        load_qa(missing, corpus)
    with pytest.raises(DataError, match="queries should map ids to values"):
        load_corpus(write_json(tmp_path / "list.json", {**dataset, "queries": ["계약"]}))
