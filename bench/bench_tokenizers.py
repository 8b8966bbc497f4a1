"""BM25 tokenizers on autorag-ko at bm25s's default k1=1.5, b=0.75: tokenizing time for the
corpus and the quality each reaches. Prints figures; asserts nothing.

    python bench/bench_tokenizers.py [../shared/data/autorag-ko]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ragopt.data.qa import load_dataset
from ragopt.scoring.metrics import at_k, relevance
from ragopt.stages.engine import Engine
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.tokenizers import CharNgramTokenizer, KiwiTokenizer, MecabTokenizer, WhitespaceTokenizer

TOKENIZERS = [KiwiTokenizer(), KiwiTokenizer(pos="content"), MecabTokenizer(), MecabTokenizer(pos="content"),
              CharNgramTokenizer(n=2), CharNgramTokenizer(n=3), WhitespaceTokenizer()]


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/autorag-ko")
    qa, corpus = load_dataset(qa=folder / "qa.parquet", corpus=folder / "corpus.parquet")
    engine = Engine(corpus, device="cpu")
    print(f"{len(qa)} questions, {len(corpus)} passages; BM25 lucene k1=1.5 b=0.75")
    print(f"{'tokenizer':<16}{'seconds':>9}{'hit@1':>8}{'mrr@10':>8}{'ndcg@10':>9}{'recall@10':>11}")
    for tokenizer in TOKENIZERS:
        start = time.perf_counter()
        ranking = engine.retrieve(BM25Spec(tokenizer=tokenizer), qa.queries, 10)
        seconds = time.perf_counter() - start
        gains, n_rel = relevance(ranking.ids, qa.groups, len(corpus))
        m = {k: v.mean() for k, v in at_k(gains, n_rel, [1, 10]).items()}
        print(f"{tokenizer.label:<16}{seconds:>9.2f}{m['hit@1']:>8.4f}{m['mrr@10']:>8.4f}{m['ndcg@10']:>9.4f}"
              f"{m['recall@10']:>11.4f}")


if __name__ == "__main__":
    main()
