"""The search: the YAML config, the space it spans, AutoRAG config import."""
