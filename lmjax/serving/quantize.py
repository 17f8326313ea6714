"""Weight-only int8 (serve.quantize=int8): every matrix a matmul reads is stored as int8 with one float32
scale per output channel (max |w| / 127 over the contracted axes) and multiplied back inside the compiled
prefill / decode step where the model reads it, right before its matmul (`Int8Weight`). (XLA:CPU still keeps
all the multiplied-back matrices of a step alive at once: benchmarks/RESULTS.md, "Deployment".) Norms, biases
and position tables stay as trained.

Works on pure parameter dicts (nnx.State.to_pure_dict) and on the flat {name: array} form of exports, so
exported.py can dequantise without lmjax's model code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# parameter name -> the axes a matmul contracts (of the per-layer array; a scanned stack adds a leading axis)
CONTRACTED = {
    "query_DHK": (0,),
    "key_DHK": (0,),
    "value_DHK": (0,),
    "out_HKD": (0, 1),
    "kernel": (0,),  # Dense: kernel[in, out]
    "head_DV": (0,),
    "embed_VD": (1,),  # one scale per vocabulary row: the token lookup and the tied output head
}
QUANTIZED, SCALE = "int8", "scale"


def _axes(name: str, ndim: int) -> tuple[int, ...] | None:
    axes = CONTRACTED.get(name)
    if axes is None:
        return None
    per_layer = 2 if name == "kernel" else len(name.rsplit("_", 1)[1])
    return tuple(a + ndim - per_layer for a in axes)  # a scanned stack's leading layers axis


def quantize(params: dict) -> dict:
    """A pure parameter dict with each matmul weight w replaced by {'int8': q, 'scale': s}, w ~ q * s."""
    out = {}
    for key, value in params.items():
        axes = None if isinstance(value, dict) else _axes(str(key), np.ndim(value))
        if isinstance(value, dict):
            out[key] = quantize(value)
        elif axes is None:
            out[key] = value
        else:
            w = np.asarray(value, np.float32)
            scale = np.maximum(np.abs(w).max(axis=axes, keepdims=True), 1e-12) / 127.0
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            out[key] = {QUANTIZED: q, SCALE: scale.astype(np.float32)}
    return out


def dequantize(params: dict) -> dict:
    """quantize's inverse: the float weights int8 serving computes with."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and set(value) == {QUANTIZED, SCALE}:
            out[key] = value[QUANTIZED].astype(jnp.float32) * value[SCALE]
        else:
            out[key] = dequantize(value) if isinstance(value, dict) else value
    return out


@jax.tree_util.register_pytree_node_class
class Int8Weight:
    """A quantised matrix as the model reads it: `var[...].astype(dtype)` (how layers read weights) gives
    q * scale in that dtype; anything else that takes an array (jnp.take of embeddings, `.T` of a tied head)
    gets the float32 matrix through __jax_array__."""

    def __init__(self, q: jax.Array, scale: jax.Array):
        self.q, self.scale = q, scale

    def tree_flatten(self):
        return (self.q, self.scale), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    shape = property(lambda self: self.q.shape)
    ndim = property(lambda self: self.q.ndim)
    dtype = jnp.dtype(jnp.float32)

    def __getitem__(self, key):
        if key is not Ellipsis:
            raise TypeError("an int8 weight is read whole: var[...]")
        return self

    def astype(self, dtype) -> jax.Array:
        return self.q.astype(dtype) * self.scale.astype(dtype)

    def __jax_array__(self) -> jax.Array:
        return self.astype(jnp.float32)

    @property
    def T(self) -> jax.Array:
        return self.astype(jnp.float32).T


def at_use(params: dict) -> dict:
    """A quantised pure parameter dict for nnx.merge, each int8 matrix as an Int8Weight (multiplied back where
    the model reads it; unquantised dicts pass through)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and set(value) == {QUANTIZED, SCALE}:
            out[key] = Int8Weight(value[QUANTIZED], value[SCALE])
        else:
            out[key] = at_use(value) if isinstance(value, dict) else value
    return out


def nbytes(params) -> int:
    """Bytes of all arrays in a parameter tree (int8 weights with their scales, the rest as stored)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


def rounded(state):
    """An nnx.State of parameters with each matmul weight replaced by its int8 value times its scale: the
    numbers int8 serving computes with (mode=eval scores them with serve.quantize=int8)."""
    from flax import nnx

    state = jax.tree.map(lambda x: x, state)  # a copy
    nnx.replace_by_pure_dict(state, jax.device_get(dequantize(quantize(state.to_pure_dict()))))
    return state
