"""Data in: corpora and QA sets (qa), documents and evidence spans (documents). Plain data: no
torch."""
