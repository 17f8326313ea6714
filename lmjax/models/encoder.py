"""BERT-style bidirectional encoder with masked-LM and next-sentence heads (see layers.py for the dimension
key)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.errors import InputError
from lmjax.models import attention, layers

HEADS = ("none", "mlm", "mlm_nsp")


class EncoderLM(nnx.Module):
    """Tokens + positions + segments -> (embedding norm) -> bidirectional blocks -> MLM / NSP heads.

    MLM head: dense + activation + norm, then the (tied) output matrix and a vocabulary bias.
    NSP head: tanh pooler over the first token ([CLS]), then a 2-way classifier (0: B follows A).
    """

    def __init__(
        self,
        spec: layers.Spec,
        *,
        vocab_size: int,
        max_len: int,
        type_vocab_size: int = 2,
        embed_norm: bool = True,
        heads: str = "mlm_nsp",
        tie_embeddings: bool = True,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if heads not in HEADS:
            raise InputError(f"model.encoder_heads={heads!r} is unknown; use one of {HEADS}")
        self.vocab_size, self.max_len, self.positions, self.heads = vocab_size, max_len, spec.positions, heads
        self.dtype = jnp.dtype(dtype)
        d = spec.d_model
        normal = nnx.initializers.normal(0.02)
        self.embed_VD = layers.param(rngs, normal, (vocab_size, d), ("vocab", "embed"))
        self.pos_embed_LD = layers.position_table(spec, max_len, rngs)
        self.segment_embed_TD = (
            layers.param(rngs, normal, (type_vocab_size, d), (None, "embed")) if type_vocab_size else None
        )
        self.embed_norm = layers.make_norm(spec, rngs) if embed_norm else None
        self.embed_dropout = nnx.Dropout(spec.dropout)
        self.relative_bias = (
            layers.RelativePositionBias(spec, bidirectional=True, rngs=rngs)
            if spec.positions == "relative"
            else None
        )
        self.blocks = layers.make_blocks(spec, rngs, num_layers=spec.num_layers)
        self.final_norm = layers.final_norm(spec, rngs)
        self.activation = layers.ACTIVATIONS[spec.activation][0]
        if heads != "none":
            self.mlm_dense = layers.Dense(d, d, ("embed", None), use_bias=True, rngs=rngs)
            self.mlm_norm = layers.make_norm(spec, rngs)
            self.mlm_bias_V = layers.param(rngs, nnx.initializers.zeros, (vocab_size,), ("vocab",))
            self.mlm_head_DV = (
                None if tie_embeddings else layers.param(rngs, normal, (d, vocab_size), ("embed", "vocab"))
            )
        if heads == "mlm_nsp":
            self.pooler = layers.Dense(d, d, ("embed", None), use_bias=True, rngs=rngs)
            self.nsp = layers.Dense(d, 2, ("embed", None), use_bias=True, rngs=rngs)

    def encode(
        self,
        tokens_BL: jax.Array,
        *,
        segments_BL: jax.Array | None = None,
        mask_BL: jax.Array | None = None,
        document_ids_BL: jax.Array | None = None,
        positions_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Hidden states h_BLD; mask_BL marks real tokens (padding is never attended to); packed rows
        (document_ids_BL, 0: padding; positions_BL restarting per document) attend within each document."""
        layers.check_length(tokens_BL.shape[1], self.max_len)
        ids_BL = attention.documents(document_ids_BL, mask_BL)
        x_BLD = jnp.take(self.embed_VD[...], tokens_BL, axis=0)
        x_BLD = layers.add_positions(x_BLD, positions_BL, self.positions, self.pos_embed_LD, self.max_len)
        if self.segment_embed_TD is not None:
            segments_BL = jnp.zeros_like(tokens_BL) if segments_BL is None else segments_BL
            x_BLD = x_BLD + jnp.take(self.segment_embed_TD[...], segments_BL, axis=0)
        if self.embed_norm is not None:
            x_BLD = self.embed_norm(x_BLD)
        x_BLD = self.embed_dropout(x_BLD.astype(self.dtype), deterministic=deterministic, rngs=rngs)
        return layers.run_stack(
            self.blocks,
            self.final_norm,
            self.relative_bias,
            self.positions,
            x_BLD,
            positions_BL=positions_BL,
            mask=attention.Mask(ids_BL, ids_BL),
            deterministic=deterministic,
            rngs=rngs,
        )[0]

    def sentence_embedding(
        self,
        tokens_BL: jax.Array,
        mask_BL: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """The mean of the real tokens' hidden states, e_BD (what the contrastive objective compares)."""
        h_BLD = self.encode(tokens_BL, mask_BL=mask_BL, deterministic=deterministic, rngs=rngs).astype(
            jnp.float32
        )
        return layers.masked_mean(h_BLD, mask_BL)

    def mlm_logits(self, h_BLD: jax.Array) -> jax.Array:
        if self.heads == "none":
            raise InputError(
                "this encoder has no MLM head (model.encoder_heads='none'); use 'mlm' or 'mlm_nsp'"
            )
        t_BLD = self.mlm_norm(self.activation(self.mlm_dense(h_BLD)))
        head_DV = layers.output_head(self.embed_VD, self.mlm_head_DV)
        return layers.vocab_logits(t_BLD, head_DV.astype(self.dtype)) + self.mlm_bias_V[...].astype(
            jnp.float32
        )

    def nsp_logits(self, h_BLD: jax.Array) -> jax.Array:
        if self.heads != "mlm_nsp":
            raise InputError(
                f"this encoder has no NSP head (model.encoder_heads={self.heads!r}); use 'mlm_nsp'"
            )
        return self.nsp(jnp.tanh(self.pooler(h_BLD[:, 0]))).astype(jnp.float32)  # logits_B2

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        """MLM: {'logits'} (+ 'nsp_logits' with an NSP head and labels). A batch without targets
        (contrastive):
        {'embeddings'} [2, B, D] of two views, the same text under two dropout masks or
        batch['positive_inputs']."""
        kw = dict(deterministic=deterministic, rngs=rngs)
        if "targets" not in batch:
            views = [
                (batch["inputs"], batch["input_mask"]),
                (
                    batch.get("positive_inputs", batch["inputs"]),
                    batch.get("positive_mask", batch["input_mask"]),
                ),
            ]
            return {"embeddings": jnp.stack([self.sentence_embedding(x, mask, **kw) for x, mask in views])}
        h_BLD = self.hidden_states(batch, **kw)
        out = {"logits": self.mlm_logits(h_BLD)}
        if self.heads == "mlm_nsp" and "nsp_labels" in batch:
            out["nsp_logits"] = self.nsp_logits(h_BLD)
        return out

    def hidden_states(
        self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """h_BLD for batch['inputs'] (+ 'segments'; padding marked by batch['input_mask']; packed rows by
        'document_ids' and 'positions')."""
        return self.encode(
            batch["inputs"],
            segments_BL=batch.get("segments"),
            mask_BL=batch["input_mask"],
            document_ids_BL=batch.get("document_ids"),
            positions_BL=batch.get("positions"),
            deterministic=deterministic,
            rngs=rngs,
        )

    def __call__(
        self,
        tokens_BL: jax.Array,
        *,
        segments_BL: jax.Array | None = None,
        mask_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """MLM logits_BLV, or the hidden states h_BLD of an encoder without heads."""
        h_BLD = self.encode(
            tokens_BL, segments_BL=segments_BL, mask_BL=mask_BL, deterministic=deterministic, rngs=rngs
        )
        return h_BLD if self.heads == "none" else self.mlm_logits(h_BLD)
