"""Scoring rankings: trec_eval's metrics, relevance and evidence metrics by span, the evaluator,
the corpora a study cuts from documents, TREC files."""
