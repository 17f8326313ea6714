"""Sampling from a trained workdir, with the run's own config, tokenizer and latest parameters."""

from __future__ import annotations

import jax
from etils import epath
from ml_collections import ConfigDict

from lmjax import decode, train
from lmjax.errors import InputError


def sample(config: ConfigDict, workdir: str | epath.PathLike) -> str:
    """Prints and returns config.sample.num_samples continuations of config.sample.prompt."""
    engine, params, tok, step = train.load_trained(workdir)
    settings = config.sample
    if engine.config.model.family != "decoder":
        raise InputError(
            f"{workdir} holds a model.family={engine.config.model.family!r} model; sampling text needs "
            "a decoder (use lmjax.decode.generate / beam_search with inputs for encoder-decoders)"
        )
    text = decode.sample_text(
        engine.graphdef, params, tok, settings, settings.num_tokens, jax.random.PRNGKey(settings.seed)
    )
    print(
        f"--- {settings.num_samples} sample(s) from {workdir} at step {step} (temperature "
        f"{settings.temperature}, "
        f"top-k {settings.top_k}, top-p {settings.top_p}) ---"
    )
    print(text)
    return text
