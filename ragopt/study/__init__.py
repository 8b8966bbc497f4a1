"""The Optuna study: sampler, storage, objective, resume, and the files it writes, one module per
job: storage (opening and checking the stored study), workers (several processes on one study),
objective (what a trial computes), outputs (the files derived from the stored trials) and run
(`ragopt optimize` itself).

Every trial's record (pipeline, metrics, relevance gains, timing) is stored in the study's
storage, and the output files are derived from it, so a resumed or shared study reports all of
its trials. A study remembers the data and space it was started with and the revisions of the
models and tokenizers it ran, and refuses to mix in trials from others.
"""

from ragopt.study.outputs import Outcome
from ragopt.study.run import default_output, optimize

__all__ = ["Outcome", "default_output", "optimize"]
