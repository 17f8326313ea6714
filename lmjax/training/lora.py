"""LoRA (Hu et al. 2021) for fine-tuning: each backbone matrix W that optim.lora_targets names trains as
W + (lora_alpha / lora_rank) * A @ B, A [in, r] random and B [r, out] zero (so training starts at the base
model); the rest of the backbone is frozen, with no optimizer state.

The adapters are parameters of the fine-tuned model (under lora/, checkpointed and resumed with it);
`merge` folds them into the backbone's weights, which is what the step runs, what evaluation scores and
what sampling, `hf.save` and export read (`pretrained.load` of a fine-tuning workdir). A matrix's
input axes are its first (kernel_DF, query_DHK, embed_VD), or all but its last for the attention output
(out_HKD), as in the layer that multiplies by it.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.training import optim

PREFIX = "lora"


def enabled(optim_config: ConfigDict) -> bool:
    return optim_config.get("lora_rank", 0) > 0


def scale(optim_config: ConfigDict) -> float:
    return (optim_config.lora_alpha or optim_config.lora_rank) / optim_config.lora_rank


def in_size(name: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1]) if name.endswith("_HKD") else shape[0]


def key(path: str) -> str:
    """An adapter's name for the backbone parameter at `path` ('blocks/0/attn/query_DHK' ->
    'blocks.0.attn.query_DHK')."""
    return path.replace("/", ".")


def targets(optim_config: ConfigDict, backbone: nnx.Module) -> dict[str, tuple[int, ...]]:
    """{path: shape} of the backbone matrices whose path matches one of optim.lora_targets (comma-separated
    regular expressions, searched anywhere in paths like 'blocks/0/attn/query_DHK')."""
    patterns = [p.strip() for p in optim_config.lora_targets.split(",") if p.strip()]
    found = {}
    for path, var in nnx.state(backbone, nnx.Param).flat_state():
        name = optim.path_str(path)
        if var.value.ndim >= 2 and any(re.search(p, name) for p in patterns):
            found[name] = tuple(var.value.shape)
    if not found:
        raise InputError(
            f"optim.lora_targets={optim_config.lora_targets!r} matches no matrix of this backbone; use "
            "regular expressions over paths like 'blocks/0/attn/query_DHK' or 'mlp/up/kernel'"
        )
    return found


class Adapters(nnx.Module):
    """A [in, r] and B [r, out] for every target, keyed by `key(path)`."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], rank: int, *, rngs: nnx.Rngs):
        self.a, self.b = nnx.Dict(), nnx.Dict()
        for path, shape in shapes.items():
            d_in = in_size(path.rsplit("/", 1)[-1], shape)
            a = nnx.initializers.normal(d_in**-0.5)(rngs.params(), (d_in, rank), jnp.float32)
            self.a[key(path)] = nnx.Param(a, axes=(None, None))
            self.b[key(path)] = nnx.Param(jnp.zeros((rank, math.prod(shape) // d_in)), axes=(None, None))


def attach(model: nnx.Module, optim_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """`model` (a TaskModel) with adapters for optim.lora_targets under model.lora."""
    model.lora = Adapters(targets(optim_config, model.backbone), optim_config.lora_rank, rngs=rngs)
    return model


def merge(params: nnx.State, optim_config: ConfigDict) -> nnx.State:
    """The parameters with W + scale * A @ B in place of every adapted backbone matrix W (the adapters
    stay, unused by the model's forward); `params` itself when LoRA is off."""
    if not enabled(optim_config) or PREFIX not in params:
        return params
    s, adapters = scale(optim_config), params[PREFIX]
    a, b = adapters["a"], adapters["b"]

    def merged(path, x):
        name = optim.path_str(path)
        k = key(name.removeprefix("backbone/"))
        if not name.startswith("backbone/") or k not in a:
            return x
        w = x.value if isinstance(x, nnx.Variable) else x
        delta = (a[k][...] @ b[k][...]).reshape(w.shape) * s
        w = w + delta.astype(w.dtype)
        return x.replace(w) if isinstance(x, nnx.Variable) else w

    return jax.tree_util.tree_map_with_path(merged, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
