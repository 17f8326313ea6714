"""Model registry: `build(model_config, rngs)` makes the module named by `model_config.family`."""
from __future__ import annotations

from typing import Callable

from flax import nnx
from ml_collections import ConfigDict

from lmjax.models.decoder import DecoderLM


def _decoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return DecoderLM(vocab_size=c.vocab_size, num_layers=c.num_layers, num_heads=c.num_heads, d_model=c.d_model,
                     d_ff=c.d_ff or 4 * c.d_model, max_len=c.max_len, positions=c.positions, dropout=c.dropout,
                     attention_dropout=c.attention_dropout, tie_embeddings=c.tie_embeddings, use_bias=c.use_bias,
                     dtype=c.dtype, rngs=rngs)


REGISTRY: dict[str, Callable[[ConfigDict, nnx.Rngs], nnx.Module]] = {"decoder": _decoder}


def build(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    try:
        factory = REGISTRY[model_config.family]
    except KeyError:
        raise ValueError(f"model.family={model_config.family!r} is unknown; use one of {sorted(REGISTRY)}") from None
    return factory(model_config, rngs)
