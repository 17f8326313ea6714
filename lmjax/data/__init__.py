"""Tokenizers, corpora (TFDS builders), mixtures and grain input pipelines for pretraining text."""
