"""Fine-tuning: L_FT = L_task + lambda(step) * L_pretrain + l2sp * ||theta_backbone - theta_pretrained||^2.

One jitted step takes a task batch and a batch of pretraining text (train.objective on the data.* stream:
the backbone's own LM / MLM / span loss), returns every loss and their weighted sum. With lambda = 0 the
pretraining stream is neither read nor computed. The model is a `heads.TaskModel`: the pretrained model
whole under `backbone/` (restored from an lmjax workdir or Hugging Face weights) and a new head under `head/`.

  python -m lmjax.main --config=experiments/configs/finetune_minilm.py --workdir=workdirs/minilm_rt
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import (
    checkpoint,
    distill,
    loop,
    lora,
    losses,
    models,
    objectives,
    optim,
    parallel,
    pretrained,
    sharding,
    storage,
    task_generate,
    task_metrics,
    train,
)
from lmjax import config as config_lib
from lmjax.data import corpora, pipeline, qa_windows, task_files, task_pipeline, tasks, tokenizers
from lmjax.errors import InputError
from lmjax.evaluation import harness
from lmjax.models import heads


def task_and_head(config: ConfigDict) -> tuple[tasks.Task, str]:
    """The run's task dataset (a named one, or task.kind from task.train_file...) and the head it fine-tunes
    with (encoder-decoders: text to text; the generation kinds: the model's own LM head)."""
    if config.task.train_file:
        task = task_files.load(config.task)
    else:
        task = tasks.load(ConfigDict(config.task.to_dict() | {"cache_dir": config.data.cache_dir}))
    family = config.model.family
    if task.spec.head == "generation":
        can = {"decoder": "language_model"} | (
            {"encoder_decoder": "text_to_text"} if task.kind == "seq2seq" else {}
        )
        if family not in can:
            raise InputError(
                f"task.kind={task.kind!r} generates text, which a model.family={family!r} model cannot; "
                f"start from a {' or '.join(can)} model (finetune.init, e.g. {pretrained.SMOLLM2})"
            )
        return task, can[family]
    if family != "encoder_decoder":
        return task, task.spec.head
    if task.spec.head != "classification" or task.kind:
        raise InputError(
            f"model.family='encoder_decoder' fine-tunes on the named classification tasks only, not "
            f"{f'task.kind={task.kind!r}' if task.kind else task.name}; start from an encoder or a decoder "
            "(finetune.init)"
        )
    return task, "text_to_text"


def finetuned_model(workdir: epath.Path, config: ConfigDict) -> tuple[loop.Engine, str, int, nnx.State]:
    """(engine, head, label count, parameters) of a fine-tuning run's latest checkpoint, its LoRA adapters
    merged in (on a data-parallel mesh)."""
    task, head = task_and_head(config)
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    engine = setup(config, task.num_labels, head)
    abstract = checkpoint.abstract_with_shardings(engine.abstract_state, engine.state_shardings)
    step = checkpoint.saved_steps(workdir)[-1]
    state = checkpoint.restore(checkpoint.manager(workdir, keep=1), step, abstract, None)
    return engine, head, task.num_labels, lora.merge(state.params, config.optim)


def finetuned_backbone(workdir: epath.Path, config: ConfigDict) -> nnx.State:
    """The backbone of a fine-tuning run's latest checkpoint, its LoRA adapters merged in."""
    return finetuned_model(workdir, config)[3]["backbone"]


def load_teacher(
    config: ConfigDict, tok: tokenizers.Tokenizer, layout: sharding.Layout, head: str, num_labels: int
) -> distill.Teacher:
    """mode=finetune's teacher: a fine-tuning workdir of the same head and labels, of the student's tokenizer,
    placed on the student's mesh."""
    distill.check(config)
    name = config.train.teacher
    if head == "regression":
        raise InputError("a regression head gives scores, not a distribution to distil; unset train.teacher")
    d = pretrained.init_path(name, "train.teacher")
    saved = checkpoint.load_config(d) if d.is_dir() else None
    if not saved or saved.get("mode") != "finetune" or not checkpoint.saved_steps(d):
        raise InputError(
            f"train.teacher={name!r} is not a fine-tuning workdir; in mode=finetune the teacher is a model "
            "fine-tuned on this task (its head is what the student learns from)"
        )
    distill.check_tokenizer(tokenizers.load(d / checkpoint.TOKENIZER_DIR), tok, name)
    engine, their_head, their_labels, params = finetuned_model(d, config_lib.from_saved(saved))
    if (their_head, their_labels) != (head, num_labels):
        raise InputError(
            f"train.teacher={name!r} has a {their_head} head with {their_labels} labels, the student a "
            f"{head} head with {num_labels}; distil from a teacher fine-tuned on the same task"
        )
    return distill.place(engine.graphdef, engine.abstract_state.params, params, layout)


def load_backbone(params: nnx.State, backbone: nnx.State) -> nnx.State:
    """`params` with params['backbone'] replaced by `backbone` (placed like the parameters it replaces)."""
    params["backbone"] = pretrained.place(params["backbone"], backbone)
    return params


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
    temperature) the task loss is distilled from its head's (lmjax/distill.py)."""

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


def scores_pretraining(model_config: ConfigDict) -> bool:
    """Whether the backbone has a head for its pretraining objective (an encoder may have been saved
    without)."""
    return model_config.family != "encoder" or model_config.encoder_heads != "none"


def uses_pretrain(config: ConfigDict) -> bool:
    """Whether the step reads and scores the pretraining stream (lambda > 0)."""
    return config.finetune.pretrain_lambda > 0


PACKS = ("encoder", "decoder")  # backbones whose attention keeps packed texts apart (task.pack)


def setup(
    config: ConfigDict, num_labels: int, head: str, devices=None, tok: tokenizers.Tokenizer | None = None
) -> loop.Engine:
    """The engine of a fine-tuning run: its train_step is (state, task_batch, pretrain_batch | None,
    anchor | None) -> (state, metrics), its eval_step scores task batches, its backbone_eval_step the
    backbone's pretraining objective, and its loss_fn is the unjitted `terms` (make_terms). With
    train.teacher and the run's tokenizer, the step distils the task head from the teacher's."""
    model_config = config.model
    if config.mesh.engine != "jit":
        raise InputError(
            f"mesh.engine={config.mesh.engine!r}: fine-tuning runs under jit only; set mesh.engine='jit'"
        )
    layout = parallel.make_layout(config.mesh, devices)
    for key in ("task", "data") if uses_pretrain(config) else ("task",):
        if config[key].batch_size % layout.batch_shards:
            raise InputError(
                f"{key}.batch_size={config[key].batch_size} is not divisible by the batch shards of mesh "
                f"{dict(layout.mesh.shape)}; change the batch size"
            )
    if config.task.pack and (head not in heads.POOLED or model_config.family not in PACKS):
        raise InputError(
            f"task.pack=True packs {' and '.join(heads.POOLED)} texts for {' and '.join(PACKS)} "
            f"backbones, not {head} "
            f"with model.family={model_config.family!r}: set task.pack=False"
        )
    if uses_pretrain(config) and not scores_pretraining(model_config):
        raise InputError(
            "finetune.pretrain_lambda > 0 needs the backbone's pretraining head, but this encoder has "
            "none (model.encoder_heads='none', as all-MiniLM-L6-v2 ships); use finetune.l2sp instead"
        )
    tx = optim.make(config.optim, config.train.num_steps, model_config)
    teacher = None
    if distill.enabled(config) and tok is not None:
        teacher = load_teacher(config, tok, layout, head, num_labels)

    def build(rngs):
        model = heads.TaskModel(
            models.build(model_config, rngs),
            head=head,
            num_labels=num_labels,
            pooling=config.task.pooling,
            dropout=config.task.head_dropout,
            rngs=rngs,
        )
        return lora.attach(model, config.optim, rngs) if lora.enabled(config.optim) else model

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
        if scores_pretraining(model_config):
            backbone_def = nnx.graphdef(nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0))))
            backbone_eval = jax.jit(
                layout.traced(train.make_eval_step(backbone_def, pretraining, config.train)),
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


def evaluate_task(
    engine: loop.Engine,
    params: nnx.State,
    task: tasks.Task,
    tok: tokenizers.Tokenizer,
    head: str,
    split: str,
    workdir: epath.Path | None = None,
) -> dict:
    """Task metrics over the whole split (accuracy and macro-F1; exact match and F1 for span QA). A task from
    files is scored from its predictions instead (task_metrics: its loss stays), which go to
    workdir/predictions/<split>.jsonl."""
    if task.kind:
        return predict_task(engine, params, task, tok, head, split, workdir)
    totals = None
    for batch in task_pipeline.eval_batches(task, tok, split, **task_batching(engine, tok, head)):
        stats = engine.eval_step(params, sharding.global_batch(batch, engine.layout))
        totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
    return {f"{split}/{k}": float(v) for k, v in losses.summarize(totals).items() if k != "perplexity"}


def predict_task(
    engine: loop.Engine,
    params: nnx.State,
    task: tasks.Task,
    tok: tokenizers.Tokenizer,
    head: str,
    split: str,
    workdir: epath.Path | None,
) -> dict:
    """The loss and the library metrics of every prediction of a task from files, in the split's order (the
    generation kinds: the loss teacher-forced, the predictions generated)."""
    batching = task_batching(engine, tok, head)
    source = task.sources[split]
    rows = task_pipeline.eval_rows(len(source), batching["batch_size"], batching["shard_count"])
    encode = task_pipeline.Encode(task, tok, batching["seq_len"], head)
    totals, predictions = None, {}
    for batch, global_rows in zip(
        task_pipeline.eval_batches(task, tok, split, **batching), rows, strict=True
    ):
        batch = sharding.global_batch(batch, engine.layout)
        if head in heads.GENERATES:  # the outputs are logits over the vocabulary: left on the device
            stats = engine.eval_step(params, batch)
        else:
            stats, outputs = jax.device_get(engine.predict_step(params, batch))
            for row, i in enumerate(map(int, global_rows)):
                if i < len(source):
                    row_outputs = {k: v[row] for k, v in outputs.items()}
                    predictions[i] = task_metrics.predict(task, encode, source[i], row_outputs)
        totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
    if head in heads.GENERATES:
        predicted = task_generate.generate(engine.config, params, task, tok, split)
    else:
        predicted = [predictions[i] for i in range(len(source))]
    predicted, references = qa_windows.by_row(source, predicted)
    if workdir is not None and jax.process_index() == 0:
        task_metrics.write(workdir, split, predicted, references)
    result = {"loss": float(losses.summarize(totals)["loss"])}
    result |= task_metrics.score(task.kind, predicted, references)
    return {f"{split}/{k}": v for k, v in result.items()}


def evaluate_pretraining(
    engine: loop.Engine, params: nnx.State, corpus: corpora.Corpus, tok: tokenizers.Tokenizer
) -> dict:
    """The backbone's pretraining loss on held-out text (the corpus's validation split): what forgetting
    costs."""
    backbone = lora.merge(params, engine.config.optim)["backbone"]
    result = train.evaluate_lm(engine.backbone_eval_step, engine.layout, engine.config, backbone, corpus, tok)
    return {k.replace("eval/", "pretrain/heldout_"): v for k, v in result.items() if "perplexity" not in k}


def resolve(
    config: ConfigDict, workdir: epath.Path, overrides: Mapping[str, object] = {}
) -> tuple[ConfigDict, tokenizers.Tokenizer, pretrained.Pretrained | None, corpora.Corpus | None]:
    """The run's config with the model of finetune.init, its tokenizer (checked against the pretraining
    stream's), the pretrained source and the pretraining corpus (None when nothing reads it). `overrides`:
    the command line's --config.* values, which must not contradict finetune.init's architecture."""
    pre = pretrained.load(config.finetune.init) if config.finetune.init else None
    if pre is not None:
        config = pretrained.adopt(config, pre, "finetune.init", overrides)
    else:
        config = ConfigDict(config.to_dict())
    needs_corpus = config.finetune.pretrain_lambda > 0 or scores_pretraining(config.model) or pre is None
    corpus = corpora.load(config.data) if needs_corpus else None
    if pre is None:
        tok = train.prepare_tokenizer(config, workdir, corpus)
    else:
        tok = pretrained.use_tokenizer(config, pre, "finetune.init", workdir)
    if config.model.scan_layers:
        raise InputError(
            "model.scan_layers=True is for pretraining; fine-tuning addresses blocks by index (layer-wise "
            "learning rates, freezing, LoRA): set model.scan_layers=False (a scanned finetune.init converts)"
        )
    config = train.resolve_model_config(config, tok, workdir)
    train.check_model(config)
    return config, tok, pre, corpus


def streams(
    engine: loop.Engine, task: tasks.Task, head: str, tok: tokenizers.Tokenizer, corpus: corpora.Corpus | None
) -> tuple[Any, Any | None]:
    """This process's task batches and, with lambda > 0, its pretraining batches (train.objective's)."""
    config, batching = engine.config, task_batching(engine, tok, head)
    task_iter = iter(task_pipeline.train_dataset(task, tok, seed=config.seed, **batching))
    if not uses_pretrain(config):
        return task_iter, None
    return task_iter, train.train_data(config, corpus, tok, objectives.get(config.train.objective))


def initial_state(
    run: loop.Run,
    engine: loop.Engine,
    pre: pretrained.Pretrained | None,
    task_iter: Any,
    pretrain_iter: Any | None,
):
    """(the state to train from, the starting point): the pretrained backbone under a new head, which anchors
    L2-SP and gives the 'before' pretraining loss; the state is the run's checkpoint when it resumes."""
    fresh = engine.init(jax.random.PRNGKey(engine.config.seed))
    if pre is not None:
        fresh = fresh.replace(params=load_backbone(fresh.params, pre.params()))
    if run.start:
        return run.restore(engine, pretrain_iter, task_data=task_iter), fresh
    if pre is not None:  # Adam's state for the pretrained values (init made it for random ones)
        opt_init = jax.jit(engine.tx.init, out_shardings=engine.state_shardings.opt_state)
        return fresh.replace(opt_state=opt_init(fresh.params)), fresh
    return fresh, fresh


def run(config: ConfigDict, workdir: str | epath.PathLike, overrides: Mapping[str, object] = {}) -> dict:
    """Fine-tunes (resuming from the workdir's latest checkpoint); returns the final metrics, also written to
    results.json: validation and test task metrics, and the held-out pretraining loss before and after."""
    started, workdir = time.perf_counter(), storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config, tok, pre, corpus = resolve(config, workdir, overrides)
    task, head = task_and_head(config)
    task = task_files.for_tokenizer(task, tok, config.task)
    engine = setup(config, task.num_labels, head, tok=tok)
    task_iter, pretrain_iter = streams(engine, task, head, tok, corpus)
    with loop.Run(config, workdir) as run:
        state, fresh = initial_state(run, engine, pre, task_iter, pretrain_iter)
        anchor = jax.tree.map(jnp.copy, fresh.params["backbone"]) if config.finetune.l2sp else None
        before = evaluate_pretraining(engine, fresh.params, corpus, tok) if engine.backbone_eval_step else {}
        del fresh
        run.log(header(config, engine, task, head, run.start))
        shares = {}
        if engine.teacher is not None:
            run.log(teacher_report(engine, task, tok, head))
            shares["teacher"] = engine.teacher.forward_seconds
        if before:
            run.writer.scalars(run.start, {f"{k}_before": v for k, v in before.items()})

        def train_step(state):
            batches = [
                None if it is None else engine.device_batch(next(it)) for it in (task_iter, pretrain_iter)
            ]
            return engine.train_step(state, *batches, anchor)

        def save(step: int, state) -> None:
            checkpoint.save(run.mngr, step, state, pretrain_iter, task_data=task_iter)

        evaluate = make_evaluate(engine, task, tok, head, corpus, workdir)
        state, result = run.loop(state, train_step, evaluate, save, tokens_per_step(config), None, shares)
    if "preempted_at" not in result:
        result |= {f"{k}_before": v for k, v in before.items()}
        result |= {"step": config.train.num_steps, "seconds": time.perf_counter() - started}
        tests = " ".join(f"{k}={v:.4f}" for k, v in sorted(result.items()) if k.startswith("test/"))
        run.write_results(result, f"{tests}; {workdir / checkpoint.RESULTS_FILE}")
    return result


def make_evaluate(
    engine: loop.Engine,
    task: tasks.Task,
    tok: tokenizers.Tokenizer,
    head: str,
    corpus: corpora.Corpus | None,
    workdir: epath.Path,
) -> Callable[[int, loop.TrainState, bool], dict]:
    """The loop's evaluation: the task's validation split (and its test split at the end), the backbone's
    held-out pretraining loss, and train.harness_tasks on the backbone (a decoder)."""
    model_config = engine.config.model
    backbone_def = nnx.graphdef(nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0))))
    harness_every = harness.periodic(engine.config, tok, backbone_def)

    def evaluate(step: int, state: loop.TrainState, final: bool) -> dict:
        result = {}
        for split in ("validation", "test") if final else ("validation",):
            if split in task.sources:
                result |= evaluate_task(engine, state.params, task, tok, head, split, workdir)
        if engine.backbone_eval_step:
            result |= evaluate_pretraining(engine, state.params, corpus, tok)
        if engine.config.train.harness_tasks:
            result |= harness_every(step, lora.merge(state.params, engine.config.optim)["backbone"], final)
        return result

    return evaluate


def teacher_report(engine: loop.Engine, task: tasks.Task, tok: tokenizers.Tokenizer, head: str) -> str:
    """distill.report on the first task batch of a stream of its own (the run's stream is not touched)."""
    batching = task_batching(engine, tok, head)
    first = next(iter(task_pipeline.train_dataset(task, tok, seed=engine.config.seed, **batching)))
    graphdef = engine.teacher.graphdef
    forward = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b))
    batch = sharding.global_batch(first, engine.layout)
    return distill.report(engine.teacher, engine.abstract_state, forward, batch)


def tokens_per_step(config: ConfigDict) -> int:
    """Task tokens, plus pretraining tokens when the step reads that stream."""
    pretrain = config.data.batch_size * config.data.seq_len if uses_pretrain(config) else 0
    return config.task.batch_size * config.task.seq_len + pretrain


def header(config: ConfigDict, engine: loop.Engine, task: tasks.Task, head: str, start: int) -> str:
    settings = config.finetune
    labels = f", {task.num_labels} labels" if task.num_labels else ""
    return (
        f"lmjax finetune: {engine.num_params:,} parameters, task {task.name} ({head}{labels}), init "
        f"{settings.init or 'random'}, lambda "
        f"{settings.pretrain_lambda} ({settings.lambda_schedule}), l2sp {settings.l2sp}, "
        + (f"resuming at step {start}" if start else "from the start")
    )
