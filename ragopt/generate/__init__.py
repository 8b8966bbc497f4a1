"""QA sets generated from documents, every question with its evidence as character spans:
offline by inverse cloze (no model), through a chat model at an OpenAI-compatible endpoint, or
through a Hugging Face chat model run here. The output is a span QA file (load_span_qa reads
it); a rerun with the same output resumes it.

Example:
    from ragopt.generate import generate_qa
    generate_qa("docs/", "qa.jsonl", questions=200, domain_pattern=r"^(\\w+) - ")
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Sequence, get_args

from ragopt.data.documents import Documents, load_documents
from ragopt.errors import ConfigError, DataError
from ragopt.generate.filters import DUPLICATE, rejection
from ragopt.generate.offline import GENERATOR, cloze
from ragopt.generate.passages import Passage, cut_passages
from ragopt.generate.prompts import KINDS, check_messages, parse_qa, parse_verdict, question_messages
from ragopt.generate.runner import Chat, Outcome, Task, Usage, plan, run
from ragopt.generate.writer import QAFile

Generator = Literal["offline", "endpoint", "local"]
GENERATORS = get_args(Generator)

__all__ = ["GENERATORS", "KINDS", "Generated", "generate_qa", "passages_of"]


@dataclass(frozen=True)
class Generated:
    """What a generation did: questions in the file before and written now, items rejected by
    reason (in `rejected_path`), passages found, whether the plan ran out before enough
    questions were kept, the model's requests and tokens (None offline), and the seconds taken."""

    path: Path
    rejected_path: Path
    before: int
    written: int
    rejected: Counter
    passages: int
    ran_out: bool
    usage: Usage | None
    seconds: float


def generate_qa(documents: str | os.PathLike[str] | Documents, output: str | os.PathLike[str], *,
                questions: int = 100, generator: Generator = "offline", model: str | None = None,
                base_url: str | None = None, api_key: str | None = None, kinds: Sequence[str] = KINDS,
                check: bool = True, concurrency: int = 4, rpm: float | None = None, max_tokens: int = 512,
                domain_pattern: str | None = None, seed: int = 0, duplicate: float = DUPLICATE,
                progress: bool = False, chat: Chat | None = None) -> Generated:
    """Write questions about the documents to `output` until it holds `questions` of them (or
    every passage has been asked about), appending to what an earlier run wrote there.

    Passages of about 300-800 characters are cut from every document and visited in an order
    seeded by `seed`. Offline, each gets an inverse-cloze question (one of its sentences, masked);
    with a model, a question of each of `kinds` in turn (factoid, concept, two_hop over two
    passages of one document or domain), dropped when its answer says the passage does not tell,
    when it refers to "this passage", when `check` asks the model again and it says the passage
    does not answer it, or when it nearly repeats a kept question. A question's domain is the first
    group of `domain_pattern` searched in its document's id, else the document's `domain` metadata.
    `chat` replaces the model the generator names (tests, other clients)."""
    started = time.perf_counter()
    if generator not in GENERATORS:
        raise ConfigError(f"generator must be one of {list(GENERATORS)}; got {generator!r}")
    if questions < 1:
        raise ConfigError(f"questions must be at least 1; got {questions}")
    kinds = _kinds(kinds)
    docs = documents if isinstance(documents, Documents) else load_documents(documents)
    passages = passages_of(docs, domain_pattern)
    if generator == "offline":
        tasks, make, recorded, threads = plan(passages, ("cloze",), seed), partial(cloze, seed=seed), GENERATOR, 1
    else:
        chat = chat or _chat(generator, model, base_url, api_key, max_tokens, rpm)
        tasks, make, recorded = plan(passages, kinds, seed), partial(_ask, chat, check=check), chat.describe()
        threads = concurrency if generator == "endpoint" else 1
    with QAFile(output) as out:
        counts = run(tasks, make, out, questions, recorded, threads, duplicate, progress)
        total = out.count
    return Generated(out.path, out.rejects, counts.before, counts.written, counts.rejected, len(passages),
                     total < questions, chat.usage if chat is not None else None, time.perf_counter() - started)


def passages_of(documents: Documents, domain_pattern: str | None = None) -> list[Passage]:
    """Every document's passages (passages.cut_passages), with the document's domain."""
    domains = _domains(documents, domain_pattern)
    return [Passage(doc.doc_id, start, end, doc.text[start:end], domain)
            for doc, domain in zip(documents, domains) for start, end in cut_passages(doc.text)]


def _domains(documents: Documents, pattern: str | None) -> list[str | None]:
    if pattern is None:
        return [d.metadata.get("domain") if isinstance(d.metadata.get("domain"), str) else None for d in documents]
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"domain pattern {pattern!r} is not a regular expression: {error}") from None
    if regex.groups < 1:
        raise ConfigError(f"domain pattern {pattern!r} has no group; its first group is the domain, e.g. "
                          r"'^(\w+) - ' for ids like 'law - case.pdf'.")
    found = [regex.search(d.doc_id) for d in documents]
    unmatched = [d.doc_id for d, m in zip(documents, found) if m is None or m.group(1) is None]
    if unmatched:
        shown = "".join(f"\n  - {doc_id}" for doc_id in unmatched[:10])
        more = f"\n  ... and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        raise DataError(f"{documents.source}: {len(unmatched)} of {len(documents)} document ids do not match the "
                        f"domain pattern {pattern!r}:{shown}{more}\nFix the pattern (its first group is the domain, "
                        "searched in each document's id), or leave it out.")
    return [m.group(1) for m in found if m is not None]


def _kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"question kinds must be some of {list(KINDS)}; got {list(kinds)}")
    return tuple(dict.fromkeys(kinds))


def _chat(generator: str, model: str | None, base_url: str | None, api_key: str | None, max_tokens: int,
          rpm: float | None) -> Chat:
    if not model:
        raise ConfigError(f"the {generator} generator needs a model: --model "
                          + ("NAME (as the server knows it)" if generator == "endpoint" else "HUB_ID_OR_FOLDER"))
    if generator == "endpoint":
        if not base_url:
            raise ConfigError("the endpoint generator needs --base-url, the API root before /chat/completions (e.g. "
                              "http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama)")
        from ragopt.generate.endpoint import EndpointChat

        return EndpointChat(base_url, model, api_key, max_tokens=max_tokens, rpm=rpm)
    from ragopt.generate.local import LocalChat

    return LocalChat(model, max_tokens=max_tokens)


def _ask(chat: Chat, task: Task, check: bool) -> Outcome:
    """A question of the task's kind from the chat model, with the reason it is not kept if any:
    unparsable (no JSON object with a question), no_question, dont_know, needs_passage,
    unanswerable (the check said no) or check_unparsable."""
    texts = [p.text for p in task.passages]
    reply = chat.complete(question_messages(task.kind, texts))
    parsed = parse_qa(reply)
    if parsed is None:
        return Outcome(task, reason="unparsable", detail={"reply": reply})
    question, answer = parsed
    reason = rejection(question, answer)
    if reason is None and check:
        verdict = chat.complete(check_messages(question, texts))
        reason = {None: "check_unparsable", False: "unanswerable", True: None}[parse_verdict(verdict)]
    if reason is not None:
        return Outcome(task, reason=reason, detail={"query": question, "answer": answer})
    return Outcome(task, question, answer)
