"""lmjax: a small JAX/Flax NNX codebase for pretraining and fine-tuning language models."""
