"""Word-vector models: word2vec (skip-gram and CBOW, scored for negative sampling) and GloVe.

Dimension key: B batch, W window slots (2 x window), K negatives, V vocabulary, D vector size.
Word vectors are `vectors()`: word2vec's input vectors, GloVe's W + W~ (as the GloVe paper reports).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import layers


class Word2Vec(nnx.Module):
    """Input vectors embed_VD (uniform in +-0.5 / D, as word2vec.c) and output vectors context_VD (zeros)."""

    def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
        self.embed_VD = layers.param(
            rngs, nnx.initializers.uniform(1.0 / dim), (vocab_size, dim), ("vocab", "embed")
        )
        self.embed_VD[...] = self.embed_VD[...] - 0.5 / dim
        self.context_VD = layers.param(rngs, nnx.initializers.zeros, (vocab_size, dim), ("vocab", "embed"))

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        """Scores of the true pair (pos_B) and of the noise words (neg_BK); CBOW batches have a window of
        inputs."""
        embed_VD = self.embed_VD[...]
        if batch["inputs"].ndim == 2:  # the mean of the window's input vectors, as word2vec's cbow_mean
            mask_BW1 = batch["input_mask"][..., None]
            h_BD = (jnp.take(embed_VD, batch["inputs"], axis=0) * mask_BW1).sum(1) / jnp.maximum(
                mask_BW1.sum(1), 1.0
            )
        else:
            h_BD = jnp.take(embed_VD, batch["inputs"], axis=0)
        out_BD = jnp.take(self.context_VD[...], batch["targets"], axis=0)
        noise_BKD = jnp.take(self.context_VD[...], batch["negatives"], axis=0)
        return {
            "pos_B": jnp.einsum("bd,bd->b", h_BD, out_BD),
            "neg_BK": jnp.einsum("bd,bkd->bk", h_BD, noise_BKD),
        }

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        del deterministic, rngs  # no dropout
        return self(batch)

    def vectors(self) -> jax.Array:
        return self.embed_VD[...]


class GloVe(nnx.Module):
    """w_i . w~_j + b_i + b~_j fits log X_ij; W and W~ start uniform in +-0.5 / D (glove.c), biases at 0."""

    def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.uniform(1.0 / dim)
        self.embed_VD = layers.param(rngs, init, (vocab_size, dim), ("vocab", "embed"))
        self.context_VD = layers.param(rngs, init, (vocab_size, dim), ("vocab", "embed"))
        self.embed_VD[...] = self.embed_VD[...] - 0.5 / dim
        self.context_VD[...] = self.context_VD[...] - 0.5 / dim
        self.bias_V = layers.param(rngs, nnx.initializers.zeros, (vocab_size,), ("vocab",))
        self.context_bias_V = layers.param(rngs, nnx.initializers.zeros, (vocab_size,), ("vocab",))

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        rows, cols = batch["rows"], batch["cols"]
        dot_B = jnp.einsum(
            "bd,bd->b",
            jnp.take(self.embed_VD[...], rows, axis=0),
            jnp.take(self.context_VD[...], cols, axis=0),
        )
        return {
            "prediction_B": dot_B
            + jnp.take(self.bias_V[...], rows)
            + jnp.take(self.context_bias_V[...], cols)
        }

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        del deterministic, rngs  # no dropout
        return self(batch)

    def vectors(self) -> jax.Array:
        return self.embed_VD[...] + self.context_VD[...]
