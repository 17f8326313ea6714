"""GPT-style decoder-only language model (see layers.py for the dimension key)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import attention, layers


class DecoderLM(nnx.Module):
    """Token embedding + positions -> causal blocks -> final norm (pre-norm) -> (tied) output head."""

    def __init__(
        self,
        spec: layers.Spec,
        *,
        vocab_size: int,
        max_len: int,
        tie_embeddings: bool = True,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        self.vocab_size, self.max_len, self.positions = vocab_size, max_len, spec.positions
        self.dtype = jnp.dtype(dtype)
        normal = nnx.initializers.normal(0.02)
        self.embed_VD = layers.param(rngs, normal, (vocab_size, spec.d_model), ("vocab", "embed"))
        self.pos_embed_LD = layers.position_table(spec, max_len, rngs)
        self.embed_dropout = nnx.Dropout(spec.dropout)
        self.relative_bias = (
            layers.RelativePositionBias(spec, bidirectional=False, rngs=rngs)
            if spec.positions == "relative"
            else None
        )
        self.blocks = layers.make_blocks(spec, rngs, num_layers=spec.num_layers)
        self.final_norm = layers.final_norm(spec, rngs)
        self.head_DV = (
            None
            if tie_embeddings
            else layers.param(rngs, normal, (spec.d_model, vocab_size), ("embed", "vocab"))
        )

    def embed(self, tokens_BL: jax.Array) -> jax.Array:
        return jnp.take(self.embed_VD[...], tokens_BL, axis=0).astype(self.dtype)

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        """{'logits'} for batch['inputs']: padding (batch['input_mask'] 0) is never attended; packed rows
        (batch['document_ids'], batch['positions']) attend within each document, positions restarting."""
        return {"logits": self.logits(self.hidden_states(batch, deterministic=deterministic, rngs=rngs))}

    def hidden_states(
        self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """h_BLD for a batch as `forward` reads it (what task heads read)."""
        return self.hidden(
            self.embed(batch["inputs"]),
            mask_BL=batch.get("input_mask"),
            document_ids_BL=batch.get("document_ids"),
            positions_BL=batch.get("positions"),
            deterministic=deterministic,
            rngs=rngs,
        )

    def __call__(
        self,
        tokens_BL: jax.Array,
        *,
        mask_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Next-token logits_BLV (fp32) at every position; mask_BL marks real tokens (padding is never
        attended)."""
        return self.from_embeddings(
            self.embed(tokens_BL), mask_BL=mask_BL, deterministic=deterministic, rngs=rngs
        )

    def from_embeddings(
        self,
        x_BLD: jax.Array,
        *,
        mask_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """The model after the token lookup (used by tests that differentiate w.r.t. the inputs)."""
        return self.logits(self.hidden(x_BLD, mask_BL=mask_BL, deterministic=deterministic, rngs=rngs))

    def hidden(
        self,
        x_BLD: jax.Array,
        *,
        mask_BL: jax.Array | None = None,
        document_ids_BL: jax.Array | None = None,
        positions_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """The last block's (normed) hidden states h_BLD for embedded inputs x_BLD; document_ids_BL (0:
        padding) and positions_BL describe packed rows."""
        L = x_BLD.shape[1]
        layers.check_length(L, self.max_len)
        ids_BL = attention.documents(document_ids_BL, mask_BL)
        return self._forward(
            x_BLD,
            positions_BL,
            attention.Mask(ids_BL, ids_BL, causal=True),
            q_offset=0,
            S=L,
            caches=None,
            deterministic=deterministic,
            rngs=rngs,
        )[0]

    def logits(self, h_BLD: jax.Array) -> jax.Array:
        head_DV = layers.output_head(self.embed_VD, self.head_DV)
        return layers.vocab_logits(h_BLD, head_DV.astype(self.dtype))

    def init_cache(self, batch: int, length: int) -> list:
        """Empty self-attention caches for `length` slots (one (k, v) pair per block)."""
        return layers.empty_caches(self.blocks, batch, length, self.dtype)

    def decode(
        self,
        tokens_BL: jax.Array,
        caches: list,
        *,
        index: jax.Array,
        key_mask_BS: jax.Array,
        positions_BL: jax.Array,
    ) -> tuple[jax.Array, list]:
        """Runs L new tokens written at cache slots index..index+L-1 (index a scalar, or int32[B] with each
        row at its own slot); key_mask_BS marks filled, non-padding slots."""
        h_BLD, caches = self._forward(
            self.embed(tokens_BL),
            positions_BL,
            layers.cache_mask(key_mask_BS, tokens_BL.shape[1], index),
            q_offset=index,
            S=key_mask_BS.shape[1],
            caches=caches,
        )
        return self.logits(h_BLD), caches

    def _forward(self, x_BLD, positions_BL, mask, *, q_offset, S, caches, deterministic=True, rngs=None):
        x_BLD = layers.add_positions(x_BLD, positions_BL, self.positions, self.pos_embed_LD, self.max_len)
        x_BLD = self.embed_dropout(x_BLD, deterministic=deterministic, rngs=rngs)
        return layers.run_stack(
            self.blocks,
            self.final_norm,
            self.relative_bias,
            self.positions,
            x_BLD,
            positions_BL=positions_BL,
            q_offset=q_offset,
            S=S,
            caches=caches,
            mask=mask,
            deterministic=deterministic,
            rngs=rngs,
        )
