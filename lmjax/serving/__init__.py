"""Deployment: jax.export artefacts (written by lmjax/modes/export.py, read back by exported.py with JAX
alone), int8 weights (quantize.py) and an OpenAI-compatible server with continuous batching (batcher.py,
server.py).

`load_exported` is importable without lmjax's model code: this package's __init__ imports nothing else."""


def load_exported(directory):
    """An exported model directory (--config.mode=export) as a runnable `ExportedLM`."""
    from lmjax.serving.exported import ExportedLM

    return ExportedLM(directory)
