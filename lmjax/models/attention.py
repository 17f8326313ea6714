"""Scaled dot-product attention and its implementations (see layers.py for the dimension key).

`model.attention` names the implementation:

  einsum  written out (einsum, mask, softmax); the only one with attention-probability dropout. On CPU the
          fastest: XLA:CPU's lowering of `jax.nn.dot_product_attention` takes 1.6x as long fwd + bwd.
  xla     `jax.nn.dot_product_attention(implementation='xla')`
  cudnn   the same API with implementation='cudnn': cuDNN's fused flash attention (GPUs; bf16/fp16)
  splash  Pallas splash attention (TPUs): block-sparse over the causal and document masks, never forming
          the L x S score matrix in memory
  auto    splash on TPUs, cudnn on GPUs (bf16/fp16, head size a multiple of 8 up to 128), einsum on CPUs;
          xla where the chosen kernel cannot serve a call (T5's bias; on TPUs also lengths off splash's
          128-token tile and the explicit mask of decoding from a cache)

Who attends to whom is a `Mask`: document ids of queries and keys (packed rows: a token attends only to its
own document; id 0 marks padding, which real tokens never attend), causality, or an explicit boolean mask.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from lmjax import sharding
from lmjax.errors import InputError

IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # splash attention's tile along L and S: lengths must be multiples of it


@flax.struct.dataclass
class Mask:
    """Document ids q_ids_BL / kv_ids_BS (None: one document, no padding), causality, and an explicit
    dense_B1LS (decoding against a cache), combined by `dense`."""

    q_ids_BL: jax.Array | None = None
    kv_ids_BS: jax.Array | None = None
    dense_B1LS: jax.Array | None = None
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    def dense(self, L: int, S: int) -> jax.Array | None:
        """The boolean mask_B1LS these say, or None for no mask at all."""
        keep = self.dense_B1LS
        if self.q_ids_BL is not None:
            same = self.q_ids_BL[:, None, :, None] == self.kv_ids_BS[:, None, None, :]
            keep = same if keep is None else keep & same
        if self.causal:
            tril = jnp.tril(jnp.ones((L, S), bool))[None, None]
            keep = tril if keep is None else keep & tril
        return keep


NO_MASK = Mask()  # every query attends to every key


def documents(ids_BL: jax.Array | None, mask_BL: jax.Array | None) -> jax.Array | None:
    """Document ids for attention: the packed rows' ids, else the padding mask as ids (1 real, 0 padding)."""
    if ids_BL is not None:
        return ids_BL.astype(jnp.int32)
    return None if mask_BL is None else mask_BL.astype(jnp.int32)


TARGET: str | None = None  # compiling for another platform than this machine's (tpu_scripts/aot_check.py)


def platform() -> str:
    """The platform programs are compiled for: TARGET, else this machine's JAX backend."""
    return TARGET or jax.default_backend()


def check(name: str, dtype: str, backend: str) -> None:
    """One line for an implementation this run cannot use (config time)."""
    if name not in IMPLEMENTATIONS:
        raise InputError(f"model.attention={name!r} is unknown; use one of {IMPLEMENTATIONS}")
    if name == "cudnn" and backend != "gpu":
        raise InputError(f"model.attention='cudnn' needs a GPU (this run's backend is {backend}); use 'auto'")
    if name == "cudnn" and dtype not in ("bfloat16", "float16"):
        raise InputError(
            f"model.attention='cudnn' runs in bfloat16 or float16, not model.dtype={dtype!r}; "
            "set model.dtype='bfloat16' or use 'xla'"
        )
    if name == "splash" and backend != "tpu":
        raise InputError(
            f"model.attention='splash' needs a TPU (this run's backend is {backend}); use 'auto'"
        )


def choose(name: str, q_BLHK: jax.Array, k_BSHK: jax.Array, mask: Mask, has_bias: bool) -> str:
    """The implementation that runs one call: `name`, with 'auto' resolved for this platform and call."""
    if name != "auto":
        return name
    backend = platform()
    if backend == "tpu":
        lengths_fit = q_BLHK.shape[1] % SPLASH_BLOCK == 0 and k_BSHK.shape[1] % SPLASH_BLOCK == 0
        return "splash" if lengths_fit and not has_bias and mask.dense_B1LS is None else "xla"
    if backend == "gpu":
        head_dim = q_BLHK.shape[-1]
        half = q_BLHK.dtype in (jnp.bfloat16, jnp.float16)
        return "cudnn" if half and head_dim % 8 == 0 and head_dim <= 128 and not has_bias else "xla"
    return "einsum"


def attend(
    name: str,
    q_BLHK: jax.Array,
    k_BSHK: jax.Array,
    v_BSHK: jax.Array,
    mask: Mask,
    *,
    scale: float,
    bias_BHLS: jax.Array | None = None,
    probs_dropout=None,
) -> jax.Array:
    """out_BLHK; key/value heads G may divide the query heads H (grouped-query attention). With
    `probs_dropout` (a function of the probabilities) only einsum can run."""
    impl = (
        "einsum" if probs_dropout is not None else choose(name, q_BLHK, k_BSHK, mask, bias_BHLS is not None)
    )
    if impl == "splash" and mask.dense_B1LS is not None:
        impl = "xla"  # decoding against a cache: an explicit mask, which splash's static masks cannot take
    if impl == "einsum":
        return einsum(q_BLHK, k_BSHK, v_BSHK, mask, scale, bias_BHLS, probs_dropout)
    if impl == "splash":
        if bias_BHLS is not None:
            raise InputError(
                "model.attention='splash' cannot add T5's relative position bias; use 'xla' (or 'auto')"
            )
        return splash(q_BLHK, k_BSHK, v_BSHK, mask, scale)
    L, S = q_BLHK.shape[1], k_BSHK.shape[1]
    dense_B1LS = Mask(mask.q_ids_BL, mask.kv_ids_BS, mask.dense_B1LS).dense(L, S)
    return jax.nn.dot_product_attention(
        q_BLHK,
        k_BSHK,
        v_BSHK,
        bias=None if bias_BHLS is None else bias_BHLS.astype(q_BLHK.dtype),
        mask=dense_B1LS,
        is_causal=mask.causal,
        scale=scale,
        implementation=impl,
    )


def einsum(q_BLHK, k_BSHK, v_BSHK, mask: Mask, scale: float, bias_BHLS=None, probs_dropout=None):
    """Attention written out; with grouped-query attention each key/value head serves its group."""
    H, G = q_BLHK.shape[2], k_BSHK.shape[2]
    if q_BLHK.shape[1] == 1 and bias_BHLS is None and probs_dropout is None:
        return _one_query(q_BLHK, k_BSHK, v_BSHK, mask.dense(1, k_BSHK.shape[1]), scale)
    if G != H:
        k_BSHK, v_BSHK = jnp.repeat(k_BSHK, H // G, axis=2), jnp.repeat(v_BSHK, H // G, axis=2)
    logits_BHLS = jnp.einsum("BLHK,BSHK->BHLS", q_BLHK, k_BSHK).astype(jnp.float32) * scale
    if bias_BHLS is not None:
        logits_BHLS = logits_BHLS + bias_BHLS
    keep_B1LS = mask.dense(*logits_BHLS.shape[-2:])
    if keep_B1LS is not None:
        logits_BHLS = jnp.where(keep_B1LS, logits_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(q_BLHK.dtype)
    if probs_dropout is not None:
        probs_BHLS = probs_dropout(probs_BHLS)
    return jnp.einsum("BHLS,BSHK->BLHK", probs_BHLS, v_BSHK)


def _one_query(q_B1HK, k_BSGK, v_BSGK, keep_B1LS, scale: float) -> jax.Array:
    """A decoding step's single query as broadcast products and sums: XLA:CPU reads the cache where it lies
    (as dots it transposes the whole cache every step), 1.3-1.9x faster steps at 32 rows. Grouped-query
    attention: one pass per query head of each group (R = H / G)."""
    B, _, H, K = q_B1HK.shape
    G = k_BSGK.shape[2]
    q_B1GRK = q_B1HK.reshape(B, 1, G, H // G, K)
    outs = []
    for r in range(H // G):
        logits_BSG = jnp.sum(q_B1GRK[:, :, :, r] * k_BSGK, axis=-1).astype(jnp.float32) * scale
        if keep_B1LS is not None:
            logits_BSG = jnp.where(keep_B1LS[:, 0, 0, :, None], logits_BSG, jnp.finfo(jnp.float32).min)
        probs_BSG = jax.nn.softmax(logits_BSG, axis=1).astype(q_B1HK.dtype)
        outs.append(jnp.sum(probs_BSG[..., None] * v_BSGK, axis=1))
    return jnp.stack(outs, axis=2).reshape(B, 1, H, K)


def splash(q_BLHK, k_BSHK, v_BSHK, mask: Mask, scale: float, *, interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU; `interpret` runs the kernel's program on any backend, for tests):
    causal and document masks, grouped-query attention as one MQA kernel per key/value head."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    L, K, S = q_BLHK.shape[1], q_BLHK.shape[3], k_BSHK.shape[1]
    if L % SPLASH_BLOCK or S % SPLASH_BLOCK:
        raise InputError(
            f"model.attention='splash' needs sequence lengths that are multiples of {SPLASH_BLOCK}, "
            f"not {L} x {S}; change data.seq_len or use 'auto'"
        )
    ids_BL = None if mask.q_ids_BL is None else mask.q_ids_BL.astype(jnp.int32)
    ids_BS = None if mask.kv_ids_BS is None else mask.kv_ids_BS.astype(jnp.int32)

    def local(q_BLHK, k_BSHK, v_BSHK, ids_BL, ids_BS):  # one device's rows and heads
        B, H, G = q_BLHK.shape[0], q_BLHK.shape[2], k_BSHK.shape[2]
        kernel = _splash_kernel(L, S, H // G, mask.causal, interpret)
        q_BGQLK = (q_BLHK * scale).transpose(0, 2, 1, 3).reshape(B, G, H // G, L, K)
        k_BGSK, v_BGSK = k_BSHK.transpose(0, 2, 1, 3), v_BSHK.transpose(0, 2, 1, 3)
        ids = None if ids_BL is None else SegmentIds(q=ids_BL, kv=ids_BS)
        per_group = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over key/value heads
        out_BGQLK = jax.vmap(per_group, in_axes=(0, 0, 0, None if ids is None else 0))(
            q_BGQLK, k_BGSK, v_BGSK, ids
        )
        return out_BGQLK.reshape(B, H, L, K).transpose(0, 2, 1, 3).astype(q_BLHK.dtype)

    heads, rows = ("batch", "length", "act_heads", "kv"), ("batch", "length")
    return sharding.per_shard(
        local, (q_BLHK, k_BSHK, v_BSHK, ids_BL, ids_BS), (heads, heads, heads, rows, rows), heads
    )


def _splash_kernel(L: int, S: int, heads: int, causal: bool, interpret: bool):
    """An MQA splash kernel for `heads` query heads over one key/value head (its mask tables are built
    while tracing, once per compilation)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    block = dict(block_q=SPLASH_BLOCK, block_kv=SPLASH_BLOCK, block_kv_compute=SPLASH_BLOCK)
    block_sizes = sa.BlockSizes(
        **block,
        block_q_dkv=SPLASH_BLOCK,
        block_kv_dkv=SPLASH_BLOCK,
        block_kv_dkv_compute=SPLASH_BLOCK,
        block_q_dq=SPLASH_BLOCK,
        block_kv_dq=SPLASH_BLOCK,
    )
    one = sa.CausalMask((L, S)) if causal else sa.FullMask((L, S))
    return sa.make_splash_mqa(
        sa.MultiHeadMask([one] * heads),
        block_sizes=block_sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
