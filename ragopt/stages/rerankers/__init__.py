"""Rerankers, one module per type, each registering its config entry, spec and pair scorer with
`ragopt.stages.rerankers._base.register`."""

from ragopt.stages.rerankers import causal_lm_reranker, cross_encoder, flag_llm_reranker, flag_reranker  # noqa: F401
from ragopt.stages.rerankers._base import REGISTRY, NoReranker, PairScorer, RerankerEntry, RerankerSpec, register

__all__ = ["REGISTRY", "NoReranker", "PairScorer", "RerankerEntry", "RerankerSpec", "register"]
