"""The optax chain: AdamW with warmup + cosine decay, global-norm clipping and a weight-decay mask."""
from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx
from ml_collections import ConfigDict


def schedule(c: ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to c.learning_rate, then cosine decay to c.min_learning_rate at num_steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
        decay_steps=max(num_steps, c.warmup_steps + 1), end_value=c.min_learning_rate)


def decays(path: tuple, decay_embeddings: bool) -> bool:
    """Weight decay applies to matrices; never to norm scales or biases; to embeddings only if asked."""
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale" or "bias" in name:
        return False
    if "embed" in name:  # token, position, segment tables and T5's relative-bias table
        return decay_embeddings
    return True


def decay_mask(params: Any, decay_embeddings: bool) -> Any:
    def one(path, x):
        return x.replace(decays(path, decay_embeddings)) if isinstance(x, nnx.Variable) else decays(path, decay_embeddings)

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make(c: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip) if c.grad_clip else optax.identity(),
        optax.adamw(schedule(c, num_steps), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                    mask=lambda p: decay_mask(p, c.decay_embeddings)),
    )
