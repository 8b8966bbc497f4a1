"""Bad input, as users bring it: each stops with one paragraph naming the file, the setting, the
line (JSONL, CSV) or row (parquet) and the fix, and the command line prints it without a
traceback; texts longer than a model takes are counted in one warning."""

import json
import socket
import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from ragopt.cli import app
from ragopt.data.qa import DataError, load_corpus, load_dataset, load_qa
from ragopt.errors import ModelError
from ragopt.stages.models import Locator

runner = CliRunner()
GOOD_QA = [{"qid": "q1", "query": "예금 보호", "retrieval_gt": [["a"]]},
           {"qid": "q2", "query": "대출 금리", "retrieval_gt": [["b"]]}]


def write_jsonl(path, rows, blank_line_after: int | None = None):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if blank_line_after is not None:
        lines.insert(blank_line_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus_file(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", [{"doc_id": d, "contents": f"{d} 본문"} for d in "abc"])


def validate(tmp_path, qa, corpus) -> str:
    """`ragopt validate` on a config naming these data files; its output, words joined by one space."""
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{qa: {qa}, corpus: {corpus}}}\nretrievers: [{{name: b, type: bm25, "
                      "tokenizer: whitespace}]\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    return " ".join(result.output.split())


def test_a_missing_data_path_names_its_setting_and_the_files_beside_it(tmp_path, corpus_file):
    write_jsonl(tmp_path / "qa.jsonl", GOOD_QA)
    with pytest.raises(DataError) as error:
        load_dataset(qa=tmp_path / "qa.jsonl", corpus=tmp_path / "corpos.jsonl")
    message = str(error.value)
    assert f"{tmp_path / 'corpos.jsonl'}: no such file or folder (the path data.corpus gives" in message
    assert "Did you mean corpus.jsonl" in message
    output = validate(tmp_path, "qa.json", "corpus.jsonl")
    assert "(the path data.qa gives; paths in a config are relative to the config file)" in output
    assert "Did you mean qa.jsonl" in output
    with pytest.raises(DataError, match="the path data.beir gives.*Its folder .* does not exist either"):
        load_dataset(beir=tmp_path / "no" / "beir")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_cp949_file_says_where_it_stops_being_utf8_and_what_it_is(tmp_path, corpus_file, suffix):
    rows = ['qid,query,retrieval_gt', 'q1,deposit,a', 'q2,대출 금리,b'] if suffix == "csv" else \
        [json.dumps(r, ensure_ascii=False) for r in GOOD_QA[::-1]]
    data = "\n".join(rows).encode("cp949")
    (tmp_path / f"qa.{suffix}").write_bytes(data)
    offset = min(i for i, byte in enumerate(data) if byte >= 0x80)
    line = data[:offset].count(b"\n") + 1
    with pytest.raises(DataError) as error:
        load_dataset(qa=tmp_path / f"qa.{suffix}", corpus=corpus_file)
    message = str(error.value)
    assert f"qa.{suffix}: not UTF-8 text: byte {offset} (line {line}) is 0x{data[offset]:02x}." in message
    assert "It reads as CP949 (EUC-KR), the Korean Windows encoding" in message and "대출 금리" in message
    assert f"Save it as UTF-8, e.g. `iconv -f cp949 -t utf-8 qa.{suffix} > utf8-qa.{suffix}`" in message
    if suffix == "csv":
        output = validate(tmp_path, "qa.csv", "corpus.jsonl")
        assert f"byte {offset} (line 3)" in output and "It reads as CP949 (EUC-KR)" in output


def test_other_encodings_are_told_to_become_utf8(tmp_path):
    (tmp_path / "latin.csv").write_bytes("doc_id,contents\na,café\n".encode("latin-1") + b"\xff")
    with pytest.raises(DataError, match=r"byte 21 \(line 2\) is 0xe9. Save the file as UTF-8.$"):
        load_corpus(tmp_path / "latin.csv")
    (tmp_path / "excel.csv").write_bytes("doc_id,contents\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"The file is UTF-16 \(Excel's 'Unicode text'\); save it as UTF-8"):
        load_corpus(tmp_path / "excel.csv")


def test_an_empty_qa_file_and_missing_columns_name_what_is_there_and_what_is_meant(tmp_path, corpus_file):
    corpus = load_corpus(corpus_file)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: the file is empty \(no rows, no columns\)\. A QA file "
                                        r"\(AutoRAG's format\) needs the columns qid, query, retrieval_gt\.$"):
        load_qa(tmp_path / "empty.jsonl", corpus)
    pd.DataFrame({"QID": ["q1"], "question": ["예금"], "retrieval_gts": ['["a"]']}).to_csv(tmp_path / "qa.csv",
                                                                                         index=False)
    with pytest.raises(DataError) as error:
        load_qa(tmp_path / "qa.csv", corpus)
    assert str(error.value) == (
        f"{tmp_path / 'qa.csv'}: missing column(s) ['qid', 'query', 'retrieval_gt']; found ['QID', 'question', "
        "'retrieval_gts']. A QA file (AutoRAG's format) needs the columns qid, query, retrieval_gt. Rename 'QID' to "
        "'qid', 'question' to 'query', 'retrieval_gts' to 'retrieval_gt'?")


def test_a_misnamed_domain_column_and_a_broken_jsonl_line_are_placed(tmp_path, corpus_file):
    corpus = load_corpus(corpus_file)
    path = write_jsonl(tmp_path / "qa.jsonl", [{**row, "domain": "law"} for row in GOOD_QA])
    with pytest.raises(DataError, match=r"no column 'domian', which data.domain_column names; found \['qid', "
                                        r"'query', 'retrieval_gt', 'domain'\]\. Did you mean 'domain'\?"):
        load_qa(path, corpus, domain_column="domian")
    path.write_text(path.read_text() + '{"qid": "q3", "query": "x", "retrieval_gt": [["a"]]\n')
    with pytest.raises(DataError, match=r"qa.jsonl: line 3 is not valid JSON \(Expecting ',' delimiter at "
                                        r"character 52\); a JSONL file holds one JSON object per line\.$"):
        load_qa(path, corpus)


def test_duplicate_doc_ids_are_named_with_every_line_they_are_on(tmp_path):
    (tmp_path / "c.csv").write_text('doc_id,contents\na,"two\nlines"\nb,x\na,y\nc,z\nb,w\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_corpus(tmp_path / "c.csv")
    assert str(error.value) == (f"{tmp_path / 'c.csv'}: 2 duplicate doc_ids (compared after NFC normalization):\n"
                                "  - doc_id 'a': line 2, line 5\n  - doc_id 'b': line 4, line 7\n"
                                "Doc ids must be unique; merge or rename the duplicated passages.")
    pd.DataFrame({"doc_id": ["a", "b", "a"], "contents": ["x", "y", "z"]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"1 duplicate doc_id .*:\n  - doc_id 'a': row 0, row 2\n"):
        load_corpus(tmp_path / "c.parquet")


def test_a_csv_row_with_a_stray_comma_is_named_by_its_line(tmp_path):
    (tmp_path / "c.csv").write_text("doc_id,contents\na,x\nb,1,000 won\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c.csv: line 3 has 3 fields, the header line has 2\. A field holding the "
                                        r"separator, a quote or a line break must be in double quotes"):
        load_corpus(tmp_path / "c.csv")


def test_ground_truth_ids_missing_from_the_corpus_are_counted_and_placed(tmp_path, corpus_file):
    corpus = load_corpus(corpus_file)
    rows = [{"qid": "q1", "query": "a", "retrieval_gt": [["a"]]}, {"qid": "q2", "query": "b", "retrieval_gt": [["zz"]]},
            {"qid": "q3", "query": "c", "retrieval_gt": [["c", "yy"], ["xx"]]}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows, blank_line_after=1)
    with pytest.raises(DataError) as error:
        load_qa(path, corpus)
    assert str(error.value) == (
        f"{path}: 3 retrieval_gt ids missing from the corpus {corpus_file} (in 2 of 3 questions):\n"
        "  - line 3: qid 'q2': 'zz'\n  - line 4: qid 'q3': 'yy'\n  - line 4: qid 'q3': 'xx'\n"
        "Fix the ids, or point data.corpus at the corpus these questions were written for.")
    other = write_jsonl(tmp_path / "other.jsonl", rows[1:])
    with pytest.raises(DataError, match=r"No question's ids are in the corpus: its doc ids look like \['a', 'b', "
                                        r"'c'\], these like \['zz', 'yy', 'xx'\]"):
        load_qa(other, corpus)


def test_integer_ids_pass_validate_from_the_command_line(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"doc_id": d, "contents": f"{d} 본문"} for d in (1, 2, 3)])
    write_jsonl(tmp_path / "qa.jsonl", [{"qid": 1, "query": "예금", "retrieval_gt": [1, 2]},
                                        {"qid": 2, "query": "금리", "retrieval_gt": 3}])
    (tmp_path / "config.yaml").write_text("data: {qa: qa.jsonl, corpus: corpus.jsonl}\nretrievers: [{name: b, "
                                          "type: bm25, tokenizer: whitespace}]\ntop_k: [1, 2]\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 2 questions, 3 passages, 1 retrievers")


def test_retrieval_gt_that_is_not_doc_ids_is_placed_row_by_row(tmp_path, corpus_file):
    corpus = load_corpus(corpus_file)
    rows = [{"qid": "q1", "query": "a", "retrieval_gt": ["a", ["b"]]}, {"qid": "q2", "query": "b", "retrieval_gt": 1},
            {"qid": "q3", "query": "c", "retrieval_gt": [[["a"]]]}, {"qid": "q4", "query": "d", "retrieval_gt": [True]},
            {"qid": "q5", "query": "e", "retrieval_gt": {"a": 1}}]
    with pytest.raises(DataError) as error:
        load_qa(write_jsonl(tmp_path / "qa.jsonl", rows), corpus)
    assert str(error.value) == (
        f"{tmp_path / 'qa.jsonl'}: 4 questions whose retrieval_gt is not doc ids:\n"
        "  - line 1: qid 'q1': ['a', ['b']] mixes ids and lists\n"
        "  - line 3: qid 'q3': ['a'] is not a doc id (a string or an integer)\n"
        "  - line 4: qid 'q4': True is not a doc id (a string or an integer)\n"
        "  - line 5: qid 'q5': {'a': 1} is not a doc id (a string or an integer)\n"
        'Write retrieval_gt as one doc id ("a" or 7), a list of alternatives (["a", "b"]) or a list of required '
        'groups ([["a"], ["b", "c"]]); in a CSV cell as JSON.')
    (tmp_path / "qa.csv").write_text('qid,query,retrieval_gt\nq1,a,"[""a"", ""b""]"\nq2,b,"[""a"""\n',
                                     encoding="utf-8")
    with pytest.raises(DataError, match=r"1 question whose retrieval_gt is not doc ids:\n  - line 3: qid 'q2': "
                                        r"\[\"a\" is not valid JSON \(Expecting ',' delimiter at character 5\)"):
        load_qa(tmp_path / "qa.csv", corpus)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, online unless a test says otherwise."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


def test_a_model_id_that_is_not_cached_fails_at_once_offline(empty_hub, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(empty_hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "model_info", lambda *args, **kwargs: pytest.fail("offline, the hub was asked"))
    with pytest.raises(ModelError) as error:
        Locator()("nobody/no-such-model")
    assert str(error.value) == (
        f"model 'nobody/no-such-model' is not in the local Hugging Face cache ({empty_hub.HF_HUB_CACHE}) and cannot "
        "be downloaded now (HF_HUB_OFFLINE is set). Download it beforehand where there is network (`hf download "
        "nobody/no-such-model`, into this cache or one HF_HOME points to), give its files as a local folder "
        "(relative to the config file, or absolute), or check the id's spelling.")


def test_a_hub_that_never_answers_costs_hub_timeout_not_minutes(empty_hub, monkeypatch):
    """A server that takes the connection and never replies, as behind a firewall that drops
    packets: huggingface_hub alone waits forever."""
    from ragopt.stages import models

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(empty_hub, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(models, "HUB_TIMEOUT", 1.0)
        with pytest.raises(ModelError, match=r"cannot be downloaded now \(the hub could not be asked: TimeoutError: "
                                             r"no answer within 1 s\)\. Download it beforehand"):
            Locator()("nobody/no-such-model")  # returns: the timeout, not the silent server, ended the wait


def test_a_path_with_a_typo_is_not_sent_to_the_hub(empty_hub, tmp_path):
    with pytest.raises(ModelError, match=f"model '{tmp_path}/modles/ko': there is no folder {tmp_path}/modles/ko, "
                                         "and it is not a Hugging Face hub id"):
        Locator()(f"{tmp_path}/modles/ko")


def truncation_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "truncated to fit" in str(w.message)]


def test_passages_past_the_encoders_limit_are_counted_in_one_warning(ko_mini, tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from ragopt.stages.cache import Cache
    from ragopt.stages.engine import Engine
    from ragopt.stages.retrievers.dense import DenseSpec

    _, corpus = ko_mini
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(tiny_bert)(corpus.contents)["input_ids"]]
    longer = sum(n > 40 for n in lengths)
    assert 0 < longer < len(corpus) and 40 in lengths  # some cut, some not, one exactly at the limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Engine(corpus, Cache(tmp_path), "cpu").retriever(DenseSpec(model=str(tiny_bert), max_length=40))
    assert truncation_warnings(caught) == [
        f"{longer} of {len(corpus)} texts were truncated to fit {tiny_bert}'s 40 tokens: the model does not see "
        "their ends. Split long passages into shorter ones, or raise the entry's max_length where the model allows it."]


def test_reranked_pairs_past_the_limit_are_counted_in_one_warning(ko_mini, tiny_xlmr_reranker):
    from transformers import AutoTokenizer

    from ragopt.stages.rerankers._pairs import pair_features
    from ragopt.stages.rerankers.cross_encoder import CrossEncoderSpec
    from ragopt.testing.rerankers import scorer_of

    qa, corpus = ko_mini
    pairs = [(qa.queries.texts[i], corpus.contents[i]) for i in range(20)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_xlmr_reranker)
    whole = [len(ids) for ids in tokenizer([q for q, _ in pairs], [p for _, p in pairs])["input_ids"]]
    longer = sum(n > 80 for n in whole)
    assert 0 < longer < len(pairs) and 80 in whole  # some cut, some not, one exactly at the limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer_of(CrossEncoderSpec(model=str(tiny_xlmr_reranker), max_length=80)).score(pairs)
        query_ids = [len(ids) for ids in tokenizer([q for q, _ in pairs], add_special_tokens=False)["input_ids"]]
        pair_features(tokenizer, pairs, 80, 12)
    queries_cut = sum(w > 80 or q > 12 for w, q in zip(whole, query_ids))
    assert queries_cut > longer
    assert truncation_warnings(caught) == [
        f"{longer} of 20 query-passage pairs were truncated to fit {tiny_xlmr_reranker}'s 80 tokens: the model does "
        "not see their ends. Split long passages into shorter ones, or raise the entry's max_length where the model "
        "allows it.",
        f"{queries_cut} of 20 query-passage pairs (queries first cut to 12 tokens) were truncated to fit "
        f"{tiny_xlmr_reranker}'s 80 tokens: the model does not see their ends. Split long passages into shorter ones, "
        "or raise the entry's max_length where the model allows it."]

