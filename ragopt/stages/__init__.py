"""The pipeline's stages: the stage protocol, the pipeline spec, the plug-in kinds (chunkers,
retrievers, rerankers), fusion, rankings, and the engine that runs them over a corpus with the
cache and the model pool."""
