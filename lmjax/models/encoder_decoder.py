"""Encoder-decoder Transformer: T5 (pre-RMSNorm, relative bias) or the original Transformer (post-norm,
sinusoidal), chosen by config (see layers.py for the dimension key)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.models import layers


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
        self.encoder_blocks = nnx.List([layers.Block(spec, rngs=rngs) for _ in range(spec.num_layers)])
        self.encoder_norm = layers.final_norm(spec, rngs)
        dec_spec = dataclasses.replace(spec, num_layers=num_decoder_layers or spec.num_layers)
        self.decoder_bias = (
            layers.RelativePositionBias(dec_spec, bidirectional=False, rngs=rngs) if relative else None
        )
        self.decoder_blocks = nnx.List(
            [layers.Block(dec_spec, cross_attention=True, rngs=rngs) for _ in range(dec_spec.num_layers)]
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
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Encoder states enc_BSD; mask_BS marks real tokens."""
        layers.check_length(tokens_BS.shape[1], self.max_len, "input")
        x_BSD = self._embed(self.embed_VD, tokens_BS, None, self.encoder_pos_embed_LD, deterministic, rngs)
        return layers.run_stack(
            self.encoder_blocks,
            self.encoder_norm,
            self.encoder_bias,
            self.positions,
            x_BSD,
            mask_B1LS=layers.attention_mask(mask_BS, causal=False),
            deterministic=deterministic,
            rngs=rngs,
        )[0]

    def forward(self, batch: dict, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        """{'logits'} of batch['decoder_inputs'] given batch['inputs'] (real tokens: batch['input_mask'])."""
        return {
            "logits": self(
                batch["inputs"],
                batch["decoder_inputs"],
                mask_BS=batch["input_mask"],
                deterministic=deterministic,
                rngs=rngs,
            )
        }

    def __call__(
        self,
        inputs_BS: jax.Array,
        decoder_inputs_BL: jax.Array,
        *,
        mask_BS: jax.Array | None = None,
        decoder_mask_BL: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Decoder logits_BLV (fp32) for teacher-forced decoder inputs."""
        enc_BSD = self.encode(inputs_BS, mask_BS=mask_BS, deterministic=deterministic, rngs=rngs)
        L = decoder_inputs_BL.shape[1]
        layers.check_length(L, self.max_len, "target")
        if mask_BS is None:
            mask_BS = jnp.ones(inputs_BS.shape, bool)
        logits_BLV, _ = self._decode(
            decoder_inputs_BL,
            enc_BSD,
            mask_BS,
            None,
            layers.attention_mask(decoder_mask_BL, causal=True, L=L),
            is_causal=decoder_mask_BL is None,
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
        zeros = jnp.zeros((batch, length, *self.decoder_blocks[0].attn.key_DHK.shape[1:]), self.dtype)
        return [((zeros, zeros), None) for _ in self.decoder_blocks]

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
        mask_B1LS = layers.attention_mask(key_mask_BS, causal=True, L=tokens_BL.shape[1], q_offset=index)
        return self._decode(
            tokens_BL,
            enc_BSD,
            enc_mask_BS,
            positions_BL,
            mask_B1LS,
            is_causal=False,
            q_offset=index,
            S=key_mask_BS.shape[1],
            caches=caches,
        )

    def _decode(
        self,
        tokens_BL,
        enc_BSD,
        enc_mask_BS,
        positions_BL,
        mask_B1LS,
        *,
        is_causal,
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
            mask_B1LS=mask_B1LS,
            is_causal=is_causal,
            enc_BSD=enc_BSD,
            enc_mask_B1LS=layers.attention_mask(enc_mask_BS, causal=False),
            deterministic=deterministic,
            rngs=rngs,
        )
        head_DV = layers.output_head(self.embed_VD, self.head_DV)
        return layers.vocab_logits(x_BLD * self.output_scale, head_DV.astype(self.dtype)), caches
