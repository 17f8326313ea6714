"""Losses as pure functions of (outputs, batch) -> (loss_sum, stats); lmjax.training.objectives pairs each
with its data.

Objectives return *sums* (of loss, weight, correct predictions) so that gradient accumulation and
multi-batch evaluation divide once by the total weight: the result equals one big batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Stats = dict[str, jax.Array]


def token_cross_entropy(
    logits_BLV: jax.Array, batch: dict[str, jax.Array], label_smoothing: float = 0.0
) -> tuple[jax.Array, Stats]:
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
    return loss_sum, {
        "loss_sum": loss_sum,
        "nll_sum": jnp.sum(nll_BL * weights_BL),
        "weight": jnp.sum(weights_BL),
        "correct": jnp.sum(correct_BL * weights_BL),
    }


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
        stats |= {
            "loss_sum": loss_sum,
            "nsp_loss_sum": jnp.sum(nsp_B),
            "nsp_correct": jnp.sum(correct_B),
            "nsp_count": jnp.asarray(nsp_B.shape[0], jnp.float32),
        }
    return loss_sum, stats


def bidirectional_lm(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """ELMo's biLM: the forward LM's cross-entropy on batch['targets'] (next tokens) plus the backward LM's on
    batch['prev_targets'] (previous tokens); loss and perplexity are over the predictions of both
    directions."""
    fwd_sum, fwd = token_cross_entropy(outputs["logits"], batch, label_smoothing)
    bwd_sum, bwd = token_cross_entropy(
        outputs["backward_logits"],
        {"targets": batch["prev_targets"], "weights": batch["prev_weights"]},
        label_smoothing,
    )
    stats = jax.tree.map(jnp.add, fwd, bwd) | {
        "forward_nll_sum": fwd["nll_sum"],
        "forward_weight": fwd["weight"],
    }
    return fwd_sum + bwd_sum, stats


def negative_sampling(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """word2vec: -log sigma(s_pos) - sum_k log sigma(-s_neg_k) per example; accuracy: the true word outscores
    every noise word."""
    del label_smoothing
    w_B = batch["weights"]
    loss_B = -(jax.nn.log_sigmoid(outputs["pos_B"]) + jax.nn.log_sigmoid(-outputs["neg_BK"]).sum(-1))
    correct_B = (outputs["pos_B"] > outputs["neg_BK"].max(-1)).astype(jnp.float32)
    loss_sum = jnp.sum(loss_B * w_B)
    return loss_sum, {"loss_sum": loss_sum, "weight": jnp.sum(w_B), "correct": jnp.sum(correct_B * w_B)}


def glove(
    outputs: dict, batch: dict, label_smoothing: float = 0.0, x_max: float = 100.0, alpha: float = 0.75
) -> tuple[jax.Array, Stats]:
    """GloVe's weighted least squares f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2 with f(x) = min(1, (x /
    x_max)^alpha), halved as glove.c does."""
    del label_smoothing
    x_B, w_B = batch["counts"], batch["weights"]
    f_B = jnp.minimum(1.0, (x_B / x_max) ** alpha)
    err_B = outputs["prediction_B"] - jnp.log(jnp.maximum(x_B, 1e-30))
    loss_sum = 0.5 * jnp.sum(w_B * f_B * jnp.square(err_B))
    return loss_sum, {"loss_sum": loss_sum, "weight": jnp.sum(w_B)}


def info_nce(
    outputs: dict, batch: dict, label_smoothing: float = 0.0, temperature: float = 0.05
) -> tuple[jax.Array, Stats]:
    """InfoNCE with in-batch negatives (SimCSE): view a_i must pick its own b_i among all b_j by cosine /
    temperature.
    outputs['embeddings'] is [2, B, D]; rows with weight 0 (padding) are neither anchors nor candidates."""
    a_BD, b_BD = outputs["embeddings"].astype(jnp.float32)
    w_B = batch["weights"]
    a_BD = a_BD / jnp.maximum(jnp.linalg.norm(a_BD, axis=-1, keepdims=True), 1e-8)
    b_BD = b_BD / jnp.maximum(jnp.linalg.norm(b_BD, axis=-1, keepdims=True), 1e-8)
    sim_BB = jnp.where(w_B[None, :] > 0, a_BD @ b_BD.T / temperature, -1e9)
    labels_B = jnp.arange(sim_BB.shape[0])
    if label_smoothing:
        loss_B = optax.softmax_cross_entropy(
            sim_BB, optax.smooth_labels(jax.nn.one_hot(labels_B, len(labels_B)), label_smoothing)
        )
    else:
        loss_B = optax.softmax_cross_entropy_with_integer_labels(sim_BB, labels_B)
    correct_B = (jnp.argmax(sim_BB, -1) == labels_B).astype(jnp.float32)
    loss_sum = jnp.sum(loss_B * w_B)
    return loss_sum, {"loss_sum": loss_sum, "weight": jnp.sum(w_B), "correct": jnp.sum(correct_B * w_B)}


# ----------------------------------------------------------------------------------------------
# Task losses (fine-tuning). batch['weights'] is 0 for padding rows (and tokens), so a padded final
# evaluation batch scores exactly the real examples.


def classification(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """Sequence (logits_BK, labels_B) or token (logits_BLK, labels_BL) classification; the confusion matrix
    (rows: true label, columns: prediction) gives macro-F1."""
    logits, weights = outputs["logits"], batch["weights"]
    loss_sum, stats = token_cross_entropy(
        logits, {"targets": batch["labels"], "weights": weights}, label_smoothing
    )
    K = logits.shape[-1]
    true_NK = jax.nn.one_hot(batch["labels"], K).reshape(-1, K) * weights.reshape(-1, 1)
    pred_NK = jax.nn.one_hot(jnp.argmax(logits, -1), K).reshape(-1, K)
    return loss_sum, stats | {"confusion": true_NK.T @ pred_NK}


def regression(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """Squared error of scores_B against the labels_B (numbers): the summary's loss is the MSE."""
    del label_smoothing
    w_B = batch["weights"]
    loss_sum = jnp.sum(w_B * jnp.square(outputs["scores"] - batch["labels"]))
    return loss_sum, {"loss_sum": loss_sum, "weight": jnp.sum(w_B)}


def best_span(start_BL: jax.Array, end_BL: jax.Array, max_answer: int = 30) -> tuple[jax.Array, jax.Array]:
    """The (start, end) maximising start + end logits with start <= end < start + max_answer."""
    L = start_BL.shape[-1]
    offset_LL = jnp.arange(L)[None, :] - jnp.arange(L)[:, None]
    score_BLL = (
        start_BL[:, :, None]
        + end_BL[:, None, :]
        + jnp.where((offset_LL >= 0) & (offset_LL < max_answer), 0.0, -1e18)
    )
    flat_B = jnp.argmax(score_BLL.reshape(score_BLL.shape[0], -1), axis=-1)
    return flat_B // L, flat_B % L


def span_qa(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """Extractive QA: mean of the start and end cross-entropies; exact match and token-overlap F1 of the best
    span."""
    del label_smoothing
    w_B = batch["weights"]
    nll_B = 0.5 * (
        optax.softmax_cross_entropy_with_integer_labels(outputs["start_logits"], batch["start"])
        + optax.softmax_cross_entropy_with_integer_labels(outputs["end_logits"], batch["end"])
    )
    s_B, e_B = best_span(outputs["start_logits"], outputs["end_logits"])
    overlap_B = jnp.maximum(jnp.minimum(e_B, batch["end"]) - jnp.maximum(s_B, batch["start"]) + 1, 0)
    precision_B, recall_B = overlap_B / (e_B - s_B + 1), overlap_B / (batch["end"] - batch["start"] + 1)
    f1_B = jnp.where(
        overlap_B > 0, 2 * precision_B * recall_B / jnp.maximum(precision_B + recall_B, 1e-9), 0.0
    )
    exact_B = ((s_B == batch["start"]) & (e_B == batch["end"])).astype(jnp.float32)
    loss_sum = jnp.sum(nll_B * w_B)
    return loss_sum, {
        "loss_sum": loss_sum,
        "nll_sum": loss_sum,
        "weight": jnp.sum(w_B),
        "correct": jnp.sum(exact_B * w_B),
        "f1_sum": jnp.sum(f1_B * w_B),
    }


def text_to_text(outputs: dict, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, Stats]:
    """Seq2seq cross-entropy, plus exact match of the whole target (teacher-forced argmax = greedy
    decoding)."""
    loss_sum, stats = token_cross_entropy(outputs["logits"], batch, label_smoothing)
    right_BL = (jnp.argmax(outputs["logits"], -1) == batch["targets"]) | (batch["weights"] == 0)
    real_B = (jnp.sum(batch["weights"], -1) > 0).astype(jnp.float32)
    return loss_sum, stats | {
        "exact_sum": jnp.sum(jnp.all(right_BL, -1) * real_B),
        "examples": jnp.sum(real_B),
    }


TASK_LOSSES = {
    "classification": classification,
    "regression": regression,
    "token_classification": classification,
    "span_qa": span_qa,
    "text_to_text": text_to_text,
    "language_model": text_to_text,  # next-token targets, weights on the answer's tokens
}


def macro_f1(confusion_KK: jax.Array) -> jax.Array:
    """Mean F1 over the classes that occur as a label or a prediction."""
    tp_K = jnp.diag(confusion_KK)
    denom_K = confusion_KK.sum(0) + confusion_KK.sum(1)  # 2tp + fp + fn
    present_K = denom_K > 0
    return jnp.sum(jnp.where(present_K, 2 * tp_K / jnp.maximum(denom_K, 1e-9), 0.0)) / jnp.maximum(
        present_K.sum(), 1
    )


def summarize(stats: Stats) -> dict[str, jax.Array]:
    """Sums -> mean loss, perplexity and accuracy, plus what the objective adds: NSP loss/accuracy,
    macro-F1 (classification), exact match and F1 (span QA), exact match (text-to-text)."""
    n = jnp.maximum(stats["weight"], 1.0)
    out = {"loss": stats["loss_sum"] / n}
    if "nll_sum" in stats:
        out["perplexity"] = jnp.exp(stats["nll_sum"] / n)
    if "forward_nll_sum" in stats:
        out["forward_perplexity"] = jnp.exp(
            stats["forward_nll_sum"] / jnp.maximum(stats["forward_weight"], 1.0)
        )
    if "correct" in stats:
        out["accuracy"] = stats["correct"] / n
    if "nsp_count" in stats:
        m = jnp.maximum(stats["nsp_count"], 1.0)
        out |= {"nsp_loss": stats["nsp_loss_sum"] / m, "nsp_accuracy": stats["nsp_correct"] / m}
    if "distill_sum" in stats:  # lmjax/training/distill.py: the loss is alpha T^2 KL + (1 - alpha) hard
        out |= {"distill_kl": stats["distill_sum"] / n, "hard_loss": stats["hard_sum"] / n}
    if "confusion" in stats:
        out["macro_f1"] = macro_f1(stats["confusion"])
    if "f1_sum" in stats:
        out |= {"exact_match": out.pop("accuracy"), "f1": stats["f1_sum"] / n}
        del out["perplexity"]
    if "exact_sum" in stats:
        out["exact_match"] = stats["exact_sum"] / jnp.maximum(stats["examples"], 1.0)
    return out
