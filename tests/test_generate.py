"""QA generation from documents: passages and sentences, the filters, the reply parsing, the
offline inverse cloze (bundled example, autorag-ko-docs), an OpenAI-compatible endpoint served
by a local HTTP server the tests start, and a tiny random-weight chat model."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import AUTORAG_KO_DOCS, KO_MINI, _decoder_tokenizer, _save_tiny, built_once
from ragopt.cli import app
from ragopt.data.documents import Documents, Span, load_documents, load_span_qa
from ragopt.errors import ConfigError, DataError, ModelError
from ragopt.generate import generate_qa, passages_of
from ragopt.generate.endpoint import EndpointChat, RateLimiter, retry_after
from ragopt.generate.filters import NearDuplicates, rejection, trigrams
from ragopt.generate.passages import cut_passages, query_sentence, sentences
from ragopt.generate.prompts import PROMPT_VERSION, parse_qa, parse_verdict, question_messages
from ragopt.generate.runner import plan
from ragopt.generate.writer import QAFile

DOCS = AUTORAG_KO_DOCS / "documents"
KO_CORPUS = KO_MINI / "corpus.jsonl"
DOMAIN = r"^(\w+) - "


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# passages and sentences

def test_sentences_cut_at_endings_bullets_and_headings():
    units = ["1. 개요", "첫 문장은 한 줄에 다 들어가지 않을 만큼 길어서 두 줄에\n걸쳐 끝난다.", "둘째 문장이다.",
             "셋째는\n줄을 넘겨 끝난다.", "· 항목은 명사로 끝남",
             "2017. 12. 9.에 시행된 제도의 자세한 내용은 다음\n보고서에 있다.", "다음 문단이다"]
    separators = ["\n", " ", " ", "\n", "\n", "\n\n", ""]
    text = "".join(unit + separator for unit, separator in zip(units, separators))
    assert [text[s:e] for s, e in sentences(text)] == units


def test_query_sentences_drop_headings_and_numbers_and_strip_bullets():
    def asked(text):
        span = query_sentence(text, 0, len(text))
        return None if span is None else text[span[0]:span[1]]

    assert asked("· 항목은 명사로 끝나는 문장으로 끝남") == "항목은 명사로 끝나는 문장으로 끝남"
    assert asked("1.8. 기타 담뱃잎은 담뱃잎 재료를 의미한다.") == "기타 담뱃잎은 담뱃잎 재료를 의미한다."
    assert asked("Ⅲ 국가안전시스템 개편을 통한 정책적 변화") is None  # a heading: no sentence ending
    assert asked("2,218,417 1,494,457 793,144 25,358 원이다.") is None  # mostly digits
    assert asked("짧은 문장이다.") is None  # under 15 characters
    assert asked("가" * 199 + "다.") is None  # over 200 characters


def test_passages_are_paragraph_windows_inside_the_text():
    paragraph = ("금융위원회는 제도를 개선하였다. " * 12).strip()  # 215 characters
    long = ("아주 긴 문장 " * 200).strip()  # 1,399 characters without a sentence ending
    text = "\n\n".join([paragraph] * 5) + "\n\n-3-\n\n" + long + "\n"
    windows = cut_passages(text)
    # a paragraph alone is under 300: two make a window, closed at the blank line after them; the page
    # number goes with the paragraph before it; the long sentence is cut at spaces into at most 800
    assert windows[:3] == [(0, 432), (434, 866), (868, 1088)]
    assert all(e - s <= 800 and text[s:e] == text[s:e].strip() for s, e in windows[3:])
    assert " ".join(text[s:e] for s, e in windows[3:]) == long
    assert len(windows) == 5


# filters and parsing

@pytest.mark.parametrize(("question", "answer", "reason"), [
    ("예금자보호 한도는 얼마인가요?", "1억 원", None),
    ("예금자보호 한도는 얼마인가요?", "글에 나와 있지 않아 알 수 없습니다.", "dont_know"),
    ("예금자보호 한도는 얼마인가요?", "모르겠습니다", "dont_know"),
    ("모르는 번호로 온 문자의 링크를 누르면 어떻게 되나요?", "악성 앱이 설치될 수 있다", None),  # only answers
    ("이 문서에서 말하는 한도는?", "1억 원", "needs_passage"),
    ("위 글에 따르면 한도는?", "1억 원", "needs_passage"),
    ("본문에서 언급된 기관은?", "예보", "needs_passage"),
    ("What does this passage say?", "x", "needs_passage"),
    ("글 1과 글 2의 공통점은?", "x", "needs_passage"),
    ("이 글로벌 기업의 본사는 어디인가요?", "서울", None),  # 글로벌 is not 글
    ("", "", "no_question"),
])
def test_rejection(question, answer, reason):
    assert rejection(question, answer) == reason


def test_near_duplicates_by_trigram_jaccard():
    assert trigrams("A b, cd!") == {"abc", "bcd"}
    kept = NearDuplicates(0.5, ["abcd"])
    assert kept.duplicate_of("abce") is None  # {abc, bce} vs {abc, bcd}: 1/3
    assert kept.duplicate_of("abcd?") == "abcd"  # punctuation and case ignored: 1
    kept.add("abcdef")  # {abc, bcd, cde, def}
    assert kept.duplicate_of("abcde") == "abcdef"  # 3/4 with abcdef, 2/3 with abcd: the most similar
    sentences_ = ["예금자보호 한도는 얼마인가요", "예금자 보호 한도는 얼마인가", "신용점수는 어떻게 매겨지나요", "한도"]
    for threshold in (0.3, 0.6, 0.9):
        index = NearDuplicates(threshold, sentences_[:1])
        for s in sentences_[1:]:
            a, b = trigrams(s), trigrams(sentences_[0])
            brute = len(a & b) / len(a | b)
            assert (index.duplicate_of(s) is not None) == (brute > threshold)


def test_parse_qa_finds_the_object_in_any_reply():
    assert parse_qa('{"question": "Q?", "answer": "A"}') == ("Q?", "A")
    assert parse_qa('<think>{"question": "no"}</think>\n```json\n{"question": " Q? ", "answer": 3}\n```') == ("Q?", "3")
    assert parse_qa('설명: {"x": 1} 그리고 {"질문": "한도는?", "답변": "1억 {원}"} 끝') == ("한도는?", "1억 {원}")
    assert parse_qa('{"question": "", "answer": ""}') == ("", "")
    assert parse_qa("Sorry, I cannot help.") is None
    assert parse_qa('{"question": "cut sh') is None
    assert parse_qa('{"question": ["a list"]}') is None


@pytest.mark.parametrize(("reply", "verdict"), [("예", True), ("네, 답할 수 있습니다.", True), ("Yes.", True),
                                                ("아니오", False), ("아니요. 없습니다", False), ("no", False),
                                                ("<think>예</think>아니오", False), ("글쎄요", None), ("", None)])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


# offline inverse cloze

def check_offline(path: Path, documents: Documents) -> list[dict]:
    """Every record's spans lie inside its document, the masked sentence inside the evidence, and
    the question is that sentence (whitespace collapsed); load_span_qa reads the file."""
    texts = {d.doc_id: d.text for d in documents}
    records = lines(path)
    for r in records:
        (evidence,), (masked,) = r["evidence"], r["masked"]
        text = texts[evidence["document"]]
        assert 0 <= evidence["start"] < evidence["end"] <= len(text)
        assert masked["document"] == evidence["document"]
        assert evidence["start"] <= masked["start"] < masked["end"] <= evidence["end"]
        sentence = text[masked["start"]:masked["end"]]
        assert sentence == sentence.strip() and " ".join(sentence.split()) == r["query"]
        left = text[evidence["start"]:masked["start"]] + text[masked["end"]:evidence["end"]]
        assert left.strip(), r["qid"]  # the passage keeps text to be found by once its sentence is blanked
        assert r["kind"] == "cloze" and r["generator"] == {"type": "offline", "method": "inverse cloze"}
    loaded = load_span_qa(path, documents, domain_column="domain" if "domain" in records[0] else None)
    assert loaded.qids == [r["qid"] for r in records]
    assert loaded.evidence == [[[Span(**e)] for e in r["evidence"]] for r in records]
    assert loaded.masked == [Span(**m) for r in records for m in r["masked"]]
    return records


def test_offline_on_the_bundled_example(tmp_path):
    documents = load_documents(KO_CORPUS)
    done = generate_qa(documents, tmp_path / "qa.jsonl", questions=100, domain_pattern=DOMAIN)
    records = check_offline(tmp_path / "qa.jsonl", documents)
    assert (done.passages, done.written, done.before, done.ran_out, done.usage) == (60, 60, 0, True, None)
    assert len(records) == 60 and not done.rejected  # every document has two sentences to ask with
    assert Counter(r["domain"] for r in records) == {"finance": 15, "law": 15, "medical": 15, "tech": 15}
    assert all(r["qid"] == f"g{i}_{r['domain']}" for i, r in enumerate(records))


def test_a_passage_of_one_sentence_is_not_asked_about(tmp_path):
    """Its sentence masked, nothing of the passage would be left to find it by: no chunk could hold
    its evidence and every metric of the question would be 0 / 0."""
    alone = "서울시는 내년 삼월부터 시내 모든 공공 도서관의 개관 시간을 밤 열 시까지 연장하기로 결정했다."
    pair = "지방은행이 시중은행으로 전환하려면 금융위원회의 인가를 받아야 한다. 인가 심사는 보통 육 개월 정도 걸린다."
    (tmp_path / "docs").mkdir()
    first = " ".join([pair] * 6)  # a paragraph long enough to close a passage of its own
    (tmp_path / "docs" / "a.txt").write_text(first + "\n\n" + alone + "\n", encoding="utf-8")
    documents = load_documents(tmp_path / "docs")
    done = generate_qa(documents, tmp_path / "qa.jsonl", questions=10)
    records = check_offline(tmp_path / "qa.jsonl", documents)
    assert done.passages == 2 and len(records) == 1 and done.rejected == {"no_sentence": 1}
    assert records[0]["evidence"][0]["end"] <= len(first)


def test_offline_resumed_equals_one_run_and_is_seeded(tmp_path):
    documents = load_documents(KO_CORPUS)
    generate_qa(documents, tmp_path / "whole.jsonl", questions=40, seed=3)
    first = generate_qa(documents, tmp_path / "parts.jsonl", questions=15, seed=3)
    second = generate_qa(documents, tmp_path / "parts.jsonl", questions=40, seed=3)
    assert (first.written, second.before, second.written) == (15, 15, 25)
    assert (tmp_path / "parts.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    generate_qa(documents, tmp_path / "other.jsonl", questions=40, seed=4)
    assert (tmp_path / "other.jsonl").read_text() != (tmp_path / "whole.jsonl").read_text()


@pytest.mark.skipif(not DOCS.exists(), reason="../shared/data/autorag-ko-docs is not beside this checkout")
def test_offline_on_autorag_ko_docs(tmp_path):
    documents = load_documents(DOCS)
    done = generate_qa(documents, tmp_path / "qa.jsonl", questions=10_000, domain_pattern=DOMAIN)
    records = check_offline(tmp_path / "qa.jsonl", documents)
    assert done.ran_out and len(records) == done.written > 500
    assert done.written + sum(done.rejected.values()) == done.passages
    assert set(done.rejected) <= {"no_sentence", "near_duplicate"}
    assert {r["domain"] for r in records} == {"commerce", "finance", "law", "public"}
    assert len({r["source"] for r in records}) == len(records)
    passages = passages_of(documents)
    tasks = list(plan(passages, ("cloze",), 0))
    assert sorted(t.passages[0].key for t in tasks) == sorted(p.key for p in passages)  # each passage once
    assert len({t.passages[0].document for t in tasks[:32]}) == 32  # one of each document before a second
    masked = load_span_qa(tmp_path / "qa.jsonl", documents).masked
    blanked = {d.doc_id: d.text for d in documents.masked(masked)}
    for span in masked:  # the masked sentences are blank in what is indexed, the rest unchanged
        assert not blanked[span.document][span.start:span.end].strip()
    original = {d.doc_id: d.text for d in documents}
    changed = sum(a != b for doc in original for a, b in zip(original[doc], blanked[doc]))
    assert changed == sum(1 for s in masked for c in original[s.document][s.start:s.end] if c != " ")


def test_cli_offline(tmp_path):
    out = tmp_path / "qa.jsonl"
    args = ["generate-qa", str(KO_CORPUS), "-o", str(out), "-n", "12", "--domain-pattern", DOMAIN, "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote 12 questions to {out} (12 in all, 0 before) in ")
    assert len(lines(out)) == 12
    again = CliRunner().invoke(app, args)
    assert again.output.startswith(f"wrote 0 questions to {out} (12 in all, 12 before)")
    bad = CliRunner().invoke(app, [*args[:6], "--domain-pattern", r"^(\d+)x"])
    assert bad.exit_code == 2 and "60 of 60 document ids do not match the domain pattern" in bad.output


# the OpenAI-compatible endpoint

class ChatServer(ThreadingHTTPServer):
    """A chat-completions server on 127.0.0.1: canned replies keyed by the passage's title (its
    first line), scripted failures by request number, every request and the usage it reported."""

    daemon_threads = True
    request_queue_size = 64  # the default 5 drops connections 8 threads open at once: a 1 s SYN retry each

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.failures: dict[int, tuple[int, dict[str, str]]] = {}
        self.reset()

    def reset(self, failures: dict[int, tuple[int, dict[str, str]]] | None = None) -> None:
        self.failures = failures or {}
        self.count = self.ok = self.prompt_tokens = self.completion_tokens = 0
        self.headers_seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @staticmethod
    def reply(messages: list[dict[str, str]]) -> str:
        user = messages[-1]["content"]
        if "\n\n질문: " in user:  # the answerability check
            question = user.split("\n\n질문: ")[1].split("\n\n")[0]
            return "아니오" if question.startswith("기준금리") else "예"
        title = user.split('"""\n', 1)[1].split("\n", 1)[0]
        if title == "환율과 무역":
            return "Sorry, I cannot do that."
        question = {"예금자보호제도": "예금자보호 한도는?", "신용점수": "이 문서에서 설명하는 점수의 범위는?",
                    "분산투자": "금융 상품에 투자할 때 알아야 할 점은?",
                    "휴면예금": "금융 상품에 투자할 때 알아야 할 점은?"}.get(title, f"{title}는 무엇인가요?")
        answer = "글에 나와 있지 않아 알 수 없습니다." if title == "예금자보호제도" else f"{title}의 요점"
        reply = json.dumps({"question": question, "answer": answer}, ensure_ascii=False)
        return f"질문을 만들었습니다.\n```json\n{reply}\n```"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            number = server.count
            server.count += 1
            server.headers_seen.append(dict(self.headers))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if number in server.failures:
            status, headers = server.failures[number]
            return self._send(status, {"error": "busy"}, headers)
        content = server.reply(body["messages"])
        prompt, completion = len(body["messages"][-1]["content"]), len(content)
        with server.lock:
            server.ok += 1
            server.prompt_tokens += prompt
            server.completion_tokens += completion
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                            **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def chat_server():
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def endpoint(server: ChatServer, waits: list[float], **settings) -> EndpointChat:
    return EndpointChat(server.url, "test-model", sleep=waits.append, **settings)


def run_endpoint(server, path, waits, concurrency=1, questions=100, kinds=("factoid",), **settings):
    chat = endpoint(server, waits, **settings)
    done = generate_qa(load_documents(KO_CORPUS), path, questions=questions, generator="endpoint", chat=chat,
                       kinds=kinds, concurrency=concurrency, domain_pattern=DOMAIN)
    return done, chat


def test_endpoint_filters_retries_and_counts_tokens(chat_server, tmp_path):
    chat_server.reset({1: (429, {"Retry-After": "7"}), 4: (503, {})})
    waits: list[float] = []
    done, chat = run_endpoint(chat_server, tmp_path / "qa.jsonl", waits)
    assert done.rejected == {"dont_know": 1, "needs_passage": 1, "unparsable": 1, "unanswerable": 1,
                             "near_duplicate": 1}
    assert done.written == 55 and done.ran_out
    assert sorted(waits) == [1.0, 7.0]  # Retry-After honoured; a 503 without it waits 1 s, the first backoff
    # a kept question, an unanswerable one and the near-duplicate were checked: two requests; the others one
    assert chat_server.ok == chat.usage.requests == 2 * 57 + 3 and chat_server.count == chat_server.ok + 2
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (chat_server.prompt_tokens,
                                                                         chat_server.completion_tokens)
    documents = {d.doc_id: d.text for d in load_documents(KO_CORPUS)}
    for record in lines(tmp_path / "qa.jsonl"):
        (span,) = record["evidence"]
        title = documents[span["document"]].split("\n")[0]
        assert (span["start"], span["end"]) == (0, len(documents[span["document"]]))
        assert record["answer"] == f"{title}의 요점" and record["kind"] == "factoid"
        assert record["generator"] == {"type": "endpoint", "model": "test-model", "prompt": PROMPT_VERSION}
        assert record["source"] == f"{span['document']}:0-{span['end']}:factoid"
    rejected = {r["reason"]: r for r in lines(tmp_path / "qa.rejected.jsonl")}
    assert rejected["unparsable"]["reply"] == "Sorry, I cannot do that."
    assert rejected["near_duplicate"]["duplicate_of"] == "금융 상품에 투자할 때 알아야 할 점은?"
    assert rejected["needs_passage"]["source"].startswith("finance - 신용점수:")


def test_endpoint_resume_asks_nothing_done(chat_server, tmp_path):
    chat_server.reset()
    whole, _ = run_endpoint(chat_server, tmp_path / "whole.jsonl", [])
    requests = chat_server.ok
    chat_server.reset()
    again, _ = run_endpoint(chat_server, tmp_path / "whole.jsonl", [])
    assert (again.before, again.written, chat_server.count) == (55, 0, 0)
    run_endpoint(chat_server, tmp_path / "parts.jsonl", [], questions=20)
    run_endpoint(chat_server, tmp_path / "parts.jsonl", [])
    assert chat_server.ok == requests  # the two parts asked exactly what one run asks
    for name in ("parts.jsonl", "parts.rejected.jsonl"):
        assert (tmp_path / name).read_text() == (tmp_path / name.replace("parts", "whole")).read_text()


def test_endpoint_concurrent_writes_what_serial_writes(chat_server, tmp_path):
    chat_server.reset()
    run_endpoint(chat_server, tmp_path / "serial.jsonl", [], kinds=("factoid", "concept", "two_hop"))
    chat_server.reset({3: (500, {}), 10: (429, {"Retry-After": "0"})})
    waits: list[float] = []
    run_endpoint(chat_server, tmp_path / "threads.jsonl", waits, concurrency=8, kinds=("factoid", "concept", "two_hop"))
    assert sorted(waits) == [0.0, 1.0]
    for name in ("serial.jsonl", "serial.rejected.jsonl"):
        assert (tmp_path / name).read_text() == (tmp_path / name.replace("serial", "threads")).read_text()
    records = lines(tmp_path / "threads.jsonl")
    rejected = lines(tmp_path / "threads.rejected.jsonl")
    assert len(rejected) == 5  # the five passages whose replies the server makes fail a filter
    kinds = Counter(r["kind"] for r in records) + Counter(r["source"].rsplit(":", 1)[1] for r in rejected)
    assert kinds == {"factoid": 20, "concept": 20, "two_hop": 20}  # 60 passages, the kinds in turn
    for record in (r for r in records if r["kind"] == "two_hop"):
        first, second = record["evidence"]
        assert first["document"] != second["document"]  # ko-mini: one passage a document, so another one
        assert first["document"].split(" - ")[0] == second["document"].split(" - ")[0] == record["domain"]


def test_endpoint_errors_say_what_to_change(chat_server, tmp_path):
    chat_server.reset()
    wrong = EndpointChat(chat_server.url.removesuffix("/v1"), "test-model", sleep=[].append)
    with pytest.raises(ModelError, match=r"HTTP 404 .*--base-url must be the part before /chat/completions"):
        wrong.complete([{"role": "user", "content": "hi"}])
    chat_server.reset({n: (503, {}) for n in range(10)})
    waits: list[float] = []
    with pytest.raises(ModelError, match="failed 3 times \\(last: HTTP 503\\)"):
        endpoint(chat_server, waits, retries=2).complete([{"role": "user", "content": "hi"}])
    assert waits == [1.0, 2.0]
    with pytest.raises(ConfigError, match="needs --base-url"):
        generate_qa(load_documents(KO_CORPUS), tmp_path / "qa.jsonl", generator="endpoint", model="m")


def test_cli_endpoint_sends_the_key_and_prints_tokens(chat_server, tmp_path, monkeypatch):
    chat_server.reset()
    monkeypatch.setenv("RAGOPT_TEST_KEY", "sk-test")
    out = tmp_path / "qa.jsonl"
    args = ["generate-qa", str(KO_CORPUS), "-o", str(out), "-n", "5", "-g", "endpoint", "--base-url", chat_server.url,
            "--model", "test-model", "--kinds", "concept", "--no-check", "-c", "3", "-q"]
    result = CliRunner().invoke(app, [*args, "--api-key-env", "RAGOPT_TEST_KEY"])
    assert result.exit_code == 0, result.output
    assert f"{chat_server.ok} requests, {chat_server.prompt_tokens} prompt + {chat_server.completion_tokens} " \
           "completion tokens" in result.output
    assert {h["Authorization"] for h in chat_server.headers_seen} == {"Bearer sk-test"}
    assert len(lines(out)) == 5 and {r["kind"] for r in lines(out)} == {"concept"}
    missing = CliRunner().invoke(app, [*args, "--api-key-env", "RAGOPT_NO_SUCH_KEY"])
    assert missing.exit_code == 2 and "RAGOPT_NO_SUCH_KEY, which is not set" in missing.output


def test_rate_limiter_spaces_requests():
    slept: list[float] = []
    limiter = RateLimiter(60, clock=lambda: 100.0, sleep=slept.append)
    for _ in range(3):
        limiter.wait()
    assert slept == [1.0, 2.0]  # one a second: the second waits 1 s, the third 2 s
    assert retry_after({"Retry-After": "2.5"}) == 2.5
    now = datetime(2015, 10, 21, 7, 27, 50, tzinfo=timezone.utc)
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now) == 10.0
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None


# the output file

def test_a_cut_last_line_is_made_again_and_a_foreign_file_refused(tmp_path):
    documents = load_documents(KO_CORPUS)
    generate_qa(documents, tmp_path / "whole.jsonl", questions=6)
    text = (tmp_path / "whole.jsonl").read_text()
    cut = text[:text.rindex("\n", 0, len(text) - 1) + 30]  # the last record cut short
    (tmp_path / "cut.jsonl").write_text(cut)
    with pytest.warns(UserWarning, match="last line was cut short"):
        done = generate_qa(documents, tmp_path / "cut.jsonl", questions=6)
    assert (done.before, done.written) == (5, 1)
    assert (tmp_path / "cut.jsonl").read_text() == text
    (tmp_path / "qa.jsonl").write_text('{"qid": "q1", "query": "x", "evidence": []}\n')
    with pytest.raises(DataError, match="line 1 is not a record generate-qa wrote"):
        QAFile(tmp_path / "qa.jsonl")


# a local chat model

@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A Qwen3 causal LM with random weights and a chat template."""
    def build(folder: Path) -> None:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        tokenizer = _decoder_tokenizer()
        tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                                   "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
        _save_tiny(folder, Qwen3ForCausalLM, Qwen3Config, tokenizer, seed=6, num_key_value_heads=1, head_dim=16,
                   max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id)

    return built_once(tmp_path_factory, "tiny-qwen3-chat", build)


def test_local_model_runs_and_counts_unparsable_replies(tiny_chat_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    documents = Documents(load_documents(KO_CORPUS).docs[:3])
    done = generate_qa(documents, tmp_path / "qa.jsonl", questions=2, generator="local", model=str(tiny_chat_model),
                       kinds=["factoid"], max_tokens=4)
    assert (done.written, done.rejected, done.ran_out) == (0, {"unparsable": 3}, True)
    assert done.usage.requests == 3 and 3 <= done.usage.completion_tokens <= 12
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    texts = {p.key: p.text for p in passages_of(documents)}
    prompt_tokens = 0
    for entry in lines(tmp_path / "qa.rejected.jsonl"):
        inputs = tokenizer.apply_chat_template(question_messages("factoid", [texts[entry["source"][:-8]]]),
                                               add_generation_prompt=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        prompt_tokens += inputs["input_ids"].shape[1]
        assert entry["reply"] == tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert done.usage.prompt_tokens == prompt_tokens


def test_generator_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="generator must be one of"):
        generate_qa(KO_CORPUS, tmp_path / "qa.jsonl", generator="gpt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="question kinds must be some of"):
        generate_qa(KO_CORPUS, tmp_path / "qa.jsonl", generator="endpoint", kinds=["trivia"])
    with pytest.raises(ConfigError, match="needs a model"):
        generate_qa(KO_CORPUS, tmp_path / "qa.jsonl", generator="local")


def test_generate_imports_no_torch():
    from test_startup import imported_heavy

    body = "import ragopt.generate, ragopt.generate.endpoint, ragopt.generate.local"
    assert imported_heavy(body) == "heavy: []"
