"""Contract test suites every retriever and reranker type must pass (pytest; import them only
in tests), in the manner of optuna.testing.pytest_storages."""
