"""Losses as pure functions of (outputs, batch) -> (loss_sum, stats).

Objectives return *sums* (of loss, weight, correct predictions) so that gradient accumulation and
multi-batch evaluation divide once by the total weight: the result equals one big batch.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

Stats = dict[str, jax.Array]


def token_cross_entropy(logits_BLV: jax.Array, batch: dict[str, jax.Array],
                        label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """Cross-entropy against batch['targets'], weighted by batch['weights'] (0 on padding / unscored tokens).

    With label smoothing the loss trained on is against (1 - s) one-hot + s / V; `nll_sum` stays the plain
    negative log-likelihood (for perplexity).
    """
    logits_BLV = logits_BLV.astype(jnp.float32)
    targets_BL, weights_BL = batch["targets"], batch["weights"]
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
    if label_smoothing:
        labels_BLV = optax.smooth_labels(jax.nn.one_hot(targets_BL, logits_BLV.shape[-1]), label_smoothing)
        loss_BL = optax.softmax_cross_entropy(logits_BLV, labels_BLV)
    else:
        loss_BL = nll_BL
    correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    loss_sum = jnp.sum(loss_BL * weights_BL)
    return loss_sum, {"loss_sum": loss_sum, "nll_sum": jnp.sum(nll_BL * weights_BL), "weight": jnp.sum(weights_BL),
                      "correct": jnp.sum(correct_BL * weights_BL)}


def language_model(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """Causal LM and seq2seq / span corruption: token cross-entropy of outputs['logits']."""
    return token_cross_entropy(outputs["logits"], batch, label_smoothing)


def masked_lm(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """MLM cross-entropy at the selected tokens, plus NSP cross-entropy when the model has an NSP head.

    Each example's NSP loss is weighted by its number of MLM targets, so loss_sum / weight is the
    token-weighted mean of (MLM + NSP) and stays exact under gradient accumulation.
    """
    loss_sum, stats = token_cross_entropy(outputs["logits"], batch, label_smoothing)
    if "nsp_logits" in outputs:
        nsp_B = optax.softmax_cross_entropy_with_integer_labels(outputs["nsp_logits"], batch["nsp_labels"])
        nsp_weight_B = jnp.sum(batch["weights"], axis=-1)
        loss_sum = loss_sum + jnp.sum(nsp_B * nsp_weight_B)
        correct_B = (jnp.argmax(outputs["nsp_logits"], -1) == batch["nsp_labels"]).astype(jnp.float32)
        stats |= {"loss_sum": loss_sum, "nsp_loss_sum": jnp.sum(nsp_B), "nsp_correct": jnp.sum(correct_B),
                  "nsp_count": jnp.asarray(nsp_B.shape[0], jnp.float32)}
    return loss_sum, stats


def summarize(stats: Stats) -> dict[str, jax.Array]:
    """Sums -> mean loss, perplexity and token accuracy (and NSP loss/accuracy when present)."""
    n = jnp.maximum(stats["weight"], 1.0)
    out = {"loss": stats["loss_sum"] / n, "perplexity": jnp.exp(stats["nll_sum"] / n), "accuracy": stats["correct"] / n}
    if "nsp_count" in stats:
        m = jnp.maximum(stats["nsp_count"], 1.0)
        out |= {"nsp_loss": stats["nsp_loss_sum"] / m, "nsp_accuracy": stats["nsp_correct"] / m}
    return out


REGISTRY: dict[str, Callable[..., tuple[jax.Array, Stats]]] = {
    "causal_lm": language_model, "span_corruption": language_model, "mlm": masked_lm}


def get(train_config: ConfigDict) -> Callable[[dict, dict], tuple[jax.Array, Stats]]:
    name = train_config.objective
    if name not in REGISTRY:
        raise ValueError(f"train.objective={name!r} is unknown; use one of {sorted(REGISTRY)}")
    return functools.partial(REGISTRY[name], label_smoothing=train_config.label_smoothing)
