"""Encoder-decoder Transformer: T5 (pre-RMSNorm, relative bias) or the original Transformer (post-norm,
sinusoidal), chosen by config (see layers.py for the dimension key)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import attention, layers


class EncoderDecoderLM(nnx.Module):
    """Bidirectional encoder; causal decoder with cross-attention; (tied) output head.

    scale_output multiplies the decoder output by d_model**-0.5 before the output matrix (T5 v1.0, whose
    head is the tied embedding table; T5 v1.1 neither ties nor scales).
    """

    def __init__(
        self,
        spec: layers.Spec,
        *,
        vocab_size: int,
        max_len: int,
        num_decoder_layers: int = 0,
        share_embeddings: bool = True,
        tie_embeddings: bool = True,
        scale_output: bool = False,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        self.vocab_size, self.max_len, self.positions = vocab_size, max_len, spec.positions
        self.dtype, self.output_scale = jnp.dtype(dtype), spec.d_model**-0.5 if scale_output else 1.0
        d = spec.d_model
        normal = nnx.initializers.normal(0.02)
        relative = spec.positions == "relative"
        self.embed_VD = layers.param(rngs, normal, (vocab_size, d), ("vocab", "embed"))
        self.decoder_embed_VD = (
            None if share_embeddings else layers.param(rngs, normal, (vocab_size, d), ("vocab", "embed"))
        )
        self.encoder_pos_embed_LD = layers.position_table(spec, max_len, rngs)
        self.decoder_pos_embed_LD = layers.position_table(spec, max_len, rngs)
        self.embed_dropout = nnx.Dropout(spec.dropout)
        self.encoder_bias = (
            layers.RelativePositionBias(spec, bidirectional=True, rngs=rngs) if relative else None
        )
        self.encoder_blocks = layers.make_blocks(spec, rngs, num_layers=spec.num_layers)
        self.encoder_norm = layers.final_norm(spec, rngs)
        dec_spec = dataclasses.replace(spec, num_layers=num_decoder_layers or spec.num_layers)
        self.decoder_bias = (
            layers.RelativePositionBias(dec_spec, bidirectional=False, rngs=rngs) if relative else None
        )
        self.decoder_blocks = layers.make_blocks(
            dec_spec, rngs, num_layers=dec_spec.num_layers, cross_attention=True
        )
        self.decoder_norm = layers.final_norm(spec, rngs)
        self.head_DV = (
            None if tie_embeddings else layers.param(rngs, normal, (d, vocab_size), ("embed", "vocab"))
        )

    def _embed(self, table: nnx.Param, tokens_BL: jax.Array, positions_BL, pos_embed_LD, deterministic, rngs):
        x_BLD = jnp.take(table[...], tokens_BL, axis=0).astype(self.dtype)
        x_BLD = layers.add_positions(x_BLD, positions_BL, self.positions, pos_embed_LD, self.max_len)
        return self.embed_dropout(x_BLD, deterministic=deterministic, rngs=rngs)

    def encode(
        self,
        tokens_BS: jax.Array,
        *,
        mask_BS: jax.Array | None = None,
        document_ids_BS: jax.Array | None = None,
        positions_BS: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Encoder states enc_BSD; mask_BS marks real tokens; document_ids_BS (0: padding) and positions_BS
        describe packed rows."""
        layers.check_length(tokens_BS.shape[1], self.max_len, "input")
        table_LD = self.encoder_pos_embed_LD
        x_BSD = self._embed(self.embed_VD, tokens_BS, positions_BS, table_LD, deterministic, rngs)
        ids_BS = attention.documents(document_ids_BS, mask_BS)
        return layers.run_stack(
            self.encoder_blocks,
            self.encoder_norm,
            self.encoder_bias,
            self.positions,
            x_BSD,
            positions_BL=positions_BS,
            mask=attention.Mask(ids_BS, ids_BS),
            deterministic=deterministic,
            rngs=rngs,
        )[0]

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        """{'logits'} of batch['decoder_inputs'] given batch['inputs'] (real tokens: batch['input_mask']);
        packed rows carry document ids and positions for both (batch['input_document_ids'],
        batch['input_positions'], batch['decoder_document_ids'], batch['decoder_positions'])."""
        packed = {
            name: batch[key]
            for name, key in (
                ("document_ids_BS", "input_document_ids"),
                ("positions_BS", "input_positions"),
                ("decoder_document_ids_BL", "decoder_document_ids"),
                ("decoder_positions_BL", "decoder_positions"),
            )
            if key in batch
        }
        return {
            "logits": self(
                batch["inputs"],
                batch["decoder_inputs"],
                mask_BS=batch["input_mask"],
                deterministic=deterministic,
                rngs=rngs,
                **packed,
            )
        }

    def __call__(
        self,
        inputs_BS: jax.Array,
        decoder_inputs_BL: jax.Array,
        *,
        mask_BS: jax.Array | None = None,
        decoder_mask_BL: jax.Array | None = None,
        document_ids_BS: jax.Array | None = None,
        positions_BS: jax.Array | None = None,
        decoder_document_ids_BL: jax.Array | None = None,
        decoder_positions_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Decoder logits_BLV (fp32) for teacher-forced decoder inputs (packed rows: a target attends to
        its own document's targets and inputs)."""
        enc_BSD = self.encode(
            inputs_BS,
            mask_BS=mask_BS,
            document_ids_BS=document_ids_BS,
            positions_BS=positions_BS,
            deterministic=deterministic,
            rngs=rngs,
        )
        L = decoder_inputs_BL.shape[1]
        layers.check_length(L, self.max_len, "target")
        enc_ids_BS = attention.documents(document_ids_BS, mask_BS)
        dec_ids_BL = attention.documents(decoder_document_ids_BL, decoder_mask_BL)
        if enc_ids_BS is not None and dec_ids_BL is None:  # every target attends to its row's inputs
            dec_ids_BL = jnp.ones(decoder_inputs_BL.shape, jnp.int32)
        logits_BLV, _ = self._decode(
            decoder_inputs_BL,
            enc_BSD,
            decoder_positions_BL,
            attention.Mask(dec_ids_BL, dec_ids_BL, causal=True),
            attention.Mask(dec_ids_BL, enc_ids_BS),
            q_offset=0,
            S=L,
            caches=None,
            deterministic=deterministic,
            rngs=rngs,
        )
        return logits_BLV

    def init_cache(self, batch: int, length: int) -> list:
        """Empty decoder self-attention caches; the cross-attention ones are made by the first `decode`
        call."""
        return layers.empty_caches(self.decoder_blocks, batch, length, self.dtype)

    def decode(
        self,
        tokens_BL: jax.Array,
        caches: list,
        *,
        index: jax.Array,
        key_mask_BS: jax.Array,
        positions_BL: jax.Array,
        enc_mask_BS: jax.Array,
        enc_BSD: jax.Array | None = None,
    ) -> tuple[jax.Array, list]:
        """Decoder logits for L new tokens at slots index..; pass enc_BSD on the first call (it fills the
        cross caches)."""
        return self._decode(
            tokens_BL,
            enc_BSD,
            positions_BL,
            layers.cache_mask(key_mask_BS, tokens_BL.shape[1], index),
            attention.Mask(dense_B1LS=enc_mask_BS.astype(bool)[:, None, None, :]),
            q_offset=index,
            S=key_mask_BS.shape[1],
            caches=caches,
        )

    def _decode(
        self,
        tokens_BL,
        enc_BSD,
        positions_BL,
        mask,
        cross_mask,
        *,
        q_offset,
        S,
        caches,
        deterministic=True,
        rngs=None,
    ):
        table = self.embed_VD if self.decoder_embed_VD is None else self.decoder_embed_VD
        x_BLD = self._embed(table, tokens_BL, positions_BL, self.decoder_pos_embed_LD, deterministic, rngs)
        x_BLD, caches = layers.run_stack(
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_bias,
            self.positions,
            x_BLD,
            positions_BL=positions_BL,
            q_offset=q_offset,
            S=S,
            caches=caches,
            mask=mask,
            enc_BSD=enc_BSD,
            cross_mask=cross_mask,
            deterministic=deterministic,
            rngs=rngs,
        )
        head_DV = layers.output_head(self.embed_VD, self.head_DV)
        return layers.vocab_logits(x_BLD * self.output_scale, head_DV.astype(self.dtype)), caches
