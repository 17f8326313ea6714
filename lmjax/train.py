"""Pretraining: the pure train / eval steps, the engine that compiles them, and `train_and_evaluate`."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import (
    checkpoint,
    decode,
    distill,
    loop,
    losses,
    metrics,
    models,
    objectives,
    optim,
    parallel,
    pretrained,
    sharding,
    sparse,
    storage,
    vectors,
)
from lmjax import config as config_lib
from lmjax.data import corpora, mixture, pipeline, tokenizers
from lmjax.errors import InputError, MissingInput
from lmjax.evaluation import harness


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


def make_eval_step(
    graphdef: nnx.GraphDef, objective: objectives.Objective, train_config: ConfigDict
) -> Callable:
    """eval_step(params, batch) -> summable stats: the loss's and what the objective's evaluation adds."""
    loss = objective.make_loss(train_config)

    def eval_step(params: nnx.State, batch: dict) -> dict:
        rngs = nnx.Rngs(dropout=jax.random.PRNGKey(0)) if objective.eval_dropout else None
        outputs = nnx.merge(graphdef, params).forward(
            batch, deterministic=not objective.eval_dropout, rngs=rngs
        )
        stats = loss(outputs, batch)[1]
        return stats | objective.eval_stats(outputs, batch) if objective.eval_stats else stats

    return eval_step


def check_config(config: ConfigDict) -> None:
    """Every check of a config before a run: its values on their own (lmjax.config.validate), then against the
    registries (optimizers, meshes, model families and objectives). The model of a fine-tuning run that starts
    from finetune.init or train.init is checked once it is loaded (check_model)."""
    config_lib.validate(config)
    optim.check(config.optim)
    parallel.check(config.mesh)
    if distill.enabled(config):
        distill.check(config)
    if not ((config.mode in ("finetune", "eval") and config.finetune.init) or config.train.init):
        check_model(config)


def check_model(config: ConfigDict) -> None:
    models.check(config)
    objectives.check(config)


def setup(config: ConfigDict, devices=None, tok: tokenizers.Tokenizer | None = None) -> loop.Engine:
    """Builds the mesh and compiles nothing yet; parameters are created directly sharded by `init`. With
    train.teacher and the run's tokenizer `tok` (which the teacher must share), the teacher is loaded onto
    the mesh and the train step distils from it (evaluation and sampling pass no tokenizer: no teacher)."""
    if config.mesh.engine == "pmap":
        parallel.check_pmap(config.mesh)
    layout = parallel.make_layout(config.mesh, devices)
    teacher = distill.load(config, tok, layout) if distill.enabled(config) and tok is not None else None
    accum = config.optim.grad_accum_steps
    if config.data.batch_size % (layout.batch_shards * accum):
        raise InputError(
            f"data.batch_size={config.data.batch_size} is not divisible by the {layout.batch_shards} "
            f"batch shards (mesh data x fsdp) x {accum} accumulation steps; change the batch size"
        )
    tx = optim.make(config.optim, config.train.num_steps, config.model)
    objective = objectives.get(config.train.objective)
    if config.data.batch_size % (layout.batch_shards * config.optim.updates_per_step):
        raise InputError(
            f"data.batch_size={config.data.batch_size} does not split into optim.updates_per_step="
            f"{config.optim.updates_per_step} equal updates over {layout.batch_shards} batch shards"
        )
    per_update = config.data.batch_size // (layout.batch_shards * config.optim.updates_per_step)
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
            layout.traced(make_eval_step(graphdef, objective, config.train)),
            in_shardings=(shardings.params, batch_sharding),
            out_shardings=layout.replicated,
        )
        return dict(train_step=train_step, eval_step=eval_step, loss_fn=loss_fn)

    engine = loop.build_engine(
        config, layout, lambda rngs: models.build(config.model, rngs), tx, compile_steps
    )
    engine.teacher = teacher
    return engine


def load_trained(workdir: str | epath.PathLike) -> tuple[loop.Engine, nnx.State, tokenizers.Tokenizer, int]:
    """The latest parameters of a workdir, with the run's own config (on a data-parallel mesh) and
    tokenizer."""
    workdir = storage.workdir(workdir)
    saved = checkpoint.load_config(workdir)
    steps = checkpoint.saved_steps(workdir)
    if saved is None or not steps:
        raise MissingInput(
            f"{workdir} holds no trained run (no {checkpoint.CONFIG_FILE} and checkpoint); "
            "train first or point --workdir at a run"
        )
    config = config_lib.from_saved(saved)
    tok = tokenizers.load(workdir / checkpoint.TOKENIZER_DIR)
    if tok.vocab_size > config.model.vocab_size:
        raise InputError(
            f"the tokenizer in {workdir / checkpoint.TOKENIZER_DIR} has {tok.vocab_size} tokens but "
            f"the checkpoint's model has {config.model.vocab_size}; restore the run's own tokenizer"
        )
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    engine = setup(config)
    abstract = checkpoint.abstract_with_shardings(engine.abstract_state, engine.state_shardings)
    state = checkpoint.restore(checkpoint.manager(workdir, keep=1), steps[-1], abstract, None)
    return engine, state.params, tok, steps[-1]


# ---------------------------------------------------------------------------------------------
# Run preparation: tokenizer and config checks against what the workdir already holds.


# model settings a run may change on a checkpoint of the same architecture (resume, fine-tuning)
NON_ARCHITECTURE = pretrained.RUN_SETTINGS
VECTORS_FILE = "vectors.txt"


def prepare_tokenizer(
    config: ConfigDict, workdir: epath.Path, corpus: corpora.Corpus
) -> tokenizers.Tokenizer:
    """The run's tokenizer: the workdir's own if it has one, else loaded from data.tokenizer_path or
    trained."""
    saved_dir = workdir / checkpoint.TOKENIZER_DIR
    if saved_dir.is_dir():
        tok = tokenizers.load(saved_dir)
        if tok.kind != config.data.tokenizer and not config.data.tokenizer_path:
            raise InputError(
                f"{workdir} was trained with a {tok.kind} tokenizer but data.tokenizer="
                f"{config.data.tokenizer!r}; use a new --workdir for another tokenizer"
            )
        if config.data.tokenizer_path and (other := tokenizers.differing(config.data.tokenizer_path, tok)):
            raise InputError(
                f"data.tokenizer_path={config.data.tokenizer_path!r} ({other.kind}, {other.vocab_size} "
                f"tokens) does not match the vocabulary this workdir was trained with ({tok.kind}, "
                f"{tok.vocab_size} tokens); drop data.tokenizer_path or use a new --workdir"
            )
        return tok
    if config.data.tokenizer_path:
        tok = tokenizers.load(epath.Path(config.data.tokenizer_path))
    else:
        texts = pipeline.tokenizer_texts(corpus, config.data.tokenizer_train_examples)
        tok = tokenizers.train(config.data.tokenizer, texts, config.data.vocab_size, config.data.min_count)
    if jax.process_index() == 0:
        tok.save(saved_dir)
    return tok


def resolve_model_config(config: ConfigDict, tok: tokenizers.Tokenizer, workdir: epath.Path) -> ConfigDict:
    """Fills model.vocab_size from the tokenizer and checks the workdir holds no other architecture."""
    config = ConfigDict(config.to_dict())  # unlocked copy
    if not config.model.vocab_size:
        config.model.vocab_size = tok.vocab_size
    elif config.model.vocab_size < tok.vocab_size:
        raise InputError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{tok.vocab_size} tokens; set model.vocab_size=0 to take the tokenizer's size"
        )
    saved = checkpoint.load_config(workdir)
    if saved is not None and checkpoint.saved_steps(workdir):
        mine = config.model.to_dict()
        diff = {
            k: (saved["model"][k], mine[k])
            for k in mine
            if k not in NON_ARCHITECTURE and k in saved["model"] and saved["model"][k] != mine[k]
        }
        if diff:
            desc = ", ".join(
                f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items())
            )
            raise InputError(
                f"{workdir} holds a checkpoint of a different architecture ({desc}); "
                f"use a new --workdir or the run's own config"
            )
    return config


# ---------------------------------------------------------------------------------------------


def evaluate(
    engine: loop.Engine, params: nnx.State, corpus: corpora.Corpus, tok: tokenizers.Tokenizer
) -> dict[str, float]:
    """Loss, perplexity and accuracy over the validation split (its first train.eval_batches batches), and
    the accuracy of always predicting the most frequent target token (unigram_accuracy), to compare with.
    Word vectors are scored on word similarity (Spearman) and analogies (accuracy) instead (lmjax.vectors)."""
    if objectives.get(engine.config.train.objective).word_vectors:
        wv = vectors.WordVectors.from_model(nnx.merge(engine.graphdef, params), tok)
        return {f"eval/{k}": float(v) for k, v in vectors.evaluate(wv).items()}
    return evaluate_lm(engine.eval_step, engine.layout, engine.config, params, corpus, tok)


def evaluate_lm(
    eval_step: Callable,
    layout: sharding.Layout,
    config: ConfigDict,
    params: nnx.State,
    corpus: corpora.Corpus,
    tok: tokenizers.Tokenizer,
) -> dict[str, float]:
    """`evaluate` for any eval step of the train.objective (fine-tuning scores its backbone with it). A
    mixture is scored source by source (eval/<name>/...) and as the sources' weighted mean (eval/...;
    perplexity: the exponential of the mean log-perplexity)."""
    if isinstance(corpus, mixture.Mixture):
        per = [(s, evaluate_lm(eval_step, layout, config, params, s.corpus, tok)) for s in corpus.sources]
        result = {f"eval/{s.name}/{k[len('eval/') :]}": v for s, r in per for k, v in r.items()}
        for k in per[0][1]:
            log = k == "eval/perplexity"
            mean = sum(s.weight * (math.log(r[k]) if log else r[k]) for s, r in per)
            result[k] = math.exp(mean) if log else mean
        return result
    totals = None
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    for batch in pipeline.eval_batches(
        corpus,
        tok,
        config.data,
        objective=objectives.get(config.train.objective),
        batch_size=config.data.batch_size // jax.process_count(),
        max_batches=config.train.eval_batches,
        **shard,
    ):
        stats = eval_step(params, sharding.global_batch(batch, layout))
        totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
    if totals is None:
        raise InputError(
            "the validation split is too small for one batch; lower data.batch_size or data.seq_len, "
            "or raise data.validation_fraction"
        )
    result = losses.summarize(totals)
    if "target_counts" in totals:
        result["unigram_accuracy"] = totals["target_counts"].max() / jnp.maximum(totals["weight"], 1.0)
    return {f"eval/{k}": float(v) for k, v in result.items()}


def train_data(
    config: ConfigDict, corpus: corpora.Corpus, tok: tokenizers.Tokenizer, objective: objectives.Objective
) -> Any:
    """This process's share of the training batches, an iterator whose state checkpoints save."""
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    batch_size = config.data.batch_size // jax.process_count()
    return iter(
        pipeline.train_dataset(
            corpus, tok, config.data, objective=objective, seed=config.seed, batch_size=batch_size, **shard
        )
    )


def make_evaluate(engine: loop.Engine, corpus: corpora.Corpus, tok: tokenizers.Tokenizer) -> Callable:
    """The loop's evaluation: `evaluate`, train.harness_tasks (lmjax/evaluation/harness.py), and a decoder's
    sample (train.sample_tokens) as text."""
    config = engine.config
    harness_every = harness.periodic(config, tok, engine.graphdef)

    def evaluate_and_sample(step: int, state: loop.TrainState, final: bool) -> dict:
        params = engine.from_engine(state).params
        result = evaluate(engine, params, corpus, tok) | harness_every(step, params, final)
        if config.model.family == "decoder" and config.train.sample_tokens:
            key = jax.random.PRNGKey(step)
            text = decode.sample_text(
                engine.graphdef, params, tok, config.sample, config.train.sample_tokens, key
            )
            result["sample"] = text
        return result

    return evaluate_and_sample


def resolve_init(
    config: ConfigDict, workdir: epath.Path, corpus: corpora.Corpus, overrides: Mapping[str, object]
) -> tuple[ConfigDict, tokenizers.Tokenizer, pretrained.Pretrained | None]:
    """The run's config, tokenizer and, with train.init, the pretrained model it continues: its architecture
    (the run keeps its own dropout, remat, attention and scan_layers) and its tokenizer."""
    pre = None
    if config.train.init:
        pre = pretrained.load(config.train.init, "train.init")
        keep = (*pretrained.RUN_SETTINGS, "scan_layers")
        config = pretrained.adopt(config, pre, "train.init", overrides, keep)
        tok = pretrained.use_tokenizer(config, pre, "train.init", workdir)
    else:
        tok = prepare_tokenizer(config, workdir, corpus)
    config = resolve_model_config(config, tok, workdir)
    if pre is not None:
        check_model(config)
    return config, tok, pre


def initial_state(engine: loop.Engine, pre: pretrained.Pretrained | None) -> loop.TrainState:
    """A new run's state: random, or the pretrained parameters with a fresh optimizer state."""
    state = engine.init(jax.random.PRNGKey(engine.config.seed))
    if pre is None:
        return state
    params = pre.params()
    if engine.config.model.scan_layers:  # pretrained models come in the per-block layout
        params = models.with_layout(pre.model_config, params, scanned=True)[1]
    params = pretrained.place(state.params, params, f"train.init={engine.config.train.init!r}")
    opt_init = jax.jit(engine.tx.init, out_shardings=engine.state_shardings.opt_state)
    return state.replace(params=params, opt_state=opt_init(params))


def train_and_evaluate(
    config: ConfigDict, workdir: str | epath.PathLike, devices=None, overrides: Mapping[str, object] = {}
) -> dict:
    """Trains (from train.init or from scratch; resuming from the workdir's latest checkpoint if any); returns
    the final evaluation metrics.

    On SIGTERM (preemption) it saves a checkpoint at the next step boundary and returns {"preempted_at":
    step}; running it again resumes there. A finished run also writes them to results.json. `workdir` is a
    local path or a gs:// URL; `devices` (default: all) is for tests that want a smaller mesh; `overrides`:
    the command line's --config.* values (a model override must not contradict train.init).
    """
    workdir = storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = corpora.load(config.data)
    config, tok, pre = resolve_init(config, workdir, corpus, overrides)
    engine, objective = setup(config, devices, tok), objectives.get(config.train.objective)
    train_iter = train_data(config, corpus, tok, objective)
    with loop.Run(config, workdir) as run:
        state = run.restore(engine, train_iter) if run.start else initial_state(engine, pre)
        start = f"from train.init={config.train.init!r}" if pre else "from scratch"
        resuming = f"resuming at step {run.start}" if run.start else start
        run.log(
            f"lmjax: {engine.num_params:,} parameters, mesh {dict(engine.mesh.shape)}, corpus {corpus.name}, "
            f"{tok.kind} tokenizer ({tok.vocab_size} tokens), {resuming}"
        )
        shares = {}
        if engine.teacher is not None:
            run.log(teacher_report(engine))
            shares["teacher"] = engine.teacher.forward_seconds

        def train_step(state):
            return engine.train_step(state, engine.device_batch(next(train_iter)))

        def save(step: int, state) -> None:
            checkpoint.save(run.mngr, step, engine.from_engine(state), train_iter)

        tokens = config.data.batch_size * objective.tokens_per_row(config.data)
        evaluate_fn = make_evaluate(engine, corpus, tok)
        state, result = run.loop(
            engine.to_engine(state), train_step, evaluate_fn, save, tokens, step_flops(config), shares
        )
    if "preempted_at" not in result:  # after the Run closed: the metrics file is complete
        _finish(run, engine, engine.from_engine(state).params, tok, objective, result)
    return result


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
    graphdef = engine.teacher.graphdef
    forward = jax.jit(lambda p, b: nnx.merge(graphdef, p).forward(b, deterministic=True)["logits"])
    return distill.report(engine.teacher, state, forward, zeros)


FLOP_OBJECTIVES = ("causal_lm", "mlm", "span_corruption")  # the ones metrics.train_flops counts


def step_flops(config: ConfigDict) -> float | None:
    """Model FLOPs of one training step (metrics.train_flops x rows), or None where not counted."""
    if config.train.objective not in FLOP_OBJECTIVES:
        return None
    target_len = pipeline.span_lengths(config.data)[1] if config.train.objective == "span_corruption" else 0
    return config.data.batch_size * metrics.train_flops(config.model, config.data.seq_len, target_len)[0]


def _finish(
    run: loop.Run,
    engine: loop.Engine,
    params: nnx.State,
    tok: tokenizers.Tokenizer,
    objective: objectives.Objective,
    result: dict,
) -> None:
    """The loss plot, the word vectors of a word-vector model, results.json and the closing line."""
    if not run.lead:
        return
    plot = metrics.plot_losses(run.workdir)
    if objective.word_vectors:
        wv = vectors.WordVectors.from_model(nnx.merge(engine.graphdef, params), tok)
        wv.save_word2vec_format(run.workdir / VECTORS_FILE)
        outcome = ", ".join(
            f"{k[5:]} {result[k]:.4f}" for k in ("eval/wordsim353", "eval/simlex999", "eval/analogy")
        )
        outcome += f"; vectors in {VECTORS_FILE} (word2vec text format)"
    else:
        outcome = f"final validation loss {result.get('eval/loss', float('nan')):.4f}"
    run.write_results(
        result,
        f"{outcome}; workdir {run.workdir} (checkpoints, {metrics.JSONL}, "
        f"{metrics.TB_DIR}/, {plot.name}, {checkpoint.RESULTS_FILE})",
    )
