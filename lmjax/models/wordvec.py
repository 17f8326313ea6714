"""Word-vector models: word2vec (skip-gram and CBOW, scored for negative sampling) and GloVe.

Dimension key: B batch, W window slots (2 x window), K negatives, V vocabulary, D vector size, G groups of g
examples sharing noise words (word2vec's share_negatives), N looked-up rows.
Word vectors are `vectors()`: word2vec's input vectors, GloVe's W + W~ (as the GloVe paper reports).

A batch reads a few rows of each table: `lookups(batch)` names them (table -> row ids) and
`score(rows, batch)` computes the outputs from those rows alone, so that a step can differentiate and update
just the rows (lmjax/training/sparse.py); `__call__` is score(lookups).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import layers


class Word2Vec(nnx.Module):
    """Input vectors embed_VD (uniform in +-0.5 / D, as word2vec.c) and output vectors context_VD (zeros).

    share_negatives = g > 1 is BlazingText's negative sharing: each group of g consecutive examples scores the
    noise words of its first example, so a batch reads B + B / g x K output rows instead of B x (1 + K), and
    the noise scores are one small matrix product per group."""

    def __init__(self, vocab_size: int, dim: int, *, share_negatives: int = 1, rngs: nnx.Rngs):
        self.embed_VD = layers.param(
            rngs, nnx.initializers.uniform(1.0 / dim), (vocab_size, dim), ("vocab", "embed")
        )
        self.embed_VD[...] = self.embed_VD[...] - 0.5 / dim
        self.context_VD = layers.param(rngs, nnx.initializers.zeros, (vocab_size, dim), ("vocab", "embed"))
        self.share_negatives = share_negatives

    def lookups(self, batch: dict) -> dict[str, jax.Array]:
        """Input rows: the word (skip-gram) or window (CBOW); output rows: the B targets, then each group's K
        noise words."""
        B, K = batch["negatives"].shape
        negatives_GK = batch["negatives"].reshape(B // self.share_negatives, self.share_negatives, K)[:, 0]
        outputs_N = jnp.concatenate([batch["targets"], negatives_GK.reshape(-1)])
        return {"embed_VD": batch["inputs"], "context_VD": outputs_N}

    def score(self, rows: dict[str, jax.Array], batch: dict) -> dict[str, jax.Array]:
        """Scores of the true pair (pos_B) and of the noise words (neg_BK) from the looked-up rows."""
        if batch["inputs"].ndim == 2:  # the mean of the window's input vectors, as word2vec's cbow_mean
            mask_BW1 = batch["input_mask"][..., None]
            h_BD = (rows["embed_VD"] * mask_BW1).sum(1) / jnp.maximum(mask_BW1.sum(1), 1.0)
        else:
            h_BD = rows["embed_VD"]
        (B, D), g = h_BD.shape, self.share_negatives
        targets_BD, negatives_GKD = rows["context_VD"][:B], rows["context_VD"][B:].reshape(B // g, -1, D)
        neg_GgK = jnp.einsum("gid,gkd->gik", h_BD.reshape(B // g, g, D), negatives_GKD)
        return {"pos_B": jnp.einsum("bd,bd->b", h_BD, targets_BD), "neg_BK": neg_GgK.reshape(B, -1)}

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        return self.score(gather(self, self.lookups(batch)), batch)

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

    @staticmethod
    def lookups(batch: dict) -> dict[str, jax.Array]:
        rows, cols = batch["rows"], batch["cols"]
        return {"embed_VD": rows, "context_VD": cols, "bias_V": rows, "context_bias_V": cols}

    @staticmethod
    def score(rows: dict[str, jax.Array], batch: dict) -> dict[str, jax.Array]:
        dot_B = jnp.einsum("bd,bd->b", rows["embed_VD"], rows["context_VD"])
        return {"prediction_B": dot_B + rows["bias_V"] + rows["context_bias_V"]}

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        return self.score(gather(self, self.lookups(batch)), batch)

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        del deterministic, rngs  # no dropout
        return self(batch)

    def vectors(self) -> jax.Array:
        return self.embed_VD[...] + self.context_VD[...]


def gather(model: nnx.Module, lookups: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The rows `lookups` names, from the model's tables."""
    return {
        name: jnp.take(getattr(model, name)[...], ids, axis=0, mode="clip") for name, ids in lookups.items()
    }
