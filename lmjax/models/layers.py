"""Transformer layers shared by every model family (decoder now; encoder, encoder-decoder next).

Dimension key (used in names and einsum strings):
  B: batch            L: sequence (query) length    S: key/value length
  D: model width      H: attention heads            K: head size
  F: MLP hidden size  V: vocabulary

Every parameter carries logical axis names in its `axes` metadata; `lmjax.parallel` maps them to
mesh axes with one table.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], axes: tuple[str | None, ...],
          dtype=jnp.float32) -> nnx.Param:
    """A parameter initialised with `init` that records its logical axis names."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


class Dense(nnx.Module):
    """y = x @ W (+ b) for one input and one output axis: kernel_DF, bias_F."""

    def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, use_bias: bool,
                 rngs: nnx.Rngs, init_std: float = 0.02, param_dtype=jnp.float32):
        self.kernel = param(rngs, nnx.initializers.normal(init_std), (d_in, d_out), axes, param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (d_out,), axes[1:], param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...].astype(x.dtype)
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in fp32, with an optional bias."""

    def __init__(self, d: int, *, use_bias: bool, rngs: nnx.Rngs, eps: float = 1e-5):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (d,), ("embed",))
        self.bias = param(rngs, nnx.initializers.zeros, (d,), ("embed",)) if use_bias else None

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        x = x_BLD.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x_BLD.dtype)


def sinusoidal_table(max_len: int, d: int) -> jax.Array:
    """The fixed sin/cos position table of Vaswani et al. (2017), shape [max_len, d]."""
    pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
    inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    table = jnp.zeros((max_len, d), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(pos * inv_freq))
    return table.at[:, 1::2].set(jnp.cos(pos * inv_freq[: d // 2]))


def apply_rotary(x_BLHK: jax.Array, positions_BL: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al., 2021), half-split layout (as GPT-NeoX / Llama in HF)."""
    k = x_BLHK.shape[-1]
    inv_freq_K2 = 1.0 / base ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k)
    angles_BLK2 = positions_BL[..., None].astype(jnp.float32) * inv_freq_K2
    sin, cos = jnp.sin(angles_BLK2)[:, :, None, :], jnp.cos(angles_BLK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHK.dtype)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention through `jax.nn.dot_product_attention`.

    The einsum path is used only for attention-probability dropout, which that API cannot do.
    """

    def __init__(self, d_model: int, num_heads: int, *, use_bias: bool, rotary: bool,
                 attention_dropout: float, rngs: nnx.Rngs, init_std: float = 0.02,
                 out_init_std: float = 0.02, param_dtype=jnp.float32):
        if d_model % num_heads:
            raise ValueError(f"model.d_model={d_model} is not divisible by model.num_heads={num_heads}; "
                             "pick a width that is a multiple of the head count")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.rotary = rotary
        self.attention_dropout = nnx.Dropout(attention_dropout)
        hk = (d_model, num_heads, self.head_dim)
        normal = nnx.initializers.normal(init_std)
        self.query_DHK = param(rngs, normal, hk, ("embed", "heads", "kv"), param_dtype)
        self.key_DHK = param(rngs, normal, hk, ("embed", "heads", "kv"), param_dtype)
        self.value_DHK = param(rngs, normal, hk, ("embed", "heads", "kv"), param_dtype)
        self.out_HKD = param(rngs, nnx.initializers.normal(out_init_std), hk[1:] + (d_model,),
                             ("heads", "kv", "embed"), param_dtype)
        self.bias_HK = (param(rngs, nnx.initializers.zeros, (3, num_heads, self.head_dim),
                              (None, "heads", "kv"), param_dtype) if use_bias else None)
        self.out_bias_D = param(rngs, nnx.initializers.zeros, (d_model,), ("embed",), param_dtype) if use_bias else None

    def __call__(self, x_BLD: jax.Array, kv_BSD: jax.Array | None = None, *, positions_BL: jax.Array | None = None,
                 mask_BHLS: jax.Array | None = None, is_causal: bool = False, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        kv_BSD = x_BLD if kv_BSD is None else kv_BSD
        dt = x_BLD.dtype
        q_BLHK = jnp.einsum("BLD,DHK->BLHK", x_BLD, self.query_DHK[...].astype(dt))
        k_BSHK = jnp.einsum("BSD,DHK->BSHK", kv_BSD, self.key_DHK[...].astype(dt))
        v_BSHK = jnp.einsum("BSD,DHK->BSHK", kv_BSD, self.value_DHK[...].astype(dt))
        if self.bias_HK is not None:
            b = self.bias_HK[...].astype(dt)
            q_BLHK, k_BSHK, v_BSHK = q_BLHK + b[0], k_BSHK + b[1], v_BSHK + b[2]
        if self.rotary:
            assert positions_BL is not None and kv_BSD is x_BLD, "rotary positions apply to self-attention"
            q_BLHK, k_BSHK = apply_rotary(q_BLHK, positions_BL), apply_rotary(k_BSHK, positions_BL)
        if deterministic or self.attention_dropout.rate == 0.0:
            out_BLHK = jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHK, mask=mask_BHLS, is_causal=is_causal)
        else:
            out_BLHK = self._attend_with_dropout(q_BLHK, k_BSHK, v_BSHK, mask_BHLS, is_causal, rngs)
        y_BLD = jnp.einsum("BLHK,HKD->BLD", out_BLHK, self.out_HKD[...].astype(dt))
        return y_BLD if self.out_bias_D is None else y_BLD + self.out_bias_D[...].astype(dt)

    def _attend_with_dropout(self, q_BLHK, k_BSHK, v_BSHK, mask_BHLS, is_causal, rngs):
        logits_BHLS = jnp.einsum("BLHK,BSHK->BHLS", q_BLHK, k_BSHK).astype(jnp.float32) / math.sqrt(self.head_dim)
        L, S = logits_BHLS.shape[-2:]
        keep = jnp.ones((1, 1, L, S), bool) if mask_BHLS is None else mask_BHLS
        if is_causal:
            keep = keep & jnp.tril(jnp.ones((L, S), bool))
        logits_BHLS = jnp.where(keep, logits_BHLS, jnp.finfo(jnp.float32).min)
        probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(q_BLHK.dtype)
        probs_BHLS = self.attention_dropout(probs_BHLS, deterministic=False, rngs=rngs)
        return jnp.einsum("BHLS,BSHK->BLHK", probs_BHLS, v_BSHK)


class MLP(nnx.Module):
    """Position-wise feed-forward: D -> F -> D with GELU (tanh approximation, as GPT-2)."""

    def __init__(self, d_model: int, d_ff: int, *, use_bias: bool, rngs: nnx.Rngs,
                 init_std: float = 0.02, out_init_std: float = 0.02, param_dtype=jnp.float32):
        self.up = Dense(d_model, d_ff, ("embed", "mlp"), use_bias=use_bias, rngs=rngs,
                        init_std=init_std, param_dtype=param_dtype)
        self.down = Dense(d_ff, d_model, ("mlp", "embed"), use_bias=use_bias, rngs=rngs,
                          init_std=out_init_std, param_dtype=param_dtype)

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x_BLD), approximate=True))


class Block(nnx.Module):
    """Pre-LayerNorm Transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, use_bias: bool, rotary: bool,
                 dropout: float, attention_dropout: float, num_layers: int, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        # GPT-2: residual projections scaled by 1/sqrt(2 * num_layers).
        out_std = 0.02 / math.sqrt(2 * num_layers)
        self.attn_norm = LayerNorm(d_model, use_bias=use_bias, rngs=rngs)
        self.attn = MultiHeadAttention(d_model, num_heads, use_bias=use_bias, rotary=rotary,
                                       attention_dropout=attention_dropout, rngs=rngs,
                                       out_init_std=out_std, param_dtype=param_dtype)
        self.mlp_norm = LayerNorm(d_model, use_bias=use_bias, rngs=rngs)
        self.mlp = MLP(d_model, d_ff, use_bias=use_bias, rngs=rngs, out_init_std=out_std, param_dtype=param_dtype)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x_BLD: jax.Array, *, positions_BL: jax.Array, mask_BHLS: jax.Array | None,
                 is_causal: bool, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        h_BLD = self.attn(self.attn_norm(x_BLD), positions_BL=positions_BL, mask_BHLS=mask_BHLS,
                          is_causal=is_causal, deterministic=deterministic, rngs=rngs)
        x_BLD = x_BLD + self.dropout(h_BLD, deterministic=deterministic, rngs=rngs)
        h_BLD = self.mlp(self.mlp_norm(x_BLD))
        return x_BLD + self.dropout(h_BLD, deterministic=deterministic, rngs=rngs)
