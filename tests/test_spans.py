"""Relevance by evidence span and the span metrics: hand-computed cases, a brute-force model of
the definitions on random chunkings, and trec_eval on the qrels they give."""

import re
from collections import defaultdict

import numpy as np
import pytest
import pytrec_eval

from conftest import AUTORAG_KO, AUTORAG_KO_DOCS, _bert_tokenizer
from ragopt.data.documents import Span
from ragopt.scoring.metrics import at_k, relevance
from ragopt.data.documents import ChunkSpans
from ragopt.scoring.spans import TokenEnds, budget_metrics, span_metrics, span_qrels, token_ends

DOCS = AUTORAG_KO_DOCS
INDEX = {"d0": 0, "d1": 1, "d2": 2}


def chunks_of(*spans: tuple[int, int, int]) -> ChunkSpans:
    return ChunkSpans(*zip(*spans))


def test_coverage_rule_edge_cases():
    span = [[[Span("d0", 10, 20)]]]  # |s| = 10
    chunks = chunks_of((0, 0, 15),    # o = 5 = 0.5 * |s|: relevant
                       (0, 0, 14),    # o = 4 < 5, and 4 < 0.5 * 14: not
                       (0, 12, 16),   # chunk inside the span: o = |c|
                       (0, 5, 40),    # span inside the chunk: o = |s|
                       (0, 19, 60),   # one character of a long chunk: not
                       (0, 20, 21),   # adjacent, no overlap: not, however short
                       (1, 10, 20),   # the same offsets in another document: not
                       (0, 19, 21),   # one character, but half of the chunk: relevant
                       (0, 2, 10))    # ends where the span starts: no overlap
    assert span_qrels(span, chunks, INDEX) == [[[0], [2], [3], [7]]]
    assert span_qrels(span, chunks, INDEX, min_coverage=1.0) == [[[2], [3]]]
    assert span_qrels(span, chunks, INDEX, min_coverage=0.0) == [[[0], [1], [2], [3], [4], [7]]]  # any overlap
    # 0.28 * 25 is 7.000000000000001 in floats: o = 7 must still count
    assert span_qrels([[[Span("d0", 10, 35)]]], chunks_of((0, 28, 100)), INDEX, min_coverage=0.28) == [[[0]]]


def test_qrels_join_groups_and_alternatives_and_fall_back_to_the_largest_overlap():
    chunks = chunks_of((0, 0, 10), (0, 10, 20), (1, 0, 10), (1, 12, 20))
    evidence = [[[Span("d0", 12, 18)], [Span("d1", 0, 3), Span("d1", 15, 20)]],
                [[Span("d0", 0, 20)]],
                [[Span("d1", 8, 14)]],  # 2 + 2 of 6 characters (a gap between): no chunk covers enough,
                [[Span("d1", 7, 14)]],  # so the chunks overlapping it most are relevant: both, or the one of 3
                [[Span("d0", 30, 40)]]]  # outside every chunk: none
    assert span_qrels(evidence, chunks, INDEX) == [[[1], [2], [3]], [[0], [1]], [[2], [3]], [[2]], []]
    two_hop = [[[Span("d0", 0, 10)], [Span("d1", 7, 14)]]]  # one group covered, the other split: each gets its own
    assert span_qrels(two_hop, chunks, INDEX) == [[[0], [2]]]


def brute_qrels(evidence, chunks, min_coverage):
    out = []
    for groups in evidence:
        rows = set()
        for group in groups:
            overlaps, hit = [], set()
            for row, (d, cs, ce) in enumerate(zip(*chunks_fields(chunks))):
                best = 0
                for s in group:
                    o = len(set(range(cs, ce)) & set(range(s.start, s.end))) if INDEX[s.document] == d else 0
                    best = max(best, o)
                    if o > 0 and (o >= min_coverage * (s.end - s.start) - 1e-9 or o >= min_coverage * (ce - cs) - 1e-9):
                        hit.add(row)
                overlaps.append(best)
            rows |= hit or {r for r, o in enumerate(overlaps) if o > 0 and o == max(overlaps)}
        out.append([[r] for r in sorted(rows)])
    return out


def chunks_fields(chunks):
    return chunks.document.tolist(), chunks.start.tolist(), chunks.end.tolist()


def random_case(rng, n_questions=60, depth=12):
    """Three documents, a chunking of random (overlapping) chunks, evidence of 1-3 groups of 1-2
    alternatives, and rankings with some -1 at the end."""
    lengths = [300, 200, 400]
    chunk_list = []
    for d, length in enumerate(lengths):
        for _ in range(15):
            start = int(rng.integers(0, length - 5))
            chunk_list.append((d, start, int(min(length, start + rng.integers(3, 80)))))
    chunks = chunks_of(*chunk_list)
    names = list(INDEX)
    evidence = []
    for _ in range(n_questions):
        groups = []
        for _ in range(rng.integers(1, 4)):
            group = []
            for _ in range(rng.integers(1, 3)):
                d = int(rng.integers(0, 3))
                start = int(rng.integers(0, lengths[d] - 2))
                group.append(Span(names[d], start, int(min(lengths[d], start + rng.integers(1, 60)))))
            groups.append(group)
        evidence.append(groups)
    kept = rng.integers(depth - 4, depth + 1, size=n_questions)
    ranked = np.stack([np.concatenate([rng.permutation(len(chunk_list))[:n], -np.ones(depth - n, int)])
                       for n in kept])
    return chunks, evidence, ranked


@pytest.mark.parametrize("min_coverage", [0.5, 0.3, 1.0])
def test_qrels_match_the_definition_and_trec_eval_on_random_chunkings(min_coverage):
    rng = np.random.default_rng(int(min_coverage * 10))
    chunks, evidence, ranked = random_case(rng)
    qrels = span_qrels(evidence, chunks, INDEX, min_coverage)
    assert qrels == brute_qrels(evidence, chunks, min_coverage)
    judged = [q for q, groups in enumerate(qrels) if groups]  # trec_eval leaves out questions with none relevant
    assert len(judged) > 40
    ks = [1, 3, 5, 10]
    gains, n_rel = relevance(ranked[judged], [qrels[q] for q in judged], len(chunks))
    ours = at_k(gains, n_rel, ks)
    trec_qrels = {f"q{q}": {f"c{g[0]}": 1 for g in qrels[q]} for q in judged}
    run = {f"q{q}": {f"c{c}": float(ranked.shape[1] - r) for r, c in enumerate(ranked[q]) if c >= 0} for q in judged}
    measures = {f"{m}.{','.join(map(str, ks))}" for m in ("P", "recall", "map_cut", "ndcg_cut", "success")}
    trec = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(run)
    names = {"precision": "P_{}", "recall": "recall_{}", "map": "map_cut_{}", "ndcg": "ndcg_cut_{}",
             "hit": "success_{}"}
    for k in ks:
        for i, q in enumerate(judged):
            for name, trec_name in names.items():
                assert ours[f"{name}@{k}"][i] == pytest.approx(trec[f"q{q}"][trec_name.format(k)], abs=1e-12)


def test_span_metrics_hand_computed_with_overlapping_chunks_and_alternatives():
    chunks = chunks_of((0, 0, 10), (0, 5, 15), (0, 20, 30), (1, 0, 10), (0, 40, 60))
    evidence = [[[Span("d0", 8, 22), Span("d1", 5, 9)]],                  # one group, two alternatives
                [[Span("d0", 40, 50)], [Span("d0", 25, 35), Span("d0", 45, 55)]],
                [[Span("d0", 2, 6), Span("d0", 6, 20)]],                  # a tie: the first is taken
                [[Span("d0", 0, 5)]]]
    ranked = np.array([[0, 1, 3, -1], [2, 4, -1, -1], [0, -1, -1, -1], [-1, -1, -1, -1]])
    m = span_metrics(ranked, evidence, chunks, INDEX, [1, 2, 3, 4])
    expected = {  # (recall, precision, IoU) per question at k
        1: [(2 / 14, 2 / 10, 2 / 22), (5 / 20, 5 / 10, 5 / 25), (4 / 4, 4 / 10, 4 / 10), (0, 0, 0)],
        2: [(7 / 14, 7 / 15, 7 / 22), (1, 15 / 30, 15 / 30), (1, 4 / 10, 4 / 10), (0, 0, 0)],
        3: [(7 / 14, 7 / 25, 7 / 32), (1, 15 / 30, 15 / 30), (1, 4 / 10, 4 / 10), (0, 0, 0)],
    }
    expected[4] = expected[3]
    for k, rows in expected.items():
        got = np.stack([m[f"evidence_{name}@{k}"] for name in ("recall", "precision", "iou")], axis=1)
        np.testing.assert_allclose(got, rows, atol=1e-12, err_msg=f"k={k}")
    with pytest.raises(ValueError, match="depth 4 is smaller than k=5"):
        span_metrics(ranked, evidence, chunks, INDEX, [5])


def test_token_ends_by_words_and_by_a_fast_tokenizer():
    ends = token_ends(["aa bb cc.", "", "예금 보호, 제도."])
    assert ends.counts.tolist() == [4, 0, 5]
    assert ends.ends.tolist() == [2, 5, 8, 9, 2, 5, 6, 9, 10]
    bert = token_ends(["예금 보호, 제도.", "a, b"], _bert_tokenizer())
    assert bert.counts.tolist() == [7, 3] and bert.ends.tolist() == [1, 2, 5, 6, 8, 9, 10, 1, 2, 4]


def test_budget_cuts_the_crossing_chunk_at_a_token_end():
    text = "aa bb cc. dd ee ff. gg hh"
    chunks = chunks_of((0, 0, 9), (0, 10, 19), (0, 20, 25))
    ends = token_ends([text[s:e] for s, e in zip(chunks.start, chunks.end)])
    assert ends.counts.tolist() == [4, 4, 2]
    evidence = [[[Span("d0", 13, 22)]], [[Span("d0", 20, 25)]]]  # "ee ff. gg", "gg hh"
    ranked = np.array([[1, 0, 2], [-1, 2, -1]])
    m = budget_metrics(ranked, evidence, chunks, INDEX, ends, [1, 3, 4, 6, 9, 100])
    expected = {  # R for question 0: [10,18) after 3 tokens ("dd ee ff"), then [10,19), then + [0,5) ...
        1: [(0, 0, 0), (2 / 5, 1, 2 / 5)],
        3: [(5 / 9, 5 / 8, 5 / 12), (1, 1, 1)],
        4: [(6 / 9, 6 / 9, 6 / 12), (1, 1, 1)],
        6: [(6 / 9, 6 / 14, 6 / 17), (1, 1, 1)],
        9: [(8 / 9, 8 / 20, 8 / 21), (1, 1, 1)],
        100: [(8 / 9, 8 / 23, 8 / 24), (1, 1, 1)],
    }
    for budget, rows in expected.items():
        got = np.stack([m[f"evidence_{name}@{budget}t"] for name in ("recall", "precision", "iou")], axis=1)
        np.testing.assert_allclose(got, rows, atol=1e-12, err_msg=f"budget={budget}")


def brute_scores(pieces, groups):
    """Recall, precision, IoU of retrieved (document, start, end) pieces, with sets of characters."""
    retrieved = {(d, i) for d, s, e in pieces for i in range(s, e)}
    evidence = set()
    for group in groups:
        covered = [len({(INDEX[a.document], i) for i in range(a.start, a.end)} & retrieved) for a in group]
        best = group[covered.index(max(covered))]
        evidence |= {(INDEX[best.document], i) for i in range(best.start, best.end)}
    both = len(evidence & retrieved)
    return (both / len(evidence), both / len(retrieved) if retrieved else 0.0,
            both / len(evidence | retrieved))


def test_span_and_budget_metrics_match_the_definitions_on_random_chunkings():
    rng = np.random.default_rng(7)
    chunks, evidence, ranked = random_case(rng, n_questions=80)
    counts = rng.integers(0, 12, size=len(chunks))
    ends = TokenEnds(np.concatenate([np.sort(rng.choice(np.arange(1, e - s + 1), size=min(n, e - s), replace=False))
                                     for n, s, e in zip(counts, chunks.start, chunks.end)]).astype(np.int64),
                     np.cumsum([0] + [min(n, e - s) for n, s, e in zip(counts, chunks.start, chunks.end)]))
    ks, budgets = [1, 2, 5, 12], [5, 20, 60]
    m = span_metrics(ranked, evidence, chunks, INDEX, ks) | budget_metrics(ranked, evidence, chunks, INDEX, ends,
                                                                          budgets)
    pieces_of = defaultdict(list)
    for q, row in enumerate(ranked):
        for k in ks:
            pieces_of[q, f"{k}"] = [(chunks.document[c], chunks.start[c], chunks.end[c]) for c in row[:k] if c >= 0]
        for budget in budgets:
            left, pieces = budget, []
            for c in row[row >= 0]:
                mine = ends.ends[ends.offsets[c]:ends.offsets[c + 1]]
                if left > 0 and len(mine):
                    end = chunks.end[c] if len(mine) <= left else chunks.start[c] + mine[left - 1]
                    pieces.append((chunks.document[c], chunks.start[c], end))
                left -= len(mine)
            pieces_of[q, f"{budget}t"] = pieces
    for (q, at), pieces in pieces_of.items():
        got = [m[f"evidence_{name}@{at}"][q] for name in ("recall", "precision", "iou")]
        assert got == pytest.approx(brute_scores(pieces, evidence[q]), abs=1e-12), (q, at)


@pytest.mark.skipif(not (AUTORAG_KO.exists() and DOCS.exists()),
                    reason="../shared/data/autorag-ko(-docs) is not beside this checkout")
def test_chunks_that_are_the_autorag_ko_pages_reproduce_the_id_relevance():
    from ragopt.data.qa import load_corpus, load_qa
    from ragopt.data.documents import load_documents, load_span_qa

    corpus = load_corpus(AUTORAG_KO / "corpus.parquet")
    qa = load_qa(AUTORAG_KO / "qa.parquet", corpus)
    docs = load_documents(DOCS / "documents")
    spans = load_span_qa(DOCS / "qa.jsonl", docs)
    pages = defaultdict(list)
    for row, doc_id in enumerate(corpus.doc_ids):
        name, number = re.fullmatch(r"(.+) - (\d+)", doc_id).groups()
        pages[f"{name}.txt"].append((int(number), row))
    index, where = docs.index_of(), {}
    for document, numbered in pages.items():
        start = 0
        for _, row in sorted(numbered):
            where[row] = (index[document], start, start + len(corpus.contents[row]))
            start += len(corpus.contents[row]) + 2
    chunks = chunks_of(*(where[row] for row in range(len(corpus))))
    assert all(docs[d].text[s:e] == corpus.contents[row] for row, (d, s, e) in where.items())
    assert span_qrels(spans.evidence, chunks, index) == qa.groups
