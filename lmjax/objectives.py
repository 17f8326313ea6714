"""Losses as pure functions of (logits, batch) -> (loss_sum, stats).

Objectives return *sums* (of loss, weight, correct predictions) so that gradient accumulation and
multi-batch evaluation divide once by the total weight: the result equals one big batch.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

Stats = dict[str, jax.Array]


def causal_lm(logits_BLV: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, Stats]:
    """Next-token cross-entropy; `batch['weights']` masks padding out of loss and accuracy."""
    targets_BL, weights_BL = batch["targets"], batch["weights"]
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL)
    correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    loss_sum = jnp.sum(ce_BL * weights_BL)
    return loss_sum, {"loss_sum": loss_sum, "weight": jnp.sum(weights_BL), "correct": jnp.sum(correct_BL * weights_BL)}


def summarize(stats: Stats) -> dict[str, jax.Array]:
    """Sums -> mean loss, perplexity and token accuracy."""
    n = jnp.maximum(stats["weight"], 1.0)
    loss = stats["loss_sum"] / n
    return {"loss": loss, "perplexity": jnp.exp(loss), "accuracy": stats["correct"] / n}


REGISTRY: dict[str, Callable[..., tuple[jax.Array, Stats]]] = {"causal_lm": causal_lm}


def get(name: str):
    if name not in REGISTRY:
        raise ValueError(f"train.objective={name!r} is unknown; use one of {sorted(REGISTRY)}")
    return REGISTRY[name]
