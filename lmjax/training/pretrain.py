"""Pretraining: the pure train step, the engine that compiles it with the eval step, and its evaluation."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, metrics, models, parallel, sharding
from lmjax.data import corpora, pipeline, tokenizers
from lmjax.errors import InputError
from lmjax.training import distill, evaluator, loop, losses, objectives, optim, prepare, sparse


def make_loss_fn(graphdef: nnx.GraphDef, loss: Callable) -> Callable:
    """loss_fn(params, batch, dropout key) -> (loss_sum, stats) of the model's forward(batch)."""

    def loss_fn(params, batch, key):
        outputs = nnx.merge(graphdef, params).forward(batch, deterministic=False, rngs=nnx.Rngs(dropout=key))
        return loss(outputs, batch)

    return loss_fn


def make_train_step(
    loss_fn: Callable, tx: optax.GradientTransformation, accum_steps: int, axis_name: str | None = None
) -> Callable:
    """The pure step. Under pmap (`axis_name`), each device's summed gradients and statistics are summed over
    devices before the one division by the token count, so the update equals the jit step's. `extra`
    arguments of the step go to every call of the loss (a distillation teacher)."""
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def train_step(state: loop.TrainState, batch: dict, *extra) -> tuple[loop.TrainState, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        if accum_steps == 1:
            grads, stats = grad_fn(state.params, batch, key, *extra)
        else:  # microbatch i takes rows i, i + A, ...: each device keeps its own rows
            micro = jax.tree.map(lambda x: x.reshape(-1, accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

            def accumulate(carry, xs):
                i, mb = xs
                g, s = grad_fn(state.params, mb, jax.random.fold_in(key, i), *extra)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, key, *extra))
            (grads, stats), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro))
        if axis_name is not None:
            grads, stats = jax.lax.psum((grads, stats), axis_name)
        # The loss is the token-weighted mean over the whole batch: divide the summed gradient once.
        grads = jax.tree.map(lambda g: g / jnp.maximum(stats["weight"], 1.0), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = losses.summarize(stats) | {"grad_norm": optax.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    return train_step


def setup(config: ConfigDict, devices=None, teacher: distill.Teacher | None = None) -> loop.Engine:
    """Builds the mesh and compiles nothing yet; parameters are created directly sharded by `init`. With a
    teacher (pretrained.load_teacher, on the same devices' mesh) the train step distils from it."""
    if config.mesh.engine == "pmap":
        parallel.check_pmap(config.mesh)
    layout = parallel.make_layout(config.mesh, devices)
    accum = config.optim.grad_accum_steps
    prepare.check_divisible("data.batch_size", config.data.batch_size, layout, accum, "accumulation steps")
    updates = config.optim.updates_per_step
    prepare.check_divisible(
        "data.batch_size", config.data.batch_size, layout, updates, "optim.updates_per_step"
    )
    tx = optim.make(config.optim, config.train.num_steps, config.model)
    objective = objectives.get(config.train.objective)
    per_update = config.data.batch_size // (layout.batch_shards * updates)
    share = config.model.share_negatives
    if config.model.family == "word2vec" and (share < 1 or per_update % share):
        raise InputError(
            f"model.share_negatives={share} must divide an update's {per_update} examples per batch shard "
            f"(data.batch_size / optim.updates_per_step / batch shards); use 1 or a divisor of {per_update}"
        )
    batch_sharding = sharding.batch_sharding(layout)

    def compile_steps(graphdef, abstract_state, shardings) -> dict:
        loss = objective.make_loss(config.train)
        if teacher is not None:  # loss_fn(params, batch, key, (teacher params, step))
            loss_fn = distill.make_loss_fn(graphdef, teacher.graphdef, loss, config.train)
        else:
            loss_fn = make_loss_fn(graphdef, loss)
        if objective.word_vectors:  # updates only the rows a batch looks up
            step = sparse.make_train_step(graphdef, loss, config.optim, config.train.num_steps)
        else:
            step = make_train_step(loss_fn, tx, accum)
        if config.mesh.engine == "pmap":
            step = jax.pmap(
                make_train_step(loss_fn, tx, accum, parallel.PMAP_AXIS),
                axis_name=parallel.PMAP_AXIS,
                donate_argnums=0,
            )

            def train_step(state, batch):
                state, out = step(state, batch)
                return state, parallel.unreplicate(out)
        elif teacher is not None:
            jitted = jax.jit(
                layout.traced(lambda state, batch, t: step(state, batch, (t, state.step))),
                donate_argnums=0,
                in_shardings=(shardings, batch_sharding, teacher.shardings),
                out_shardings=(shardings, layout.replicated),
            )

            def train_step(state, batch):  # the teacher's parameters: an argument, not a constant
                return jitted(state, batch, teacher.params)
        else:
            train_step = jax.jit(
                layout.traced(step),
                donate_argnums=0,
                in_shardings=(shardings, batch_sharding),
                out_shardings=(shardings, layout.replicated),
            )
        eval_step = jax.jit(
            layout.traced(evaluator.make_eval_step(graphdef, objective, config.train)),
            in_shardings=(shardings.params, batch_sharding),
            out_shardings=layout.replicated,
        )
        return dict(train_step=train_step, eval_step=eval_step, loss_fn=loss_fn)

    engine = loop.build_engine(
        config, layout, lambda rngs: models.build(config.model, rngs), tx, compile_steps
    )
    engine.teacher = teacher
    return engine


def make_evaluate(
    engine: loop.Engine,
    corpus: corpora.Corpus,
    tok: tokenizers.Tokenizer,
    periodic: Callable[[int, nnx.State, bool], dict] = lambda step, params, final: {},
) -> Callable:
    """The loop's evaluation: evaluator.evaluate on the corpus's validation split, and what the mode hands in
    as `periodic(step, params, final)` (the harness, samples)."""

    def evaluate(step: int, state: loop.TrainState, final: bool) -> dict:
        params = engine.from_engine(state).params
        return evaluator.evaluate(engine, params, corpus, tok) | periodic(step, params, final)

    return evaluate


def abstract_step_inputs(engine: loop.Engine) -> tuple[Any, dict]:
    """(state, batch) of the train step as sharded ShapeDtypeStructs: what lowering it without data or
    devices' memory takes (tpu_scripts/aot_check.py, benchmarks/compile_time.py)."""
    config = engine.config
    batch_sharding = sharding.batch_sharding(engine.layout)
    shapes = objectives.get(config.train.objective).batch_shapes(config.data, config.data.batch_size)
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for k, (shape, dtype) in shapes.items()
    }
    return checkpoint.abstract_with_shardings(engine.abstract_state, engine.state_shardings), batch


def teacher_report(engine: loop.Engine) -> str:
    """distill.report on a batch of zeros of the step's shapes (the data stream is not touched)."""
    state, batch = abstract_step_inputs(engine)
    zeros = {k: jnp.zeros(v.shape, v.dtype, device=v.sharding) for k, v in batch.items()}
    return distill.report(
        engine.teacher, state, zeros, lambda model, b: model.forward(b, deterministic=True)["logits"]
    )


FLOP_OBJECTIVES = ("causal_lm", "mlm", "span_corruption")  # the ones metrics.train_flops counts


def step_flops(config: ConfigDict) -> float | None:
    """Model FLOPs of one training step (metrics.train_flops x rows), or None where not counted."""
    if config.train.objective not in FLOP_OBJECTIVES:
        return None
    target_len = pipeline.span_lengths(config.data)[1] if config.train.objective == "span_corruption" else 0
    return config.data.batch_size * metrics.train_flops(config.model, config.data.seq_len, target_len)[0]
