"""The winner at work: best.yaml, load_pipeline, the HTTP service, the LlamaIndex retriever."""
