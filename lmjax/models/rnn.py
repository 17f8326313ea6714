"""Recurrent language models: LSTM and GRU layers and a stacked recurrent LM (char or subword tokens).

Dimension key: B batch, L time, D input width, H hidden width, G gates (4H for an LSTM, 3H for a GRU), V
vocabulary.
The input projections of every time step are one matrix product before the recurrence; `jax.lax.scan` then
runs only the hidden-to-hidden product per step. Weights start uniform in +-1/sqrt(H), as PyTorch's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.errors import InputError
from lmjax.models import layers

CELLS = ("lstm", "gru")


class Recurrent(nnx.Module):
    """One LSTM or GRU layer over a whole sequence (PyTorch's gate order: LSTM i, f, g, o; GRU r, z, n)."""

    def __init__(self, d_in: int, hidden: int, *, cell: str, rngs: nnx.Rngs):
        if cell not in CELLS:
            raise InputError(f"model.cell={cell!r} is unknown; use one of {CELLS}")
        self.cell, self.hidden = cell, hidden
        g = (4 if cell == "lstm" else 3) * hidden
        init = nnx.initializers.uniform(2 / hidden**0.5)

        def shifted(key, shape, dtype):
            return init(key, shape, dtype) - 1 / hidden**0.5

        self.input_DG = layers.param(rngs, shifted, (d_in, g), ("embed", "mlp"))
        self.hidden_HG = layers.param(rngs, shifted, (hidden, g), (None, "mlp"))
        self.bias_G = layers.param(rngs, shifted, (g,), ("mlp",))
        self.hidden_bias_G = layers.param(rngs, shifted, (g,), ("mlp",))

    def __call__(self, x_BLD: jax.Array, *, reverse: bool = False) -> jax.Array:
        """h_BLH: the hidden state after each step (reverse: reading from the end, h[t] has seen x[t:])."""
        B, H = x_BLD.shape[0], self.hidden
        gates_LBG = jnp.swapaxes(layers.matmul(x_BLD, self.input_DG[...]) + self.bias_G[...], 0, 1)
        hidden_HG, hidden_bias_G = self.hidden_HG[...], self.hidden_bias_G[...]
        h_BH = jnp.zeros((B, H), x_BLD.dtype)

        def lstm(carry, x_BG):
            h_BH, c_BH = carry
            i, f, g, o = jnp.split(x_BG + h_BH @ hidden_HG + hidden_bias_G, 4, axis=-1)
            c_BH = jax.nn.sigmoid(f) * c_BH + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_BH = jax.nn.sigmoid(o) * jnp.tanh(c_BH)
            return (h_BH, c_BH), h_BH

        def gru(h_BH, x_BG):
            xr, xz, xn = jnp.split(x_BG, 3, axis=-1)
            hr, hz, hn = jnp.split(h_BH @ hidden_HG + hidden_bias_G, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            h_BH = (1 - z) * jnp.tanh(xn + r * hn) + z * h_BH
            return h_BH, h_BH

        if self.cell == "lstm":
            _, h_LBH = jax.lax.scan(lstm, (h_BH, h_BH), gates_LBG, reverse=reverse)
        else:
            _, h_LBH = jax.lax.scan(gru, h_BH, gates_LBG, reverse=reverse)
        return jnp.swapaxes(h_LBH, 0, 1)


class RecurrentLM(nnx.Module):
    """Token embedding -> num_layers recurrent layers (dropout between) -> (tied) output head."""

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        cell: str,
        dropout: float,
        tie_embeddings: bool,
        rngs: nnx.Rngs,
    ):
        uniform = nnx.initializers.uniform(0.2)
        self.embed_VD = layers.param(
            rngs, lambda k, s, d: uniform(k, s, d) - 0.1, (vocab_size, d_model), ("vocab", "embed")
        )
        self.layers = nnx.List([Recurrent(d_model, d_model, cell=cell, rngs=rngs) for _ in range(num_layers)])
        self.dropout = nnx.Dropout(dropout)
        self.head_DV = (
            None if tie_embeddings else layers.param(rngs, uniform, (d_model, vocab_size), ("embed", "vocab"))
        )

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        """{'logits'} for batch['inputs'] (batch['input_mask'], when given, marks real tokens)."""
        mask_BL = batch.get("input_mask")
        return {"logits": self(batch["inputs"], mask_BL=mask_BL, deterministic=deterministic, rngs=rngs)}

    def hidden_states(
        self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """h_BLD for batch['inputs'] (padding marked by batch['input_mask']): what task heads read."""
        x_BLD = self.embed(batch["inputs"])
        return self.hidden(x_BLD, mask_BL=batch.get("input_mask"), deterministic=deterministic, rngs=rngs)

    def embed(self, tokens_BL: jax.Array) -> jax.Array:
        return jnp.take(self.embed_VD[...], tokens_BL, axis=0)

    def hidden(
        self,
        x_BLD: jax.Array,
        *,
        mask_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """The top layer's h_BLD (right padding, marked by mask_BL, comes after the real tokens: never
        read)."""
        del mask_BL
        h_BLD = self.dropout(x_BLD, deterministic=deterministic, rngs=rngs)
        for layer in self.layers:
            h_BLD = self.dropout(layer(h_BLD), deterministic=deterministic, rngs=rngs)
        return h_BLD

    def __call__(
        self,
        tokens_BL: jax.Array,
        *,
        mask_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        h_BLD = self.hidden(self.embed(tokens_BL), deterministic=deterministic, rngs=rngs)
        head_DV = layers.output_head(self.embed_VD, self.head_DV)
        return layers.vocab_logits(h_BLD, head_DV)
