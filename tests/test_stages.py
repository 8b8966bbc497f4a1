"""The stage protocol: the pipeline spec, the space and the engine learn their stages from
ragopt.stages.protocol.STAGES, and a new stage kind (query rewriting here) runs in its place without a
change to either."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from ragopt.data.qa import Queries
from ragopt.stages.ranking import Ranking
from ragopt.stages.spec import PipelineSpec
from ragopt.stages.protocol import STAGES, Flow, Stage, decision_order, run_stages


def test_the_pipeline_spec_has_one_field_per_stage_in_data_flow_order():
    assert [s.name for s in STAGES] == ["chunker", "retriever", "reranker"]
    assert list(PipelineSpec.model_fields) == ["chunker", "retriever", "reranker", "top_k"]
    spec = PipelineSpec.model_validate({"retriever": {"type": "bm25", "tokenizer": "whitespace"}, "top_k": 3})
    assert spec.stages() == [("retriever", spec.retriever)] and spec.describe().endswith(" k=3")
    assert "chunker" not in spec.model_dump_json(exclude={"chunker", "reranker"})
    with pytest.raises(ValueError, match="retriever"):
        PipelineSpec.model_validate({"top_k": 3})  # the one stage that is not optional


def test_a_stage_is_decided_after_the_stages_it_reads():
    order = [s.name for s in decision_order()]
    assert order.index("chunker") > order.index("retriever")  # a chunker may count the retriever's tokens
    reversed_after = [replace(s, after=()) for s in STAGES]
    assert [s.name for s in decision_order(reversed_after)] == ["chunker", "retriever", "reranker"]


class _Engine:
    """Records what each stage was asked: a retrieval returns rows 0..depth-1."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def retrieve(self, spec, queries, depth):
        self.calls.append(("retrieve", tuple(queries.texts), depth))
        ids = np.tile(np.arange(depth), (len(queries), 1))
        return Ranking(ids, -ids.astype(np.float32))

    def rerank(self, spec, ranking, queries):
        self.calls.append(("rerank", tuple(queries.texts), ranking.depth))
        return Ranking(ranking.ids[:, ::-1].copy(), ranking.scores[:, ::-1].copy())

    def memo(self, key, compute):
        return compute()


def _rewrite(engine, spec, flow, depth, keys):
    return replace(flow, queries=Queries([f"{t} {spec.suffix}" for t in flow.asked.texts]))


def test_a_new_query_stage_runs_in_its_place_with_no_change_to_the_engine():
    """A rewriting stage before retrieve: the retriever gets the rewritten queries, the reranker
    the questions as asked, and the retriever is asked as deep as the reranker needs."""
    rewriter = Stage("rewriter", STAGES[0].registry, None, optional=True, suggest_entry=lambda *a: None, run=_rewrite)
    stages = (STAGES[0], rewriter, *STAGES[1:])
    key = SimpleNamespace(key=lambda: "k")
    spec = SimpleNamespace(chunker=None, rewriter=SimpleNamespace(suffix="요약", **vars(key)),
                           retriever=SimpleNamespace(**vars(key)), reranker=SimpleNamespace(depth=5, **vars(key)),
                           describe=lambda: "p")
    engine = _Engine()
    ranking = run_stages(engine, spec, Queries(["질문"]), 3, stages)
    assert engine.calls == [("retrieve", ("질문 요약",), 5), ("rerank", ("질문",), 5)]
    assert ranking.ids.tolist() == [[4, 3, 2]]  # the reranked ranking, cut to the depth asked


def test_a_pipeline_with_no_retrieving_stage_says_so():
    spec = SimpleNamespace(chunker=None, retriever=None, reranker=None, describe=lambda: "nothing")
    with pytest.raises(ValueError, match="has no retrieving stage"):
        run_stages(_Engine(), spec, Queries(["q"]), 3)
    assert Flow(Queries(["q"]), Queries(["q"])).ranking is None
