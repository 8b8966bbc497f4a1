"""Tuning a bi-encoder to the study's own questions: training data, hard negatives, the trainer, cross-fitting."""
