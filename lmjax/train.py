"""TrainState, the pure train/eval steps, and the training loop."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, decode, metrics, models, objectives, optim, parallel, storage, vectors
from lmjax import config as config_lib
from lmjax.data import corpora, pipeline, tokenizers
from lmjax.errors import InputError


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # base key; step n uses fold_in(rng, n), so a resumed run draws the same numbers


class NonFiniteLoss(InputError, RuntimeError):
    """The loss or gradient norm became NaN or inf: the hyperparameters need changing (one line)."""


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, objective: Callable,
                    accum_steps: int, axis_name: str | None = None) -> Callable:
    """The pure step. Under pmap (`axis_name`), each device's summed gradients and statistics are summed over
    devices before the one division by the token count, so the update equals the jit step's."""

    def loss_fn(params, batch, key):
        outputs = models.forward(nnx.merge(graphdef, params), batch, deterministic=False, rngs=nnx.Rngs(dropout=key))
        return objective(outputs, batch)

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        if accum_steps == 1:
            grads, stats = grad_fn(state.params, batch, key)
        else:  # microbatch i takes rows i, i + A, ...: each device keeps its own rows
            micro = jax.tree.map(lambda x: x.reshape(-1, accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

            def accumulate(carry, xs):
                i, mb = xs
                g, s = grad_fn(state.params, mb, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, (g, s)), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params,
                                                                jax.tree.map(lambda x: x[0], micro), key))
            (grads, stats), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro))
        if axis_name is not None:
            grads, stats = jax.lax.psum((grads, stats), axis_name)
        # The loss is the token-weighted mean over the whole batch: divide the summed gradient once.
        grads = jax.tree.map(lambda g: g / jnp.maximum(stats["weight"], 1.0), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = objectives.summarize(stats) | {"grad_norm": optax.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, objective: Callable, dropout_views: bool = False) -> Callable:
    """dropout_views: the contrastive objective's two views differ only by dropout, so it stays on (fixed masks)."""

    def eval_step(params: nnx.State, batch: dict) -> dict:
        kw = dict(deterministic=False, rngs=nnx.Rngs(dropout=jax.random.PRNGKey(0))) if dropout_views else {}
        outputs = models.forward(nnx.merge(graphdef, params), batch, **kw)
        stats = objective(outputs, batch)[1]
        if "logits" not in outputs:  # contrastive: no token targets
            return stats
        # How often each token is a target (of either direction for ELMo): the best constant prediction is the
        # unigram baseline.
        counts_V = jnp.zeros(outputs["logits"].shape[-1]).at[batch["targets"].ravel()].add(batch["weights"].ravel())
        if "prev_targets" in batch:
            counts_V = counts_V.at[batch["prev_targets"].ravel()].add(batch["prev_weights"].ravel())
        return stats | {"target_counts": counts_V}

    return eval_step


def make_init(build: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation):
    """(graphdef, init(rng) -> TrainState, abstract TrainState) for the model that `build` makes."""

    def init(rng: jax.Array) -> TrainState:
        params = nnx.state(build(nnx.Rngs(params=rng)), nnx.Param)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.fold_in(rng, 1))

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
    return graphdef, init, jax.eval_shape(init, jax.random.PRNGKey(0))


def check_config(config: ConfigDict) -> None:
    """Every check of a config before a run: its values on their own (lmjax.config.validate), then against the
    registries (optimizers, meshes, model families and objectives). The model of a fine-tuning run that starts
    from finetune.init is checked once it is loaded (check_model)."""
    config_lib.validate(config)
    optim.check(config.optim)
    parallel.check(config.mesh)
    if not (config.mode == "finetune" and config.finetune.init):
        check_model(config)


def check_model(config: ConfigDict) -> None:
    models.check(config)
    pipeline.check(config)


@dataclasses.dataclass
class Setup:
    """Everything a run derives from its config: model structure, optimizer, shardings, compiled steps.

    The loop keeps the state in the engine's form: `to_engine` / `from_engine` convert from / to the
    sharded global form that init, checkpoints and evaluation use (the identity under jit; under
    pmap, one copy per local device). `device_batch` turns this process's NumPy batch into step input.
    """

    config: ConfigDict
    layout: parallel.Layout
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    state_shardings: Any
    abstract_state: Any
    init: Callable
    train_step: Callable
    eval_step: Callable

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.layout.mesh

    @property
    def pmap(self) -> bool:
        return self.config.mesh.engine == "pmap"

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state.params))

    def to_engine(self, state: TrainState) -> TrainState:
        return parallel.replicate(state) if self.pmap else state

    def from_engine(self, state: TrainState) -> TrainState:
        return jax.device_put(parallel.unreplicate(state), self.state_shardings) if self.pmap else state

    def device_batch(self, local_batch: dict[str, np.ndarray]) -> dict:
        return parallel.split_for_pmap(local_batch) if self.pmap else parallel.global_batch(local_batch, self.layout)


def setup(config: ConfigDict, devices=None) -> Setup:
    """Builds the mesh and compiles nothing yet; parameters are created directly sharded by `init`."""
    if config.mesh.engine == "pmap":
        parallel.check_pmap(config.mesh)
    layout = parallel.make_layout(config.mesh, devices)
    if config.data.batch_size % (layout.batch_shards * config.optim.grad_accum_steps):
        raise InputError(f"data.batch_size={config.data.batch_size} is not divisible by the {layout.batch_shards} batch "
                         f"shards (mesh data x fsdp) x {config.optim.grad_accum_steps} accumulation steps; change the "
                         f"batch size")
    tx = optim.make(config.optim, config.train.num_steps, config.model)
    graphdef, init, abstract_state = make_init(lambda rngs: models.build(config.model, rngs), tx)
    shardings = parallel.state_shardings(abstract_state, layout)
    batch_sharding = parallel.batch_sharding(layout)
    objective = objectives.get(config.train)
    if config.mesh.engine == "pmap":
        step = jax.pmap(make_train_step(graphdef, tx, objective, config.optim.grad_accum_steps, parallel.PMAP_AXIS),
                        axis_name=parallel.PMAP_AXIS, donate_argnums=0)

        def train_step(state, batch):
            state, out = step(state, batch)
            return state, parallel.unreplicate(out)
    else:
        train_step = jax.jit(layout.traced(make_train_step(graphdef, tx, objective, config.optim.grad_accum_steps)),
                             in_shardings=(shardings, batch_sharding), out_shardings=(shardings, layout.replicated),
                             donate_argnums=0)
    eval_step = jax.jit(layout.traced(make_eval_step(graphdef, objective, config.train.objective == "contrastive")),
                        in_shardings=(shardings.params, batch_sharding), out_shardings=layout.replicated)
    return Setup(config, layout, graphdef, tx, shardings, abstract_state,
                 jax.jit(init, out_shardings=shardings), train_step, eval_step)


# ---------------------------------------------------------------------------------------------
# Run preparation: tokenizer and config checks against what the workdir already holds.


# model settings a run may change on a checkpoint of the same architecture (resume, fine-tuning)
NON_ARCHITECTURE = ("dropout", "attention_dropout", "remat")
VECTORS_FILE = "vectors.txt"


def prepare_tokenizer(config: ConfigDict, workdir: epath.Path,
                      corpus: corpora.Corpus) -> tokenizers.Tokenizer:
    """The run's tokenizer: the workdir's own if it has one, else loaded from data.tokenizer_path or trained."""
    saved_dir = workdir / checkpoint.TOKENIZER_DIR
    if saved_dir.is_dir():
        tok = tokenizers.load(saved_dir)
        if tok.kind != config.data.tokenizer and not config.data.tokenizer_path:
            raise InputError(f"{workdir} was trained with a {tok.kind} tokenizer but data.tokenizer="
                             f"{config.data.tokenizer!r}; use a new --workdir for another tokenizer")
        if config.data.tokenizer_path and (other := tokenizers.differing(config.data.tokenizer_path, tok)):
            raise InputError(f"data.tokenizer_path={config.data.tokenizer_path!r} ({other.kind}, {other.vocab_size} "
                             f"tokens) does not match the vocabulary this workdir was trained with ({tok.kind}, "
                             f"{tok.vocab_size} tokens); drop data.tokenizer_path or use a new --workdir")
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
        raise InputError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
                         f"{tok.vocab_size} tokens; set model.vocab_size=0 to take the tokenizer's size")
    saved = checkpoint.load_config(workdir)
    if saved is not None and checkpoint.saved_steps(workdir):
        mine = config.model.to_dict()
        diff = {k: (saved["model"][k], mine[k]) for k in mine
                if k not in NON_ARCHITECTURE and k in saved["model"] and saved["model"][k] != mine[k]}
        if diff:
            desc = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
            raise InputError(f"{workdir} holds a checkpoint of a different architecture ({desc}); "
                             f"use a new --workdir or the run's own config")
    return config


# ---------------------------------------------------------------------------------------------


def evaluate(s: Setup, params: nnx.State, corpus: corpora.Corpus, tok: tokenizers.Tokenizer) -> dict[str, float]:
    """Loss, perplexity and accuracy over the validation split (its first train.eval_batches batches), and
    the accuracy of always predicting the most frequent target token (unigram_accuracy), to compare with.
    Word vectors are scored on word similarity (Spearman) and analogies (accuracy) instead (lmjax.vectors)."""
    if s.config.model.family in models.WORD_VECTORS:
        wv = vectors.WordVectors.from_model(nnx.merge(s.graphdef, params), tok)
        return {f"eval/{k}": float(v) for k, v in vectors.evaluate(wv).items()}
    return evaluate_lm(s.eval_step, s.layout, s.config, params, corpus, tok)


def evaluate_lm(eval_step: Callable, layout: parallel.Layout, c: ConfigDict, params: nnx.State,
                corpus: corpora.Corpus, tok: tokenizers.Tokenizer) -> dict[str, float]:
    """`evaluate` for any eval step of the train.objective (fine-tuning scores its backbone with it)."""
    totals = None
    for batch in pipeline.eval_batches(corpus, tok, c.data, objective=c.train.objective,
                                       batch_size=c.data.batch_size // jax.process_count(),
                                       max_batches=c.train.eval_batches, shard_index=jax.process_index(),
                                       shard_count=jax.process_count()):
        stats = eval_step(params, parallel.global_batch(batch, layout))
        totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
    if totals is None:
        raise InputError("the validation split is too small for one batch; lower data.batch_size or data.seq_len, "
                         "or raise data.validation_fraction")
    result = objectives.summarize(totals)
    if "target_counts" in totals:
        result["unigram_accuracy"] = totals["target_counts"].max() / jnp.maximum(totals["weight"], 1.0)
    return {f"eval/{k}": float(v) for k, v in result.items()}


class _StepLog:
    """Reads step metrics one step behind dispatch, fails fast on NaN, and writes means every log_every steps."""

    def __init__(self, config: ConfigDict, start: int, writer: metrics.Writer, progress: metrics.Progress, mngr,
                 tokens_per_step: int = 0):
        self.c, self.writer, self.progress, self.mngr = config, writer, progress, mngr
        self.tokens_per_step = tokens_per_step or config.data.batch_size * config.data.seq_len
        self.history: list[dict] = []
        self.since = (start, time.perf_counter())  # (step, time) the tokens/s interval starts at
        self.schedule = optim.schedule(config.optim, config.train.num_steps)

    def settle(self, step: int, device_metrics: dict) -> None:
        m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            self.mngr.wait_until_finished()
            saved = self.mngr.latest_step()
            kept = (f"the last good checkpoint (step {saved}) is untouched and a rerun resumes there" if saved
                    else "no checkpoint was saved yet, so a rerun starts afresh")
            raise NonFiniteLoss(f"loss became {m['loss']} (grad norm {m['grad_norm']}) at step {step}; stopped without "
                                f"saving; {kept}. Lower optim.learning_rate or raise optim.warmup_steps, then rerun")
        self.history.append(m)
        if step % self.c.train.log_every == 0 or step == self.c.train.num_steps:
            now = time.perf_counter()
            mean = {f"train/{k}": float(np.mean([h[k] for h in self.history])) for k in self.history[0]}
            tokens = (step - self.since[0]) * self.tokens_per_step
            mean["train/tokens_per_s"] = tokens / max(now - self.since[1], 1e-9)
            mean["train/learning_rate"] = float(self.schedule(step - 1))
            self.writer.scalars(step, mean)
            self.progress.update(step, mean["train/loss"], mean["train/tokens_per_s"])
            self.history.clear()
            self.since = (step, now)

    def exclude(self, seconds: float) -> None:
        """Keeps time spent on evaluation and checkpointing out of tokens/s."""
        self.since = (self.since[0], self.since[1] + seconds)


def train_and_evaluate(config: ConfigDict, workdir: str | epath.PathLike, devices=None) -> dict:
    """Trains (resuming from the workdir's latest checkpoint if any); returns the final evaluation metrics.

    On SIGTERM (preemption) it saves a checkpoint at the next step boundary and returns {"preempted_at": step};
    running it again resumes there. A finished run also writes them to results.json. `workdir` is a local path
    or a gs:// URL; `devices` (default: all) is for tests that want a smaller mesh.
    """
    workdir = storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    corpus = corpora.load(config.data)
    tok = prepare_tokenizer(config, workdir, corpus)
    config = resolve_model_config(config, tok, workdir)
    s = setup(config, devices)
    c = config.train
    mngr = checkpoint.manager(workdir, keep=c.keep_checkpoints)
    if lead:
        checkpoint.save_config(workdir, config)

    train_iter = iter(pipeline.train_dataset(
        corpus, tok, config.data, objective=c.objective, batch_size=config.data.batch_size // jax.process_count(),
        seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count()))
    start = checkpoint.start_step(mngr, c.restore_step)
    if start:
        abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
        state = checkpoint.restore(mngr, start, abstract, train_iter)
    else:
        state = s.init(jax.random.PRNGKey(config.seed))
    state = s.to_engine(state)

    writer = metrics.Writer(workdir, resume_step=start, enabled=lead)
    progress = metrics.Progress(start, c.num_steps, enabled=lead and c.progress)
    log = progress.write if lead else (lambda _: None)
    log(f"lmjax: {s.num_params:,} parameters, mesh {dict(s.mesh.shape)}, corpus {corpus.name}, "
        f"{tok.kind} tokenizer ({tok.vocab_size} tokens), " + (f"resuming at step {start}" if start else "from scratch"))

    def evaluate_and_sample(step: int) -> dict:
        params = s.from_engine(state).params
        result = evaluate(s, params, corpus, tok)
        writer.scalars(step, result)
        line = f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in result.items())
        if config.model.family == "decoder" and c.sample_tokens:
            text = decode.sample_text(s.graphdef, params, tok, config.sample, c.sample_tokens,
                                      jax.random.PRNGKey(step))
            writer.text(step, "sample", text)
            line += f"\n--- sample ---\n{text}\n--------------"
        log(line)
        return result

    steps = _StepLog(config, start, writer, progress, mngr,  # word vectors: examples (pairs, entries) per second
                     tokens_per_step=config.data.batch_size if config.model.family in models.WORD_VECTORS else 0)
    final_eval: dict = {}
    pending = None  # (step, device metrics) of the step dispatched before the current one
    try:
        with checkpoint.Preemption(mngr) as preemption:
            for step in range(start + 1, c.num_steps + 1):
                state, step_metrics = s.train_step(state, s.device_batch(next(train_iter)))
                if pending is not None:
                    steps.settle(*pending)
                pending = (step, step_metrics)
                is_last, preempted = step == c.num_steps, preemption.reached(step)
                do_eval = is_last or (not preempted and step % c.eval_every == 0)
                do_save = is_last or preempted or step % c.checkpoint_every == 0
                if do_eval or do_save:
                    steps.settle(*pending)  # sync: the state about to be evaluated or saved must be finite
                    pending, paused_at = None, time.perf_counter()
                    if do_eval:
                        final_eval = evaluate_and_sample(step)
                    if do_save:
                        checkpoint.save(mngr, step, s.from_engine(state), train_iter)
                    steps.exclude(time.perf_counter() - paused_at)
                if preempted and not is_last:
                    mngr.wait_until_finished()
                    log(f"preempted: saved the checkpoint of step {step} and stopped; the same command resumes it")
                    return {"preempted_at": step}
        if start >= c.num_steps:
            final_eval = evaluate_and_sample(start)
    finally:
        mngr.wait_until_finished()
        progress.close()
        writer.close()
    if lead:
        plot = metrics.plot_losses(workdir)
        if config.model.family in models.WORD_VECTORS:
            vectors.WordVectors.from_model(nnx.merge(s.graphdef, s.from_engine(state).params), tok).save_word2vec_format(
                workdir / VECTORS_FILE)
            outcome = ", ".join(f"{k[5:]} {final_eval[k]:.4f}" for k in ("eval/wordsim353", "eval/simlex999", "eval/analogy"))
            outcome += f"; vectors in {VECTORS_FILE} (word2vec text format)"
        else:
            outcome = f"final validation loss {final_eval.get('eval/loss', float('nan')):.4f}"
        (workdir / checkpoint.RESULTS_FILE).write_text(json.dumps(final_eval, indent=2, sort_keys=True))
        log(f"done: step {c.num_steps}, {outcome}; workdir {workdir} (checkpoints, {metrics.JSONL}, {metrics.TB_DIR}/, "
            f"{plot.name}, {checkpoint.RESULTS_FILE})")
    return final_eval
