"""Tokenizers, corpora (TFDS builders) and grain input pipelines."""
