"""Fine-tuning: L_FT = L_task + lambda(step) * L_pretrain + l2sp * ||theta_backbone - theta_pretrained||^2.

One jitted step takes a task batch and a batch of pretraining text (train.objective on the data.* stream:
the backbone's own LM / MLM / span loss), returns every loss and their weighted sum. With lambda = 0 the
pretraining stream is neither read nor computed. The model is a `heads.TaskModel`: the pretrained model
whole under `backbone/` (restored from an lmjax workdir or Hugging Face weights) and a new head under `head/`.
This module holds the step and the engine that compiles it; lmjax/modes/finetune.py runs it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from lmjax import models, parallel, sharding
from lmjax.data import corpora, pipeline, tokenizers
from lmjax.errors import InputError
from lmjax.models import heads
from lmjax.tasks import catalog
from lmjax.tasks import pipeline as task_pipeline
from lmjax.training import distill, evaluator, loop, lora, losses, objectives, optim, prepare

# ---------------------------------------------------------------------------------------------
# The step


def lambda_schedule(config: ConfigDict) -> optax.Schedule:
    f = config.finetune
    steps = f.lambda_steps or config.train.num_steps
    if f.lambda_schedule == "warmup":
        return optax.linear_schedule(0.0, f.pretrain_lambda, steps)
    if f.lambda_schedule == "decay":
        return optax.linear_schedule(f.pretrain_lambda, 0.0, steps)
    return optax.constant_schedule(f.pretrain_lambda)


def make_terms(
    graphdef: nnx.GraphDef,
    task_objective: Callable,
    pretrain_objective: Callable,
    frozen_mask: Any | None,
    merge: Callable = lambda params: params,
    teacher_graphdef: nnx.GraphDef | None = None,
) -> Callable:
    """terms(params, task_batch, pretrain_batch | None, anchor | None, key, teacher | None) -> (mean losses,
    stats) where the losses are 'task', 'pretrain' (with a pretraining batch) and 'l2sp' (with an anchor).
    `merge` folds LoRA adapters into the weights the model runs with. With a teacher (its parameters, alpha,
    temperature) the task loss is distilled from its head's (lmjax/training/distill.py)."""

    def terms(params, task_batch, pretrain_batch, anchor, key, teacher=None):
        if frozen_mask is not None:  # no gradient flows into frozen parameters: XLA drops their backward pass
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen_mask)
        params = merge(params)
        model = nnx.merge(graphdef, params)
        rngs = nnx.Rngs(dropout=key)
        outputs = model(task_batch, deterministic=False, rngs=rngs)
        loss_sum, task_stats = task_objective(outputs, task_batch)
        if teacher is not None:
            teacher_params, alpha, temperature = teacher
            teacher_outputs = nnx.merge(teacher_graphdef, teacher_params)(task_batch)
            soft = distill.soft_sum(outputs, teacher_outputs, task_batch["weights"], temperature)
            loss_sum, task_stats = distill.blend(loss_sum, task_stats, soft, alpha, temperature)
        means, stats = {"task": loss_sum / jnp.maximum(task_stats["weight"], 1.0)}, {"task": task_stats}
        if pretrain_batch is not None:
            outputs = model.backbone.forward(pretrain_batch, deterministic=False, rngs=rngs)
            loss_sum, stats["pretrain"] = pretrain_objective(outputs, pretrain_batch)
            means["pretrain"] = loss_sum / jnp.maximum(stats["pretrain"]["weight"], 1.0)
        if anchor is not None:
            diffs = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params["backbone"], anchor)
            means["l2sp"] = sum(jax.tree.leaves(diffs))
        return means, stats

    return terms


def combine(means: dict, lam: jax.Array, l2sp: float) -> jax.Array:
    return means["task"] + lam * means.get("pretrain", 0.0) + l2sp * means.get("l2sp", 0.0)


def make_train_step(
    terms: Callable,
    tx: optax.GradientTransformation,
    lam_fn: optax.Schedule,
    l2sp: float,
    distill_fns: tuple[optax.Schedule, optax.Schedule] | None = None,
):
    def train_step(
        state, task_batch: dict, pretrain_batch: dict | None, anchor: Any | None, teacher_params=None
    ):
        key, lam = jax.random.fold_in(state.rng, state.step), lam_fn(state.step)
        teacher = None
        if teacher_params is not None:
            teacher = (teacher_params, *(fn(state.step) for fn in distill_fns))

        def total(params):
            means, stats = terms(params, task_batch, pretrain_batch, anchor, key, teacher)
            return combine(means, lam, l2sp), (means, stats)

        grads, (means, stats) = jax.grad(total, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        out = {"loss": combine(means, lam, l2sp), "lambda": lam, "grad_norm": optax.global_norm(grads)}
        out |= {f"task_{k}": v for k, v in losses.summarize(stats["task"]).items() if k != "perplexity"}
        if "pretrain" in stats:
            out |= {f"pretrain_{k}": v for k, v in losses.summarize(stats["pretrain"]).items()}
        if "l2sp" in means:
            out["l2sp"] = means["l2sp"]
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    return train_step


def uses_pretrain(config: ConfigDict) -> bool:
    """Whether the step reads and scores the pretraining stream (lambda > 0)."""
    return config.finetune.pretrain_lambda > 0


PACKS = ("encoder", "decoder")  # backbones whose attention keeps packed texts apart (task.pack)


def setup(
    config: ConfigDict, num_labels: int, head: str, devices=None, teacher: distill.Teacher | None = None
) -> loop.Engine:
    """The engine of a fine-tuning run: its train_step is (state, task_batch, pretrain_batch | None,
    anchor | None) -> (state, metrics), its eval_step scores task batches, its backbone_eval_step the
    backbone's pretraining objective, and its loss_fn is the unjitted `terms` (make_terms). With a teacher
    (pretrained.load_task_teacher, on the same devices' mesh) the step distils the task head from its head."""
    model_config = config.model
    if config.mesh.engine != "jit":
        raise InputError(
            f"mesh.engine={config.mesh.engine!r}: fine-tuning runs under jit only; set mesh.engine='jit'"
        )
    layout = parallel.make_layout(config.mesh, devices)
    for key in ("task", "data") if uses_pretrain(config) else ("task",):
        prepare.check_divisible(f"{key}.batch_size", config[key].batch_size, layout)
    if config.task.pack and (head not in heads.POOLED or model_config.family not in PACKS):
        raise InputError(
            f"task.pack=True packs {' and '.join(heads.POOLED)} texts for {' and '.join(PACKS)} "
            f"backbones, not {head} "
            f"with model.family={model_config.family!r}: set task.pack=False"
        )
    if uses_pretrain(config) and not prepare.scores_pretraining(model_config):
        raise InputError(
            "finetune.pretrain_lambda > 0 needs the backbone's pretraining head, but this encoder has "
            "none (model.encoder_heads='none', as all-MiniLM-L6-v2 ships); use finetune.l2sp instead"
        )
    tx = optim.make(config.optim, config.train.num_steps, model_config)

    task_loss = objectives.task_loss(head, config.train.label_smoothing)
    pretraining = objectives.get(config.train.objective)
    batch, replicated = sharding.batch_sharding(layout), layout.replicated

    def compile_steps(graphdef, abstract, shardings) -> dict:
        freezes = config.optim.freeze or lora.enabled(config.optim)
        frozen = optim.frozen_mask(config.optim, abstract.params) if freezes else None
        merge = functools.partial(lora.merge, optim_config=config.optim)
        teacher_def, teacher_shardings = (teacher.graphdef, teacher.shardings) if teacher else (None, None)
        terms = make_terms(
            graphdef, task_loss, pretraining.make_loss(config.train), frozen, merge, teacher_def
        )
        fns = distill.schedules(config.train) if teacher else None
        step = make_train_step(terms, tx, lambda_schedule(config), config.finetune.l2sp, fns)
        anchor = shardings.params["backbone"] if config.finetune.l2sp else None
        jitted = jax.jit(
            layout.traced(step),
            donate_argnums=0,
            out_shardings=(shardings, replicated),
            in_shardings=(
                shardings,
                batch,
                batch if uses_pretrain(config) else None,
                anchor,
                teacher_shardings,
            ),
        )

        def train_step(state, task_batch, pretrain_batch, anchor):  # the teacher's parameters: an argument
            return jitted(state, task_batch, pretrain_batch, anchor, teacher.params if teacher else None)

        def eval_step(params, task_batch):
            return task_loss(nnx.merge(graphdef, merge(params))(task_batch), task_batch)[1]

        def predict_step(params, task_batch):
            outputs = nnx.merge(graphdef, merge(params))(task_batch)
            return task_loss(outputs, task_batch)[1], outputs

        backbone_eval = None
        if prepare.scores_pretraining(model_config):
            backbone_def = models.graphdef(model_config)
            backbone_eval = jax.jit(
                layout.traced(evaluator.make_eval_step(backbone_def, pretraining, config.train)),
                in_shardings=(shardings.params["backbone"], batch),
                out_shardings=replicated,
            )
        eval_step, predict_step = (
            jax.jit(layout.traced(f), in_shardings=(shardings.params, batch), out_shardings=replicated)
            for f in (eval_step, predict_step)
        )
        return dict(
            train_step=train_step,
            eval_step=eval_step,
            predict_step=predict_step,
            loss_fn=terms,
            backbone_eval_step=backbone_eval,
        )

    build = prepare.task_model(config, num_labels, head)
    engine = loop.build_engine(config, layout, build, tx, compile_steps)
    engine.teacher = teacher
    return engine


# ---------------------------------------------------------------------------------------------
# The run


def char_table(config: ConfigDict, tok: tokenizers.Tokenizer) -> np.ndarray | None:
    """The characters of every token, for an ELMo backbone (its batches carry them); None for other models."""
    return pipeline.char_table(tok, config.data.max_chars) if config.model.family == "elmo" else None


def task_batching(engine: loop.Engine, tok: tokenizers.Tokenizer, head: str) -> dict:
    """The task pipeline's settings for this process: head, length, its share of the batch and its shard,
    and how batches shed padding (trimmed, or packed into rows that the batch shards divide)."""
    config = engine.config
    for key, value in (("trim_multiple", config.task.trim_multiple), ("pack", config.task.pack)):
        if value and jax.process_count() > 1:
            raise InputError(
                f"task.{key}={value} runs in one process only (each process would shape its batches on "
                f"its own); set task.{key}={type(value)()}"
            )
    if head in heads.GENERATES and config.task.kind and jax.process_count() > 1:
        raise InputError(f"task.kind={config.task.kind!r} is evaluated by generation, in one process only")
    return dict(
        head=head,
        seq_len=config.task.seq_len,
        batch_size=config.task.batch_size // jax.process_count(),
        chars=char_table(config, tok),
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        trim_multiple=config.task.trim_multiple,
        pack=config.task.pack,
        row_multiple=engine.layout.batch_shards,
        target_len=config.task.target_len,
        prompt=config.task.prompt,
    )


def streams(
    engine: loop.Engine,
    task: catalog.Task,
    head: str,
    tok: tokenizers.Tokenizer,
    corpus: corpora.Corpus | None,
) -> tuple[Any, Any | None]:
    """This process's task batches and, with lambda > 0, its pretraining batches (train.objective's)."""
    config, batching = engine.config, task_batching(engine, tok, head)
    task_iter = iter(task_pipeline.train_dataset(task, tok, seed=config.seed, **batching))
    if not uses_pretrain(config):
        return task_iter, None
    return task_iter, prepare.train_data(config, corpus, tok, objectives.get(config.train.objective))


def teacher_report(engine: loop.Engine, task: catalog.Task, tok: tokenizers.Tokenizer, head: str) -> str:
    """distill.report on the first task batch of a stream of its own (the run's stream is not touched)."""
    batching = task_batching(engine, tok, head)
    first = next(iter(task_pipeline.train_dataset(task, tok, seed=engine.config.seed, **batching)))
    batch = sharding.global_batch(first, engine.layout)
    return distill.report(engine.teacher, engine.abstract_state, batch)


def tokens_per_step(config: ConfigDict) -> int:
    """Task tokens, plus pretraining tokens when the step reads that stream."""
    pretrain = config.data.batch_size * config.data.seq_len if uses_pretrain(config) else 0
    return config.task.batch_size * config.task.seq_len + pretrain


def header(config: ConfigDict, engine: loop.Engine, task: catalog.Task, head: str, start: int) -> str:
    settings = config.finetune
    labels = f", {task.num_labels} labels" if task.num_labels else ""
    return (
        f"lmjax finetune: {engine.num_params:,} parameters, task {task.name} ({head}{labels}), init "
        f"{settings.init or 'random'}, lambda "
        f"{settings.pretrain_lambda} ({settings.lambda_schedule}), l2sp {settings.l2sp}, "
        + (f"resuming at step {start}" if start else "from the start")
    )
