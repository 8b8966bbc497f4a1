"""One generation run: the plan of items (a kind of question about one passage, or two for
two_hop) in a seeded order, each made by the generator on a pool of threads, and the outcomes
taken in plan order, filtered for near-duplicates and written, until enough questions are kept.
Taking them in plan order makes a concurrent run write exactly what a serial one writes."""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from tqdm.auto import tqdm

from ragopt.generate.filters import DUPLICATE, NearDuplicates
from ragopt.generate.passages import Passage
from ragopt.generate.writer import QAFile


@dataclass(frozen=True)
class Task:
    """One item of the plan: a question of `kind` about the passages (two for two_hop)."""

    kind: str
    passages: tuple[Passage, ...]

    @property
    def source(self) -> str:
        """The item's stable key in the output files: documents, spans and kind."""
        return "+".join(p.key for p in self.passages) + f":{self.kind}"


@dataclass(frozen=True)
class Outcome:
    """What the generator made of a task: a question (with its answer and the spans to mask), or
    the reason it has none and what it generated instead (`detail`)."""

    task: Task
    query: str = ""
    answer: str | None = None
    masked: tuple[tuple[str, int, int], ...] = ()
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Usage:
    """Requests and tokens (as the model reports them) counted over a run, from any thread."""

    def __init__(self) -> None:
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self._lock = threading.Lock()

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens


class Chat(Protocol):
    """A chat model: the reply to a list of messages, its usage so far, what to record of it."""

    usage: Usage

    def complete(self, messages: list[dict[str, str]]) -> str: ...

    def describe(self) -> dict[str, Any]: ...


def plan(passages: list[Passage], kinds: tuple[str, ...], seed: int) -> Iterator[Task]:
    """The items in a seeded order (see _interleaved), kinds taken in turn. A two_hop item
    pairs its passage with another of the same document, else of the same domain (chosen by a
    generator seeded with the passage, so the pair does not depend on what came before); a
    passage with neither gets the next kind instead, or is skipped when two_hop is the only one."""
    order = _interleaved(passages, random.Random(seed))
    single = [k for k in kinds if k != "two_hop"]
    by_document: dict[str, list[Passage]] = {}
    by_domain: dict[str, list[Passage]] = {}
    for passage in passages:
        by_document.setdefault(passage.document, []).append(passage)
        if passage.domain is not None:
            by_domain.setdefault(passage.domain, []).append(passage)
    for turn, index in enumerate(order):
        kind = kinds[turn % len(kinds)]
        passage = passages[index]
        if kind != "two_hop":
            yield Task(kind, (passage,))
            continue
        partners = [p for p in by_document[passage.document] if p != passage] or \
            [p for p in by_domain.get(passage.domain or "", []) if p.document != passage.document]
        if partners:
            yield Task(kind, (passage, random.Random(f"{seed}:{passage.key}").choice(partners)))
        elif single:
            yield Task(single[turn % len(single)], (passage,))


def _interleaved(passages: list[Passage], rng: random.Random) -> list[int]:
    """The passages' indices in an order that spreads any first n over the documents, as people
    write QA sets (a long document is not asked about more for being long): each document's
    passages shuffled, the documents shuffled, then one passage of each document in turn."""
    by_document: dict[str, list[int]] = {}
    for i, passage in enumerate(passages):
        by_document.setdefault(passage.document, []).append(i)
    queues = list(by_document.values())
    for queue in queues:
        rng.shuffle(queue)
    rng.shuffle(queues)
    return [queue[turn] for turn in range(max(map(len, queues), default=0)) for queue in queues if turn < len(queue)]


@dataclass
class Counts:
    """What a run did: questions kept before and now, items rejected by reason."""

    before: int
    written: int = 0
    rejected: Counter = field(default_factory=Counter)


def run(tasks: Iterable[Task], make: Callable[[Task], Outcome], out: QAFile, want: int, generator: dict[str, Any],
        concurrency: int = 1, duplicate: float = DUPLICATE, progress: bool = False) -> Counts:
    """Make the tasks not done before until `out` holds `want` questions or the plan ends: each
    outcome, in plan order, is rejected (with its reason) or kept unless it nearly repeats a
    kept question, then written at once."""
    counts = Counts(out.count)
    duplicates = NearDuplicates(duplicate, out.queries)
    todo = (task for task in tasks if task.source not in out.done)
    if out.count >= want:
        return counts
    with tqdm(total=want, initial=out.count, unit="question", disable=not progress) as bar, \
            closing(_in_order(todo, make, concurrency)) as outcomes:
        for outcome in outcomes:
            reason, detail = outcome.reason, outcome.detail
            if reason is None and (repeated := duplicates.duplicate_of(outcome.query)) is not None:
                reason, detail = "near_duplicate", {"query": outcome.query, "duplicate_of": repeated}
            if reason is not None:
                out.reject({"source": outcome.task.source, "reason": reason, **detail})
                counts.rejected[reason] += 1
                bar.set_postfix(rejected=sum(counts.rejected.values()), refresh=False)
                continue
            out.add(_record(outcome, generator), outcome.task.passages[0].domain)
            duplicates.add(outcome.query)
            counts.written += 1
            bar.update()
            if out.count >= want:
                break
    return counts


def _record(outcome: Outcome, generator: dict[str, Any]) -> dict[str, Any]:
    task = outcome.task
    domain = task.passages[0].domain
    record: dict[str, Any] = {"query": outcome.query, **({"domain": domain} if domain is not None else {}),
                              "evidence": [{"document": p.document, "start": p.start, "end": p.end}
                                           for p in task.passages],
                              "kind": task.kind}
    if outcome.answer is not None:
        record["answer"] = outcome.answer
    if outcome.masked:
        record["masked"] = [{"document": d, "start": s, "end": e} for d, s, e in outcome.masked]
    return {**record, "generator": generator, "source": task.source}


def _in_order(tasks: Iterator[Task], make: Callable[[Task], Outcome], concurrency: int) -> Iterator[Outcome]:
    """make(task) of each task, in the tasks' order; with concurrency above 1 made on that many
    threads, at most twice as many tasks started ahead of the one awaited. Closing it early
    cancels the tasks not started (those running finish; their outcomes are dropped)."""
    if concurrency <= 1:
        yield from map(make, tasks)
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ragopt-generate")
    ahead: deque[Future[Outcome]] = deque()
    try:
        for task in tasks:
            ahead.append(pool.submit(make, task))
            if len(ahead) >= 2 * concurrency:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
