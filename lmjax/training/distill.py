"""Distillation: a frozen teacher (train.teacher) in the student's jitted step.

  loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the objective's loss

token-weighted like the objective's loss (Hinton et al. 2015; T^2 keeps the soft term's gradients on the scale
of the hard one's as T grows). alpha and T follow linear schedules to train.distill_alpha_end and
train.distill_temperature_end (-1: constant). mode=train distils the next-token (or masked-token) logits;
mode=finetune the task head's logits, from a teacher fine-tuned on the same task (lmjax/training/finetune.py).
The teacher's parameters are an argument of the step, sharded like the student's, never a compiled-in
constant.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from lmjax.data import tokenizers
from lmjax.errors import InputError

OBJECTIVES = ("causal_lm", "mlm", "span_corruption")  # their outputs['logits'] align with batch['weights']
LOGITS = ("logits", "start_logits", "end_logits")  # the outputs a teacher's distribution is read from


def enabled(config: ConfigDict) -> bool:
    return bool(config.train.teacher)


def schedules(train_config: ConfigDict) -> tuple[optax.Schedule, optax.Schedule]:
    """(alpha(step), temperature(step)): linear from the start value to the end value over train.num_steps."""

    def linear(start: float, end: float) -> optax.Schedule:
        if end < 0:
            return optax.constant_schedule(start)
        return optax.linear_schedule(start, end, max(train_config.num_steps, 1))

    return (
        linear(train_config.distill_alpha, train_config.distill_alpha_end),
        linear(train_config.distill_temperature, train_config.distill_temperature_end),
    )


def kl_sum(student: jax.Array, teacher: jax.Array, weights: jax.Array, temperature: jax.Array) -> jax.Array:
    """sum over positions of weights * KL(softmax(teacher / T) || softmax(student / T)) over the last axis."""
    log_t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    log_s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(weights * jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1))


def soft_sum(student_outputs: dict, teacher_outputs: dict, weights: jax.Array, temperature: jax.Array):
    """kl_sum over every logits output both models give (span QA: start and end)."""
    keys = [k for k in LOGITS if k in student_outputs and k in teacher_outputs]
    return sum(
        kl_sum(student_outputs[k], jax.lax.stop_gradient(teacher_outputs[k]), weights, temperature)
        for k in keys
    )


def blend(loss_sum, stats: dict, soft: jax.Array, alpha: jax.Array, temperature: jax.Array):
    """(alpha T^2 soft + (1 - alpha) hard, stats): the loss trained on, its hard part (hard_sum) and the KL
    (distill_sum), summable like the objective's stats."""
    total = alpha * temperature**2 * soft + (1 - alpha) * loss_sum
    return total, stats | {"loss_sum": total, "hard_sum": loss_sum, "distill_sum": soft}


def make_loss_fn(graphdef: nnx.GraphDef, teacher_graphdef: nnx.GraphDef, loss: Callable, train_config):
    """loss_fn(params, batch, key, (teacher params, step)) for lmjax.training.pretrain.make_train_step."""
    alpha_fn, temperature_fn = schedules(train_config)

    def loss_fn(params, batch, key, teacher):
        teacher_params, step = teacher
        outputs = nnx.merge(graphdef, params).forward(batch, deterministic=False, rngs=nnx.Rngs(dropout=key))
        teacher_outputs = nnx.merge(teacher_graphdef, teacher_params).forward(batch, deterministic=True)
        loss_sum, stats = loss(outputs, batch)
        temperature = temperature_fn(step)
        soft = soft_sum(outputs, teacher_outputs, batch["weights"], temperature)
        return blend(loss_sum, stats, soft, alpha_fn(step), temperature)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# The teacher


@dataclasses.dataclass
class Teacher:
    graphdef: nnx.GraphDef
    params: nnx.State  # placed on the student's mesh
    shardings: Any
    forward_seconds: float = 0.0  # one batch's forward pass (`report`)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))

    @property
    def bytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self.params))


def check(config: ConfigDict) -> None:
    if config.mesh.engine != "jit":
        raise InputError("distillation (train.teacher) runs under jit only; set mesh.engine='jit'")
    if config.mode == "train" and config.train.objective not in OBJECTIVES:
        raise InputError(
            f"train.teacher distils token logits, which train.objective={config.train.objective!r} has not; "
            f"use one of {', '.join(OBJECTIVES)}"
        )


def check_tokenizer(teacher: tokenizers.Tokenizer, student: tokenizers.Tokenizer, name: str) -> None:
    if not tokenizers.same(teacher, student):
        raise InputError(
            f"train.teacher={name!r} has another vocabulary ({teacher.kind}, {teacher.vocab_size} tokens) "
            f"than the student ({student.kind}, {student.vocab_size} tokens); teacher and student must share "
            "one tokenizer"
        )


def report(
    teacher: Teacher, abstract_state: Any, batch: Any, forward: Callable = lambda model, b: model(b)
) -> str:
    """The teacher's size and share of the memory the run holds (its parameters against the student's
    parameters and optimizer state), and the time of its forward pass (`forward(model, batch)`: the logits it
    distils) on one batch (the median of 3 after compiling), which the training log divides by the step's
    time (train/teacher_time_share)."""
    graphdef = teacher.graphdef
    jitted = jax.jit(lambda params, b: forward(nnx.merge(graphdef, params), b))
    jax.block_until_ready(jitted(teacher.params, batch))
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(jitted(teacher.params, batch))
        seconds.append(time.perf_counter() - start)
    teacher.forward_seconds = float(np.median(seconds))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
    share = teacher.bytes / (teacher.bytes + state_bytes)
    return (
        f"teacher: {teacher.num_params:,} parameters, {teacher.bytes / 2**20:.1f} MiB ({share:.0%} of the "
        f"parameters and optimizer state held), forward {teacher.forward_seconds * 1e3:.1f} ms a batch"
    )
