"""ELMo: a character-CNN token encoder with highway layers and a bidirectional LSTM language model, and the
task-specific scalar mix of its layers, gamma * sum_j softmax(s)_j * h_j (Peters et al., 2018).

Dimension key: B batch, L tokens, C characters per token, E character embedding, F CNN filters (all widths),
D token / LSTM width, J layers mixed (the token layer + each LSTM layer), V vocabulary.
Characters come in the batch (`chars`, see lmjax/data/pipeline.py: byte + 1, markers 257-259, padding 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.errors import InputError
from lmjax.models import layers
from lmjax.models.rnn import Recurrent

NUM_CHARS = 260


def parse_filters(text: str) -> list[tuple[int, int]]:
    """'1:32,2:32,3:64' -> [(width, count), ...]."""
    try:
        filters = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
        assert filters and all(len(f) == 2 and min(f) > 0 for f in filters)
    except (ValueError, AssertionError):
        raise InputError(
            f"model.char_filters={text!r} is not a list of width:count pairs, e.g. '1:32,2:32,3:64'"
        ) from None
    return filters


class CharCNN(nnx.Module):
    """Characters of each token -> embeddings -> convolutions of several widths, max over positions -> ReLU ->
    highway layers -> projection to D."""

    def __init__(
        self,
        d_model: int,
        *,
        char_dim: int,
        filters: list[tuple[int, int]],
        highway_layers: int,
        rngs: nnx.Rngs,
    ):
        normal = nnx.initializers.normal(0.02)
        self.char_embed_CE = layers.param(rngs, normal, (NUM_CHARS, char_dim), (None, None))
        self.convs = nnx.List(
            [
                layers.param(rngs, nnx.initializers.lecun_normal(), (w, char_dim, n), (None, None, "mlp"))
                for w, n in filters
            ]
        )
        self.conv_biases = nnx.List(
            [layers.param(rngs, nnx.initializers.zeros, (n,), ("mlp",)) for _, n in filters]
        )
        F = sum(n for _, n in filters)
        self.highways = nnx.List(
            [
                layers.Dense(F, 2 * F, (None, "mlp"), use_bias=True, rngs=rngs, init_std=F**-0.5)
                for _ in range(highway_layers)
            ]
        )
        for h in self.highways:  # carry-gate bias: start close to the identity
            h.bias[...] = h.bias[...].at[F:].set(-2.0)
        self.project = layers.Dense(F, d_model, ("mlp", "embed"), use_bias=True, rngs=rngs, init_std=F**-0.5)

    def __call__(self, chars_BLC: jax.Array) -> jax.Array:
        B, L, C = chars_BLC.shape
        x_NCE = jnp.take(self.char_embed_CE[...], chars_BLC.reshape(B * L, C), axis=0)
        pooled = []
        for kernel_WEF, bias_F in zip(self.convs, self.conv_biases, strict=True):
            y_NPF = jax.lax.conv_general_dilated(
                x_NCE, kernel_WEF[...], (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
            )
            pooled.append(jax.nn.relu(y_NPF.max(axis=1) + bias_F[...]))
        x_NF = jnp.concatenate(pooled, axis=-1)
        for highway in self.highways:
            transform_NF, gate_NF = jnp.split(highway(x_NF), 2, axis=-1)
            g = jax.nn.sigmoid(gate_NF)
            x_NF = (1 - g) * x_NF + g * jax.nn.relu(transform_NF)
        return self.project(x_NF).reshape(B, L, -1)


class ELMo(nnx.Module):
    """The token encoder, then num_layers forward and num_layers backward LSTM layers (residual connections
    above the first), and one softmax shared by both directions."""

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        char_dim: int,
        char_filters: str,
        highway_layers: int,
        dropout: float,
        rngs: nnx.Rngs,
    ):
        self.d_model = d_model
        self.tokens = CharCNN(
            d_model,
            char_dim=char_dim,
            filters=parse_filters(char_filters),
            highway_layers=highway_layers,
            rngs=rngs,
        )
        self.forward_layers = nnx.List(
            [Recurrent(d_model, d_model, cell="lstm", rngs=rngs) for _ in range(num_layers)]
        )
        self.backward_layers = nnx.List(
            [Recurrent(d_model, d_model, cell="lstm", rngs=rngs) for _ in range(num_layers)]
        )
        self.dropout = nnx.Dropout(dropout)
        self.head_DV = layers.param(
            rngs, nnx.initializers.normal(0.02), (d_model, vocab_size), ("embed", "vocab")
        )

    @property
    def feature_dim(self) -> int:
        return 2 * self.d_model

    def layer_states(
        self, chars_BLC: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        """(token x_BLD, forward h_BLD per layer, backward h_BLD per layer); backward h[t] has read tokens t..
        only."""
        x_BLD = self.tokens(chars_BLC)
        states = []
        for stack, reverse in ((self.forward_layers, False), (self.backward_layers, True)):
            h_BLD, hs = x_BLD, []
            for j, layer in enumerate(stack):
                y_BLD = layer(self.dropout(h_BLD, deterministic=deterministic, rngs=rngs), reverse=reverse)
                h_BLD = y_BLD + h_BLD if j else y_BLD
                hs.append(h_BLD)
            states.append(hs)
        return x_BLD, states[0], states[1]

    def __call__(
        self, chars_BLC: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> dict:
        """Forward logits (next token) and backward logits (previous token) at every position."""
        _, fwd, bwd = self.layer_states(chars_BLC, deterministic=deterministic, rngs=rngs)
        head_DV = self.head_DV[...]

        def logits(h):
            return layers.vocab_logits(self.dropout(h, deterministic=deterministic, rngs=rngs), head_DV)

        return {"logits": logits(fwd[-1]), "backward_logits": logits(bwd[-1])}

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        return self(batch["chars"], deterministic=deterministic, rngs=rngs)

    def features(
        self, chars_BLC: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """h_JBL(2D): [token; token] and [forward_j; backward_j] for each layer j (what the scalar mix
        weighs)."""
        x_BLD, fwd, bwd = self.layer_states(chars_BLC, deterministic=deterministic, rngs=rngs)
        return jnp.stack(
            [jnp.concatenate([x_BLD, x_BLD], -1)]
            + [jnp.concatenate(p, -1) for p in zip(fwd, bwd, strict=True)]
        )


class ScalarMix(nnx.Module):
    """gamma * sum_j softmax(s)_j * h_j over J layers (s starts at 0: the plain mean; gamma at 1)."""

    def __init__(self, num_layers: int, *, rngs: nnx.Rngs):
        self.weights_J = layers.param(rngs, nnx.initializers.zeros, (num_layers,), (None,))
        self.gamma = layers.param(rngs, nnx.initializers.ones, (), ())

    def __call__(self, h_J_: jax.Array) -> jax.Array:
        w_J = jax.nn.softmax(self.weights_J[...])
        return self.gamma[...] * jnp.tensordot(w_J, h_J_.astype(jnp.float32), axes=1)
