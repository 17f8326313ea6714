"""Model registry: `build(model_config, rngs)` makes the module named by `model_config.family`, and
`forward(model, batch)` runs it on a batch of its objective's format (see lmjax/data/pipeline.py)."""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx
from ml_collections import ConfigDict

from lmjax.models.decoder import DecoderLM
from lmjax.models.encoder import EncoderLM
from lmjax.models.encoder_decoder import EncoderDecoderLM
from lmjax.models.layers import Spec


def _decoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return DecoderLM(Spec.from_config(c), vocab_size=c.vocab_size, max_len=c.max_len, tie_embeddings=c.tie_embeddings,
                     dtype=c.dtype, rngs=rngs)


def _encoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return EncoderLM(Spec.from_config(c), vocab_size=c.vocab_size, max_len=c.max_len, type_vocab_size=c.type_vocab_size,
                     embed_norm=c.embed_norm, heads=c.encoder_heads, tie_embeddings=c.tie_embeddings, dtype=c.dtype,
                     rngs=rngs)


def _encoder_decoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return EncoderDecoderLM(Spec.from_config(c), vocab_size=c.vocab_size, max_len=c.max_len,
                            num_decoder_layers=c.num_decoder_layers, share_embeddings=c.share_embeddings,
                            tie_embeddings=c.tie_embeddings, scale_output=c.scale_output, dtype=c.dtype, rngs=rngs)


REGISTRY: dict[str, Callable[[ConfigDict, nnx.Rngs], nnx.Module]] = {
    "decoder": _decoder, "encoder": _encoder, "encoder_decoder": _encoder_decoder}
# The objective each family trains with (lmjax.config checks the pair).
OBJECTIVES = {"decoder": ("causal_lm",), "encoder": ("mlm",), "encoder_decoder": ("span_corruption",)}


def build(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    try:
        factory = REGISTRY[model_config.family]
    except KeyError:
        raise ValueError(f"model.family={model_config.family!r} is unknown; use one of {sorted(REGISTRY)}") from None
    return factory(model_config, rngs)


def forward(model: nnx.Module, batch: dict[str, jax.Array], *, deterministic: bool = True,
            rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """The outputs the objectives score: {'logits'} (+ 'nsp_logits' for an encoder with an NSP head)."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    if isinstance(model, DecoderLM):
        return {"logits": model(batch["inputs"], mask_BL=batch.get("input_mask"), **kw)}
    if isinstance(model, EncoderLM):
        h_BLD = model.encode(batch["inputs"], segments_BL=batch.get("segments"), mask_BL=batch["input_mask"], **kw)
        out = {"logits": model.mlm_logits(h_BLD)}
        if model.heads == "mlm_nsp" and "nsp_labels" in batch:
            out["nsp_logits"] = model.nsp_logits(h_BLD)
        return out
    return {"logits": model(batch["inputs"], batch["decoder_inputs"], mask_BS=batch["input_mask"], **kw)}
