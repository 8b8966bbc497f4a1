"""ragopt: find the best retrieval pipeline for a question-answering corpus."""

from ragopt.config import Config, ConfigError, load_config
from ragopt.data import Corpus, DataError, QASet, load_corpus, load_dataset
from ragopt.models import ModelError
from ragopt.pipeline import Hit, Pipeline, load_pipeline
from ragopt.spec import PipelineSpec
from ragopt.study import Outcome, optimize

__all__ = ["Config", "ConfigError", "Corpus", "DataError", "Hit", "ModelError", "Outcome", "Pipeline",
           "PipelineSpec", "QASet", "load_config", "load_corpus", "load_dataset", "load_pipeline", "optimize"]
__version__ = "0.1.0"
