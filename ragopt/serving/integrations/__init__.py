"""ragopt's tuned pipelines inside other frameworks, one module each, importing its framework only
when imported itself: `ragopt.serving.integrations.llama_index` (pip install 'ragopt[llama-index]')."""
