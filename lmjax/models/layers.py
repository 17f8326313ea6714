"""Transformer layers shared by every family (decoder, encoder, encoder-decoder), chosen by config.

Dimension key (used in names and einsum strings):
  B: batch            L: sequence (query) length    S: key/value length
  D: model width      H: attention heads            K: head size
  F: MLP hidden size  V: vocabulary                 N: relative-position buckets

Every parameter carries logical axis names in its `axes` metadata, and the residual stream, the
attention projections, the MLP hidden layer and the logits are constrained by logical names
(`constrain`); `lmjax.sharding` maps both to mesh axes with one table.

Attention caches are plain tuples (k_BSHK, v_BSHK): decoding threads them through the model functionally (see
lmjax/models/decode.py); self-attention writes the new keys at `cache_index` (one slot for all rows, or one
per row), cross-attention computes them once from the encoder output.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.models import attention
from lmjax.models.attention import NO_MASK, Mask
from lmjax.sharding import constrain

Initializer = Callable[..., jax.Array]
Cache = tuple[jax.Array, jax.Array]

POSITIONS = ("learned", "sinusoidal", "rotary", "relative")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
# name -> (activation, gated). geglu uses the tanh GELU, as T5 v1.1 ("gated-gelu") does.
ACTIVATIONS = {
    "gelu": (lambda x: jax.nn.gelu(x, approximate=False), False),
    "gelu_tanh": (lambda x: jax.nn.gelu(x, approximate=True), False),
    "relu": (jax.nn.relu, False),
    "swiglu": (jax.nn.silu, True),
    "geglu": (lambda x: jax.nn.gelu(x, approximate=True), True),
}
# model.remat -> what a block keeps from its forward pass for the backward pass (jax.checkpoint policies);
# the rest is recomputed. 'none': keep everything (no rematerialisation).
REMAT_POLICIES = {
    # only the block's input: one more forward pass of the block
    "full": jax.checkpoint_policies.nothing_saveable,
    # matrix-product outputs: recompute norms, activations, softmax
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # as dots, but not attention's
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """The architecture hyperparameters every block shares (resolved from `config.model`)."""

    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int
    num_layers: int
    positions: str = "learned"
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"
    use_bias: bool = True
    qkv_bias: bool = False  # query/key/value biases even without use_bias (Qwen2)
    scale_attention: bool = True
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout: float = 0.0
    attention_dropout: float = 0.0
    remat: str = "none"
    scan_layers: bool = False  # blocks as stacked parameters under one nnx.scan (make_blocks)
    num_kv_heads: int = 0  # 0: num_heads
    rope_theta: float = 10000.0
    attention: str = "auto"  # the implementation (lmjax.models.attention)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @classmethod
    def from_config(cls, model_config: ConfigDict) -> "Spec":
        for key, value, allowed in (
            ("positions", model_config.positions, POSITIONS),
            ("norm", model_config.norm, NORMS),
            ("norm_position", model_config.norm_position, NORM_POSITIONS),
            ("activation", model_config.activation, tuple(ACTIVATIONS)),
            ("remat", model_config.remat, ("none", *REMAT_POLICIES)),
        ):
            if value not in allowed:
                raise InputError(f"model.{key}={value!r} is unknown; use one of {allowed}")
        if not model_config.head_dim and model_config.d_model % model_config.num_heads:
            raise InputError(
                f"model.d_model={model_config.d_model} is not divisible by "
                f"model.num_heads={model_config.num_heads}; "
                "pick a width that is a multiple of the head count (or set model.head_dim)"
            )
        # at build time, not among the config checks: asking for the platform starts JAX's backend
        attention.check(model_config.get("attention", "auto"), model_config.dtype, attention.platform())
        kv_heads = model_config.get("num_kv_heads", 0) or model_config.num_heads
        if model_config.num_heads % kv_heads:
            raise InputError(
                f"model.num_kv_heads={kv_heads} does not divide model.num_heads={model_config.num_heads}; "
                "each key/value head serves an equal group of query heads"
            )
        return cls(
            d_model=model_config.d_model,
            num_heads=model_config.num_heads,
            head_dim=model_config.head_dim or model_config.d_model // model_config.num_heads,
            d_ff=model_config.d_ff or 4 * model_config.d_model,
            num_layers=model_config.num_layers,
            positions=model_config.positions,
            norm=model_config.norm,
            norm_position=model_config.norm_position,
            norm_eps=model_config.norm_eps,
            activation=model_config.activation,
            use_bias=model_config.use_bias,
            qkv_bias=model_config.get("qkv_bias", False),
            scale_attention=model_config.scale_attention,
            relative_buckets=model_config.relative_buckets,
            relative_max_distance=model_config.relative_max_distance,
            dropout=model_config.dropout,
            attention_dropout=model_config.attention_dropout,
            remat=model_config.remat,
            scan_layers=model_config.get("scan_layers", False),
            num_kv_heads=kv_heads,
            rope_theta=model_config.get("rope_theta", 10000.0),
            attention=model_config.get("attention", "auto"),
        )


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x[..., D] @ w[D, ...] as one 2-D matrix product over all leading axes.

    XLA:CPU lays out the backward pass of a 2-D product without the transposing copies that a
    [B, L, D] einsum costs (1.5x faster training steps on the baby config).
    """
    d = w.shape[0]
    return (x.reshape(-1, d) @ w.reshape(d, -1)).reshape(*x.shape[:-1], *w.shape[1:])


def vocab_logits(h_BLD: jax.Array, head_DV: jax.Array) -> jax.Array:
    """fp32 logits_BLV, sharded over the vocabulary by the rules (act_vocab)."""
    return constrain(matmul(h_BLD, head_DV).astype(jnp.float32), ("batch", "length", "act_vocab"))


def param(
    rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype=jnp.float32
) -> nnx.Param:
    """A parameter initialised with `init` that records its logical axis names."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


class Dense(nnx.Module):
    """y = x @ W (+ b) for one input and one output axis: kernel_DF, bias_F."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        axes: tuple[str | None, str | None],
        *,
        use_bias: bool,
        rngs: nnx.Rngs,
        init_std: float = 0.02,
    ):
        self.kernel = param(rngs, nnx.initializers.normal(init_std), (d_in, d_out), axes)
        self.bias = param(rngs, nnx.initializers.zeros, (d_out,), axes[1:]) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul(x, self.kernel[...].astype(x.dtype))
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class Norm(nnx.Module):
    """LayerNorm (mean and variance) or RMSNorm (T5: scale only, no mean), computed in fp32."""

    def __init__(
        self, d: int, *, kind: str = "layernorm", use_bias: bool = True, eps: float = 1e-5, rngs: nnx.Rngs
    ):
        self.kind, self.eps = kind, eps
        self.scale = param(rngs, nnx.initializers.ones, (d,), ("embed",))
        self.bias = (
            param(rngs, nnx.initializers.zeros, (d,), ("embed",))
            if use_bias and kind == "layernorm"
            else None
        )

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        x = x_BLD.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdims=True)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x_BLD.dtype)


def make_norm(spec: Spec, rngs: nnx.Rngs) -> Norm:
    return Norm(spec.d_model, kind=spec.norm, use_bias=spec.use_bias, eps=spec.norm_eps, rngs=rngs)


def final_norm(spec: Spec, rngs: nnx.Rngs) -> Norm | None:
    """The norm after a pre-norm stack (post-norm blocks end normalised already)."""
    return make_norm(spec, rngs) if spec.norm_position == "pre" else None


def position_table(spec: Spec, max_len: int, rngs: nnx.Rngs) -> nnx.Param | None:
    """A learned position table pos_embed_LD (model.positions='learned'), else None."""
    if spec.positions != "learned":
        return None
    return param(rngs, nnx.initializers.normal(0.02), (max_len, spec.d_model), (None, "embed"))


def output_head(embed_VD: nnx.Param, head_DV: nnx.Param | None) -> jax.Array:
    """The output projection [D, V]: the token table's transpose when tied (head_DV None)."""
    return embed_VD[...].T if head_DV is None else head_DV[...]


def masked_mean(h_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
    """h_BD: the mean over the real tokens (mask_BL 1) of each row."""
    m_BL1 = mask_BL[..., None].astype(h_BLD.dtype)
    return jnp.sum(h_BLD * m_BL1, axis=1) / jnp.maximum(jnp.sum(m_BL1, axis=1), 1.0)


def sinusoidal_table(max_len: int, d: int) -> jax.Array:
    """The fixed sin/cos position table of Vaswani et al. (2017), shape [max_len, d]."""
    pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
    inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    table = jnp.zeros((max_len, d), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(pos * inv_freq))
    return table.at[:, 1::2].set(jnp.cos(pos * inv_freq[: d // 2]))


def add_positions(
    x_BLD: jax.Array, positions_BL: jax.Array | None, kind: str, pos_embed_LD: nnx.Param | None, max_len: int
) -> jax.Array:
    """Adds learned or sinusoidal position embeddings (rotary and relative positions act inside attention).

    positions_BL None means 0..L-1 in every row (training); decoding passes each row's own positions.
    """
    if kind not in ("learned", "sinusoidal"):
        return x_BLD
    L, D = x_BLD.shape[1:]
    table_LD = pos_embed_LD[...] if kind == "learned" else sinusoidal_table(max_len, D)
    pos = table_LD[:L] if positions_BL is None else jnp.take(table_LD, positions_BL, axis=0)
    return x_BLD + pos.astype(x_BLD.dtype)


def apply_rotary(x_BLHK: jax.Array, positions_BL: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al., 2021), half-split layout (as GPT-NeoX / Llama in HF)."""
    k = x_BLHK.shape[-1]
    inv_freq_K2 = 1.0 / base ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k)
    angles_BLK2 = positions_BL[..., None].astype(jnp.float32) * inv_freq_K2
    sin, cos = jnp.sin(angles_BLK2)[:, :, None, :], jnp.cos(angles_BLK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHK.dtype)


def relative_bucket(
    relative_LS: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of (key - query) distances: exact for small ones, log-spaced up to max_distance."""
    buckets = jnp.zeros_like(relative_LS)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_LS > 0) * num_buckets
        distance = jnp.abs(relative_LS)
    else:
        distance = -jnp.minimum(relative_LS, 0)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = jnp.minimum(
        max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_LS.dtype), num_buckets - 1
    )
    return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nnx.Module):
    """T5's learned per-head attention bias over bucketed relative distances, shared by a stack's layers."""

    def __init__(self, spec: Spec, *, bidirectional: bool, rngs: nnx.Rngs):
        self.bidirectional, self.num_buckets, self.max_distance = (
            bidirectional,
            spec.relative_buckets,
            spec.relative_max_distance,
        )
        self.embed_NH = param(
            rngs, nnx.initializers.normal(0.02), (spec.relative_buckets, spec.num_heads), (None, "heads")
        )

    def __call__(self, q_positions_BL: jax.Array, k_positions_S: jax.Array) -> jax.Array:
        """bias_BHLS (B = 1 where every row's queries sit at the same positions)."""
        bucket_BLS = relative_bucket(
            k_positions_S[None, None, :] - q_positions_BL[:, :, None],
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return jnp.take(self.embed_NH[...], bucket_BLS, axis=0).transpose(0, 3, 1, 2)


class MultiHeadAttention(nnx.Module):
    """Multi-head self- or cross-attention (grouped-query when there are fewer key/value heads); the
    implementation is spec.attention (lmjax.models.attention)."""

    def __init__(self, spec: Spec, *, cross: bool, rngs: nnx.Rngs, out_init_std: float = 0.02):
        self.cross, self.rotary = cross, spec.positions == "rotary" and not cross
        self.rope_theta, self.implementation = spec.rope_theta, spec.attention
        self.scale = 1.0 / math.sqrt(spec.head_dim) if spec.scale_attention else 1.0
        self.attention_dropout = nnx.Dropout(spec.attention_dropout)
        dhk = (spec.d_model, spec.num_heads, spec.head_dim)
        dgk = (spec.d_model, spec.kv_heads, spec.head_dim)  # G key/value heads (G = H without GQA)
        normal = nnx.initializers.normal(0.02)
        self.query_DHK = param(rngs, normal, dhk, ("embed", "heads", "kv"))
        self.key_DHK = param(rngs, normal, dgk, ("embed", "kv_heads", "kv"))
        self.value_DHK = param(rngs, normal, dgk, ("embed", "kv_heads", "kv"))
        self.out_HKD = param(
            rngs, nnx.initializers.normal(out_init_std), dhk[1:] + (spec.d_model,), ("heads", "kv", "embed")
        )
        biases = spec.use_bias or spec.qkv_bias
        zeros = nnx.initializers.zeros
        self.query_bias_HK = param(rngs, zeros, dhk[1:], ("heads", "kv")) if biases else None
        self.key_bias_GK = param(rngs, zeros, dgk[1:], ("kv_heads", "kv")) if biases else None
        self.value_bias_GK = param(rngs, zeros, dgk[1:], ("kv_heads", "kv")) if biases else None
        self.out_bias_D = (
            param(rngs, nnx.initializers.zeros, (spec.d_model,), ("embed",)) if spec.use_bias else None
        )

    def _project(self, x_BLD: jax.Array, i: int) -> jax.Array:
        w = (self.query_DHK, self.key_DHK, self.value_DHK)[i][...].astype(x_BLD.dtype)
        bias = (self.query_bias_HK, self.key_bias_GK, self.value_bias_GK)[i]
        y_BLHK = matmul(x_BLD, w)
        y_BLHK = y_BLHK if bias is None else y_BLHK + bias[...].astype(x_BLD.dtype)
        return constrain(y_BLHK, ("batch", "length", "act_heads", "kv"))

    def __call__(
        self,
        x_BLD: jax.Array,
        kv_BSD: jax.Array | None = None,
        *,
        positions_BL: jax.Array | None = None,
        mask: Mask = NO_MASK,
        bias_BHLS: jax.Array | None = None,
        cache: Cache | None = None,
        cache_index: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """Returns (y_BLD, cache). Cross-attention takes kv_BSD, or, when decoding, the cache made from it."""
        q_BLHK = self._project(x_BLD, 0)
        if self.cross and kv_BSD is None:
            k_BSHK, v_BSHK = cache
        else:
            source_BSD = kv_BSD if self.cross else x_BLD
            k_BSHK, v_BSHK = self._project(source_BSD, 1), self._project(source_BSD, 2)
        if self.rotary:
            q_BLHK = apply_rotary(q_BLHK, positions_BL, self.rope_theta)
            k_BSHK = apply_rotary(k_BSHK, positions_BL, self.rope_theta)
        if cache is not None and not self.cross:
            k_BSHK, v_BSHK = (
                write_cache(cache[0], k_BSHK, cache_index),
                write_cache(cache[1], v_BSHK, cache_index),
            )
        if cache is not None or self.cross:
            cache = (k_BSHK, v_BSHK)
        probs_dropout = None
        if not deterministic and self.attention_dropout.rate > 0.0:
            probs_dropout = functools.partial(self.attention_dropout, deterministic=False, rngs=rngs)
        out_BLHK = attention.attend(
            self.implementation,
            q_BLHK,
            k_BSHK,
            v_BSHK,
            mask,
            scale=self.scale,
            bias_BHLS=bias_BHLS,
            probs_dropout=probs_dropout,
        )
        dt = x_BLD.dtype
        out_HK_D = self.out_HKD[...].astype(dt).reshape(-1, self.out_HKD.shape[-1])
        y_BLD = matmul(out_BLHK.reshape(*out_BLHK.shape[:2], -1), out_HK_D)
        return (y_BLD if self.out_bias_D is None else y_BLD + self.out_bias_D[...].astype(dt)), cache


class MLP(nnx.Module):
    """Position-wise feed-forward D -> F -> D; gated variants (SwiGLU, GeGLU) multiply by a second
    projection."""

    def __init__(self, spec: Spec, *, rngs: nnx.Rngs, out_init_std: float = 0.02):
        self.activation, gated = ACTIVATIONS[spec.activation]
        self.up = Dense(spec.d_model, spec.d_ff, ("embed", "mlp"), use_bias=spec.use_bias, rngs=rngs)
        self.gate = (
            Dense(spec.d_model, spec.d_ff, ("embed", "mlp"), use_bias=spec.use_bias, rngs=rngs)
            if gated
            else None
        )
        self.down = Dense(
            spec.d_ff,
            spec.d_model,
            ("mlp", "embed"),
            use_bias=spec.use_bias,
            rngs=rngs,
            init_std=out_init_std,
        )

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        h_BLF = self.activation(self.up(x_BLD))
        if self.gate is not None:
            h_BLF = h_BLF * self.gate(x_BLD)
        return self.down(constrain(h_BLF, ("batch", "length", "act_mlp")))


class Block(nnx.Module):
    """Self-attention, optional cross-attention, MLP; each a residual branch, normalised before (pre) or after
    (post)."""

    def __init__(self, spec: Spec, *, cross_attention: bool = False, rngs: nnx.Rngs):
        out_std = 0.02 / math.sqrt(
            2 * spec.num_layers
        )  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
        self.pre = spec.norm_position == "pre"
        self.attn_norm = make_norm(spec, rngs)
        self.attn = MultiHeadAttention(spec, cross=False, rngs=rngs, out_init_std=out_std)
        if cross_attention:
            self.cross_norm = make_norm(spec, rngs)
            self.cross_attn = MultiHeadAttention(spec, cross=True, rngs=rngs, out_init_std=out_std)
        else:
            self.cross_norm = self.cross_attn = None
        self.mlp_norm = make_norm(spec, rngs)
        self.mlp = MLP(spec, rngs=rngs, out_init_std=out_std)
        self.dropout = nnx.Dropout(spec.dropout)
        self.remat = spec.remat

    def _residual(self, norm: Norm, x_BLD: jax.Array, branch: Callable, deterministic: bool, rngs):
        h_BLD, extra = branch(norm(x_BLD) if self.pre else x_BLD)
        x_BLD = x_BLD + self.dropout(h_BLD, deterministic=deterministic, rngs=rngs)
        return (x_BLD if self.pre else norm(x_BLD)), extra

    def __call__(
        self,
        x_BLD: jax.Array,
        *,
        positions_BL: jax.Array | None = None,
        mask: Mask = NO_MASK,
        bias_BHLS: jax.Array | None = None,
        enc_BSD: jax.Array | None = None,
        cross_mask: Mask = NO_MASK,
        cache: tuple | None = None,
        cache_index=None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, tuple | None]:
        """Returns (x_BLD, cache); the cache is (self, cross) when decoding, else None."""
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x_BLD, self_cache = self._residual(
            self.attn_norm,
            x_BLD,
            lambda h: self.attn(
                h,
                positions_BL=positions_BL,
                mask=mask,
                bias_BHLS=bias_BHLS,
                cache=self_cache,
                cache_index=cache_index,
                deterministic=deterministic,
                rngs=rngs,
            ),
            deterministic,
            rngs,
        )
        if self.cross_attn is not None:
            x_BLD, cross_cache = self._residual(
                self.cross_norm,
                x_BLD,
                lambda h: self.cross_attn(
                    h,
                    enc_BSD,
                    mask=cross_mask,
                    cache=cross_cache,
                    deterministic=deterministic,
                    rngs=rngs,
                ),
                deterministic,
                rngs,
            )
        x_BLD, _ = self._residual(self.mlp_norm, x_BLD, lambda h: (self.mlp(h), None), deterministic, rngs)
        return x_BLD, (None if cache is None else (self_cache, cross_cache))


def run_stack(
    blocks,
    final_norm: Norm | None,
    relative_bias: RelativePositionBias | None,
    positions: str,
    x_BLD: jax.Array,
    *,
    positions_BL: jax.Array | None = None,
    q_offset: jax.Array | int = 0,
    S: int | None = None,
    caches: list | None = None,
    **kwargs,
) -> tuple[jax.Array, list | None]:
    """A stack of blocks, then its final norm (pre-norm stacks); threads one cache per block when decoding.

    Queries sit at slots q_offset..q_offset+L-1 of S keys (S = L without a cache; q_offset a scalar, or
    int32[B] when each row decodes at its own slot): T5's relative bias is computed for them once and shared
    by the blocks; rotary positions default to 0..L-1 in every row.
    Without caches, the blocks' `remat` policy (model.remat) decides what each block keeps for the backward
    pass.
    """
    B, L, _ = x_BLD.shape
    bias_BHLS = None
    if relative_bias is not None:
        q_positions_BL = jnp.arange(L)[None, :] + jnp.reshape(q_offset, (-1, 1))
        bias_BHLS = relative_bias(q_positions_BL, jnp.arange(L if S is None else S))
    if positions_BL is None and positions == "rotary":
        positions_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
    rngs = kwargs.pop("rngs", None)

    def apply(block, x_BLD, cache, rngs):
        x_BLD, cache = block(
            x_BLD,
            positions_BL=positions_BL,
            bias_BHLS=bias_BHLS,
            cache_index=q_offset,
            cache=cache,
            rngs=rngs,
            **kwargs,
        )
        return constrain(x_BLD, ("batch", "length", "act_embed")), cache

    remat = first_block(blocks).remat
    if caches is None and remat != "none":  # each block's forward pass recomputed in its backward pass
        apply = nnx.remat(apply, policy=REMAT_POLICIES[remat])
    if caches is None and isinstance(blocks, Block):  # stacked parameters: one scan over the layers
        keys = None if rngs is None else jax.random.split(rngs.dropout(), num_blocks(blocks))

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def scan(x_BLD, block, key):
            return apply(block, x_BLD, None, None if key is None else nnx.Rngs(dropout=key))[0]

        x_BLD = scan(x_BLD, blocks, keys)
    else:
        new_caches = []
        for i in range(num_blocks(blocks)):
            x_BLD, cache = apply(block_at(blocks, i), x_BLD, None if caches is None else caches[i], rngs)
            new_caches.append(cache)
        caches = None if caches is None else new_caches
    return (x_BLD if final_norm is None else final_norm(x_BLD)), caches


def make_blocks(spec: Spec, rngs: nnx.Rngs, *, num_layers: int, cross_attention: bool = False):
    """A stack's blocks: a list of Blocks, or with spec.scan_layers one Block whose parameters are stacked
    along a leading 'layers' axis (made by nnx.vmap; run_stack scans over it)."""
    if not spec.scan_layers:
        return nnx.List([Block(spec, cross_attention=cross_attention, rngs=rngs) for _ in range(num_layers)])

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stacked(rngs: nnx.Rngs) -> Block:
        return Block(spec, cross_attention=cross_attention, rngs=rngs)

    blocks = stacked(rngs)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Param):
            var.set_metadata(axes=("layers", *var.get_metadata()["axes"]))
    return blocks


def num_blocks(blocks) -> int:
    return blocks.attn_norm.scale.shape[0] if isinstance(blocks, Block) else len(blocks)


def block_at(blocks, i: int) -> Block:
    """Block i of a stack (of stacked parameters: their slice i, as a Block of its own)."""
    if not isinstance(blocks, Block):
        return blocks[i]
    graphdef, state = nnx.split(blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


STACKS = ("blocks", "encoder_blocks", "decoder_blocks")  # the models' block stacks


def restack(params: dict, scanned: bool) -> dict:
    """Parameters as a pure dict (nnx.State.to_pure_dict) with every block stack in the scanned layout
    (scanned: arrays with a leading layers axis) or the per-block one ({0: block 0's, 1: ...})."""
    out = {}
    for key, value in params.items():
        per_block = isinstance(value, dict) and 0 in value
        if key in STACKS and scanned and per_block:
            out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *(value[i] for i in range(len(value))))
        elif key in STACKS and not scanned and not per_block:
            depth = jax.tree.leaves(value)[0].shape[0]
            out[key] = {i: jax.tree.map(lambda x, i=i: x[i], value) for i in range(depth)}
        else:
            out[key] = restack(value, scanned) if isinstance(value, dict) else value
    return out


def empty_caches(blocks, batch: int, length: int, dtype) -> list:
    """Empty self-attention caches for `length` slots: one ((k, v), cross) pair per block, cross None."""
    kv_heads, head_dim = first_block(blocks).attn.key_DHK.shape[-2:]
    zeros = jnp.zeros((batch, length, kv_heads, head_dim), dtype)
    return [((zeros, zeros), None)] * num_blocks(blocks)


def first_block(blocks) -> Block:
    return blocks if isinstance(blocks, Block) else blocks[0]


def check_length(L: int, max_len: int, what: str = "sequence") -> None:
    if L > max_len:
        raise InputError(
            f"{what} length {L} is longer than the model's positions (model.max_len={max_len}); "
            f"shorten data.seq_len or raise model.max_len"
        )


def write_cache(cache_BSGK: jax.Array, new_BLGK: jax.Array, index: jax.Array | int) -> jax.Array:
    """new_BLGK written at slots index..index+L-1: the same slots in every row (a scalar index), or each row
    at its own (int32[B]: continuous batching, lmjax/serving)."""
    new_BLGK = new_BLGK.astype(cache_BSGK.dtype)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache_BSGK, new_BLGK, index, axis=1)
    return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, axis=0))(
        cache_BSGK, new_BLGK, index
    )


def cache_mask(key_mask_BS: jax.Array, L: int, q_offset: jax.Array | int) -> Mask:
    """Decoding L queries at cache slots q_offset..q_offset+L-1 (q_offset a scalar or int32[B]): each attends
    to the filled, non-padding slots (key_mask_BS) up to its own."""
    q_BL = jnp.arange(L)[None, :] + jnp.reshape(q_offset, (-1, 1))
    causal_BLS = jnp.arange(key_mask_BS.shape[1])[None, None, :] <= q_BL[:, :, None]
    return Mask(dense_B1LS=key_mask_BS.astype(bool)[:, None, None, :] & causal_BLS[:, None])
