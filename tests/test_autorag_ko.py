"""The real Korean benchmark beside the repository (../shared/data/autorag-ko)."""

import bm25s
import numpy as np
import pytest

from conftest import AUTORAG_KO
from ragopt.data.qa import load_dataset
from ragopt.scoring.metrics import at_k, relevance
from ragopt.stages.engine import Engine
from ragopt.stages.retrievers.bm25 import BM25Spec
from ragopt.stages.retrievers.tokenizers import KiwiTokenizer, tokenize

pytestmark = pytest.mark.skipif(not AUTORAG_KO.exists(), reason="../shared/data/autorag-ko is not beside this checkout")


def test_bm25_with_kiwi_tokens_reaches_hit_at_1_of_078():
    qa, corpus = load_dataset(qa=AUTORAG_KO / "qa.parquet", corpus=AUTORAG_KO / "corpus.parquet")
    spec = BM25Spec(tokenizer=KiwiTokenizer())
    ranking = Engine(corpus, device="cpu").retrieve(spec, qa.queries, 10)
    gains, n_rel = relevance(ranking.ids, qa.groups, len(corpus))
    hit1 = at_k(gains, n_rel, [1])["hit@1"].mean()
    assert hit1 >= 0.78

    # the same pipeline built directly with bm25s agrees on every first hit
    reference = bm25s.BM25(k1=spec.k1, b=spec.b, method=spec.method)
    reference.index(tokenize(spec.tokenizer, corpus.contents), show_progress=False)
    scores = np.stack([reference.get_scores(q) for q in tokenize(spec.tokenizer, qa.queries.texts)])
    np.testing.assert_array_equal(ranking.ids[:, 0], np.argmax(scores, axis=1))
