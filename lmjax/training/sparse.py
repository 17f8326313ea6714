"""The word-vector step: SGD or AdaGrad on just the rows a batch looks up.

word2vec and GloVe read a few thousand rows of V-row tables per batch. The generic step
(lmjax.training.pretrain) differentiates whole tables and updates every row; this one differentiates the
looked-up rows (`model.lookups` / `model.score`, lmjax/models/wordvec.py), sums the gradients of repeated rows
and scatter-adds the update into those rows, in place under donation. Rows a batch does not touch get a zero
gradient in the generic step, which leaves them unchanged under SGD and AdaGrad alike, so both steps give the
same parameters (tests/training/test_sparse.py). The optimizer state is optax's own (`optim.make`): AdaGrad's
sum_of_squares rows are updated likewise, the schedule's count advances per update.

optim.updates_per_step = N splits the step's batch into N consecutive parts updated one after another (a
scan inside the one compiled step): the same updates as N steps of the smaller batch, with a fraction of the
dispatch and input-pipeline overhead per update. The learning-rate schedule then counts updates; the step's
grad_norm is its last update's (finding repeated rows for the exact norm costs more than the update).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from lmjax.training import loop, losses, optim


def make_train_step(
    graphdef: nnx.GraphDef, loss: Callable, optim_config: ConfigDict, num_steps: int
) -> Callable:
    """train_step(state, batch) -> (state, metrics) for a word-vector model, as lmjax.training.pretrain's step
    is."""
    updates = optim_config.updates_per_step
    learning_rate = optim.schedule(optim_config, num_steps * updates)
    adagrad = optim_config.name == "adagrad"

    def update(model: nnx.Module, carry, xs):
        tables, sums, count = carry
        last, batch = xs
        ids = model.lookups(batch)
        rows = {name: jnp.take(tables[name], i, axis=0, mode="clip") for name, i in ids.items()}  # ids < V
        grads, stats = jax.grad(lambda r: loss(model.score(r, batch), batch), has_aux=True)(rows)
        scale = 1.0 / jnp.maximum(stats["weight"], 1.0)  # the loss is the mean over the batch's examples
        flat = {}
        for name, ids_N in ids.items():
            ids_N = ids_N.reshape(-1)
            flat[name] = (ids_N, grads[name].reshape(ids_N.size, *tables[name].shape[1:]) * scale)
        lr = learning_rate(count)
        for name, (ids_N, grad_N_) in flat.items():
            if adagrad:  # optax.scale_by_rss on the rows, each repeated row's gradients summed first
                rows_N, grad_N_ = combine(ids_N, grad_N_, tables[name].shape[0])
                acc_N_ = sums[name].at[rows_N].get(mode="fill", fill_value=0.0) + jnp.square(grad_N_)
                sums[name] = sums[name].at[rows_N].set(acc_N_, mode="drop")
                grad_N_ = jnp.where(acc_N_ > 0, jax.lax.rsqrt(acc_N_ + optim_config.eps), 0.0) * grad_N_
                ids_N = rows_N
            # SGD: repeated rows' updates add up in the scatter, as their gradients do in the dense step
            tables[name] = tables[name].at[ids_N].add(-lr * grad_N_, mode="drop")  # id V: padding, dropped
        norm = jax.lax.cond(last, lambda: gradient_norm(flat, tables), lambda: jnp.zeros(()))
        return (tables, sums, count + 1), (stats, norm)

    def train_step(state: loop.TrainState, batch: dict) -> tuple[loop.TrainState, dict]:
        sums_state = optax.tree_utils.tree_get(state.opt_state, "sum_of_squares")
        carry = (
            state.params.to_pure_dict(),
            sums_state.to_pure_dict() if adagrad else {},
            optax.tree_utils.tree_get(state.opt_state, "count"),
        )
        parts = jax.tree.map(lambda x: x.reshape(updates, -1, *x.shape[1:]), batch)
        model = nnx.merge(graphdef, state.params)  # for its lookups and score (the tables are the carry's)
        last = jnp.arange(updates) == updates - 1
        (tables, sums, count), (stats, norms) = jax.lax.scan(
            functools.partial(update, model), carry, (last, parts)
        )
        params = jax.tree.map(lambda x: x, state.params)  # a copy to write into
        nnx.replace_by_pure_dict(params, tables)
        opt_state = optax.tree_utils.tree_set(state.opt_state, count=count)
        if adagrad:
            sums_state = jax.tree.map(lambda x: x, sums_state)
            nnx.replace_by_pure_dict(sums_state, sums)
            opt_state = optax.tree_utils.tree_set(opt_state, sum_of_squares=sums_state)
        summed = jax.tree.map(jnp.sum, stats)
        metrics = losses.summarize(summed) | {"grad_norm": norms[-1]}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def combine(ids_N: jax.Array, grad_N_: jax.Array, V: int) -> tuple[jax.Array, jax.Array]:
    """(distinct rows, each one's summed gradient), padded with row V (out of range: scatters drop it)."""
    rows_N, where_N = jnp.unique(ids_N, return_inverse=True, size=ids_N.size, fill_value=V)
    return rows_N, jax.ops.segment_sum(grad_N_, where_N.reshape(-1), num_segments=ids_N.size)


def gradient_norm(flat: dict[str, tuple[jax.Array, jax.Array]], tables: dict[str, jax.Array]) -> jax.Array:
    """The global norm of the update's gradient (what the dense step reports as grad_norm)."""
    squares = [jnp.sum(jnp.square(combine(i, g, tables[n].shape[0])[1])) for n, (i, g) in flat.items()]
    return jnp.sqrt(sum(squares))
