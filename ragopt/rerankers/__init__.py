"""Rerankers, one module per type, each registering its config entry, spec and pair scorer with
`ragopt.rerankers._base.register`."""

from ragopt.rerankers import cross_encoder, flag_llm_reranker, flag_reranker  # noqa: F401  (register themselves)
from ragopt.rerankers._base import REGISTRY, NoReranker, PairScorer, RerankerEntry, RerankerSpec, register

__all__ = ["REGISTRY", "NoReranker", "PairScorer", "RerankerEntry", "RerankerSpec", "register"]
