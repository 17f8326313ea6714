"""GPT-style decoder-only language model (see layers.py for the dimension key)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import layers

POSITIONS = ("learned", "sinusoidal", "rotary")


class DecoderLM(nnx.Module):
    """Token embedding + positions -> pre-LN blocks -> final LN -> (tied) output head."""

    def __init__(self, *, vocab_size: int, num_layers: int, num_heads: int, d_model: int, d_ff: int,
                 max_len: int, positions: str = "learned", dropout: float = 0.0,
                 attention_dropout: float = 0.0, tie_embeddings: bool = True, use_bias: bool = True,
                 dtype: str = "float32", rngs: nnx.Rngs):
        if positions not in POSITIONS:
            raise ValueError(f"model.positions={positions!r} is unknown; use one of {POSITIONS}")
        self.vocab_size, self.max_len, self.positions = vocab_size, max_len, positions
        self.dtype = jnp.dtype(dtype)
        normal = nnx.initializers.normal(0.02)
        self.embed_VD = layers.param(rngs, normal, (vocab_size, d_model), ("vocab", "embed"))
        self.pos_embed_LD = (layers.param(rngs, normal, (max_len, d_model), (None, "embed"))
                             if positions == "learned" else None)
        self.embed_dropout = nnx.Dropout(dropout)
        self.blocks = nnx.List([
            layers.Block(d_model, num_heads, d_ff, use_bias=use_bias, rotary=positions == "rotary",
                         dropout=dropout, attention_dropout=attention_dropout, num_layers=num_layers, rngs=rngs)
            for _ in range(num_layers)])
        self.final_norm = layers.LayerNorm(d_model, use_bias=use_bias, rngs=rngs)
        self.head_DV = None if tie_embeddings else layers.param(rngs, normal, (d_model, vocab_size), ("embed", "vocab"))

    def embed(self, tokens_BL: jax.Array) -> jax.Array:
        return jnp.take(self.embed_VD[...], tokens_BL, axis=0).astype(self.dtype)

    def __call__(self, tokens_BL: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns next-token logits_BLV (fp32) for every position."""
        return self.from_embeddings(self.embed(tokens_BL), deterministic=deterministic, rngs=rngs)

    def from_embeddings(self, x_BLD: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """The model after the token lookup (used by tests that differentiate w.r.t. the inputs)."""
        B, L, D = x_BLD.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} is longer than the model's positions (model.max_len={self.max_len}); "
                             f"shorten data.seq_len or raise model.max_len")
        positions_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
        if self.positions == "learned":
            x_BLD = x_BLD + self.pos_embed_LD[:L].astype(self.dtype)
        elif self.positions == "sinusoidal":
            x_BLD = x_BLD + layers.sinusoidal_table(L, D).astype(self.dtype)
        x_BLD = self.embed_dropout(x_BLD, deterministic=deterministic, rngs=rngs)
        for block in self.blocks:
            x_BLD = block(x_BLD, positions_BL=positions_BL, mask_BHLS=None, is_causal=True,
                          deterministic=deterministic, rngs=rngs)
        x_BLD = self.final_norm(x_BLD)
        head_DV = self.embed_VD[...].T if self.head_DV is None else self.head_DV[...]
        return jnp.einsum("BLD,DV->BLV", x_BLD, head_DV.astype(self.dtype)).astype(jnp.float32)
