"""The training loop, one for every mode, and the engine it drives.

A mode (lmjax/modes/train.py, finetune.py) builds an `Engine` (state layout and compiled steps:
lmjax.training.pretrain.setup, lmjax.training.finetune.setup), opens a `Run` on its workdir and hands
`Run.loop` three functions: its step (which reads its own batches), its evaluation and its checkpoint save.
The loop owns the cadence: step metrics read one step behind dispatch (the host never waits for the device), a
stop on a non-finite loss before anything is saved, evaluation every train.eval_every steps and once at the
end, checkpoints every train.checkpoint_every steps and at the end, and checkpoint-and-stop on preemption."""

from __future__ import annotations

import dataclasses
import os
import tempfile
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

from lmjax import checkpoint, metrics, parallel, sharding
from lmjax import config as config_lib
from lmjax.errors import InputError
from lmjax.training import optim


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # base key; step n uses fold_in(rng, n), so a resumed run draws the same numbers


def make_init(build: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation):
    """(graphdef, init(rng) -> TrainState, abstract TrainState) for the model that `build` makes."""

    def init(rng: jax.Array) -> TrainState:
        params = nnx.state(build(nnx.Rngs(params=rng)), nnx.Param)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.fold_in(rng, 1),
        )

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
    return graphdef, init, jax.eval_shape(init, jax.random.PRNGKey(0))


@dataclasses.dataclass
class Engine:
    """Everything a run derives from its config: model structure, optimizer, shardings, compiled steps.

    The loop keeps the state in the engine's form: `to_engine` / `from_engine` convert from / to the sharded
    global form that init, checkpoints and evaluation use (the identity under jit; under pmap, one copy per
    local device). `device_batch` turns this process's NumPy batch into step input.
    """

    config: ConfigDict
    layout: sharding.Layout
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    state_shardings: Any
    abstract_state: Any
    init: Callable  # rng -> TrainState, created sharded
    train_step: Callable  # (state, *batches) -> (state, metrics)
    eval_step: Callable  # (params, batch) -> summable stats
    loss_fn: Callable  # the unjitted loss the step differentiates (for tests and analysis)
    backbone_eval_step: Callable | None = None  # fine-tuning: the pretraining objective on the backbone
    predict_step: Callable | None = None  # fine-tuning: (params, batch) -> (summable stats, the outputs)
    teacher: Any = None  # distillation: the lmjax.training.distill.Teacher the train step runs

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
        if self.pmap:
            return parallel.split_for_pmap(local_batch)
        return sharding.global_batch(local_batch, self.layout)


def build_engine(
    config: ConfigDict,
    layout: sharding.Layout,
    build: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    compile_steps: Callable[[nnx.GraphDef, Any, Any], dict[str, Callable]],
) -> Engine:
    """The engine of the model `build` makes, its state laid out by the sharding rules:
    `compile_steps(graphdef, abstract state, state shardings)` gives the mode's steps (train_step, eval_step,
    loss_fn and optionally backbone_eval_step)."""
    graphdef, init, abstract_state = make_init(build, tx)
    shardings = sharding.state_shardings(abstract_state, layout)
    steps = compile_steps(graphdef, abstract_state, shardings)
    init = jax.jit(init, out_shardings=shardings)
    return Engine(config, layout, graphdef, tx, shardings, abstract_state, init, **steps)


PROFILE_DIR = "profile"


def device_kind() -> str:
    return jax.devices()[0].device_kind


class NonFiniteLoss(InputError, RuntimeError):
    """The loss or gradient norm became NaN or inf: the hyperparameters need changing (one line)."""


class StepLog:
    """Reads step metrics one step behind dispatch, fails fast on NaN, and writes means every log_every
    steps: with the model FLOPs of a step, also TFLOP/s per device and MFU (on chips of known peak)."""

    def __init__(
        self, run: Run, tokens_per_step: int, flops_per_step: float | None = None, shares: dict | None = None
    ):
        self.run, self.tokens_per_step, self.flops_per_step = run, tokens_per_step, flops_per_step
        self.shares = shares or {}  # name -> seconds a step spends on it: logged as its share of a step
        self.peak_tflops = metrics.peak_tflops(device_kind())
        self.history: list[dict] = []
        self.since = (run.start, time.perf_counter())  # (step, time) the tokens/s interval starts at
        self.schedule = optim.schedule(run.config.optim, run.config.train.num_steps)

    def settle(self, step: int, device_metrics: dict) -> None:
        m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            self.run.mngr.wait_until_finished()
            saved = self.run.mngr.latest_step()
            kept = (
                f"the last good checkpoint (step {saved}) is untouched and a rerun resumes there"
                if saved
                else "no checkpoint was saved yet, so a rerun starts afresh"
            )
            raise NonFiniteLoss(
                f"loss became {m['loss']} (grad norm {m['grad_norm']}) at step {step}; stopped without "
                "saving; "
                f"{kept}. Lower optim.learning_rate or raise optim.warmup_steps, then rerun"
            )
        self.history.append(m)
        train_config = self.run.config.train
        if step % train_config.log_every == 0 or step == train_config.num_steps:
            now = time.perf_counter()
            mean = {f"train/{k}": float(np.mean([h[k] for h in self.history])) for k in self.history[0]}
            seconds = max(now - self.since[1], 1e-9)
            mean["train/tokens_per_s"] = (step - self.since[0]) * self.tokens_per_step / seconds
            if self.flops_per_step:
                tflops = (step - self.since[0]) * self.flops_per_step / seconds / jax.device_count() / 1e12
                mean["train/tflops_per_device"] = tflops
                if self.peak_tflops:
                    mean["train/mfu"] = tflops / self.peak_tflops
            for name, part in self.shares.items():
                mean[f"train/{name}_time_share"] = part * (step - self.since[0]) / seconds
            mean["train/learning_rate"] = float(self.schedule(step - 1))
            self.run.writer.scalars(step, mean)
            self.run.progress.update(step, mean["train/loss"], mean["train/tokens_per_s"])
            self.history.clear()
            self.since = (step, now)

    def exclude(self, seconds: float) -> None:
        """Keeps time spent on evaluation and checkpointing out of tokens/s."""
        self.since = (self.since[0], self.since[1] + seconds)


class Profiler:
    """A jax.profiler trace of the steps first..last (train.profile_steps) in <workdir>/profile; a bucket
    workdir gets the trace copied up when it ends."""

    def __init__(self, workdir: epath.Path, steps: tuple[int, int] | None):
        self.dir, self.steps, self.local = workdir / PROFILE_DIR, steps, None

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0]:
            in_bucket = "://" in os.fspath(self.dir)  # the profiler writes local files only
            self.local = epath.Path(tempfile.mkdtemp(prefix="lmjax-profile-") if in_bucket else self.dir)
            jax.profiler.start_trace(os.fspath(self.local))

    def after(self, step: int, step_metrics: dict) -> None:
        if self.local is not None and step == self.steps[1]:
            jax.block_until_ready(step_metrics)
            self.stop()

    def stop(self) -> None:
        if self.local is None:
            return
        jax.profiler.stop_trace()
        if self.local != self.dir:
            for f in self.local.rglob("*"):
                if f.is_file():
                    target = self.dir / f.relative_to(self.local)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(f.read_bytes())
        self.local = None

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()  # a run that ends (or fails) inside the range still gets its trace


class Run:
    """One run's outputs on its workdir: the config, checkpoints, metrics (JSONL, TensorBoard), results and
    the console. Opening it saves the config and finds the step to start from (train.restore_step or the
    newest checkpoint); leaving it waits for checkpoint writes and closes the writers."""

    def __init__(self, config: ConfigDict, workdir: epath.Path):
        self.config, self.workdir = config, workdir
        self.lead = jax.process_index() == 0
        self.mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
        if self.lead:
            checkpoint.save_config(workdir, config)
        self.start = checkpoint.start_step(self.mngr, config.train.restore_step)
        self.writer = metrics.Writer(workdir, resume_step=self.start, enabled=self.lead)
        self.progress = metrics.Progress(
            self.start, config.train.num_steps, enabled=self.lead and config.train.progress
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.mngr.wait_until_finished()
        self.progress.close()
        self.writer.close()

    def log(self, line: str) -> None:
        if self.lead:
            self.progress.write(line)

    def restore(self, engine: Engine, data_iter: Any | None, **iters: Any) -> TrainState:
        """The state of the start step, sharded as the engine lays it out; the data iterators in place."""
        abstract = checkpoint.abstract_with_shardings(engine.abstract_state, engine.state_shardings)
        return checkpoint.restore(self.mngr, self.start, abstract, data_iter, **iters)

    def evaluate(
        self, evaluate: Callable[[int, Any, bool], dict], step: int, state: Any, final: bool
    ) -> dict:
        """Runs a mode's evaluation; writes and logs its numbers and texts (e.g. a sample); returns the
        numbers."""
        result = evaluate(step, state, final)
        numbers = {k: v for k, v in result.items() if not isinstance(v, str)}
        self.writer.scalars(step, numbers)
        line = f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in numbers.items())
        for name, text in result.items():
            if isinstance(text, str):
                self.writer.text(step, name, text)
                line += f"\n--- {name} ---\n{text}\n--------------"
        self.log(line)
        return numbers

    def loop(
        self,
        state: Any,
        train_step: Callable[[Any], tuple[Any, dict]],
        evaluate: Callable[[int, Any, bool], dict],
        save: Callable[[int, Any], None],
        tokens_per_step: int,
        flops_per_step: float | None = None,
        shares: dict[str, float] | None = None,
    ) -> tuple[Any, dict]:
        """Steps start + 1 ... train.num_steps. `train_step(state)` reads its batches and dispatches one step;
        `evaluate(step, state, final)` returns metrics (final: the end of training); `save(step, state)`
        writes a checkpoint. Returns the state and the final evaluation, or {"preempted_at": step} after a
        preemption (the checkpoint of that step saved; the same command resumes). `flops_per_step`: the
        model FLOPs of one step, for TFLOP/s and MFU in the log; `shares`: seconds a step spends on a named
        part (a distillation teacher's forward pass), logged as train/<name>_time_share."""
        train_config = self.config.train
        steps = StepLog(self, tokens_per_step, flops_per_step, shares)
        profiler = Profiler(self.workdir, config_lib.profile_range(train_config.profile_steps))
        pending = None  # (step, device metrics) of the step dispatched before the current one
        with checkpoint.Preemption(self.mngr) as preemption, profiler:
            for step in range(self.start + 1, train_config.num_steps + 1):
                profiler.before(step)
                state, step_metrics = train_step(state)
                profiler.after(step, step_metrics)
                if pending is not None:
                    steps.settle(*pending)
                pending = (step, step_metrics)
                is_last, preempted = step == train_config.num_steps, preemption.reached(step)
                do_eval = not (is_last or preempted) and step % train_config.eval_every == 0
                do_save = is_last or preempted or step % train_config.checkpoint_every == 0
                if do_eval or do_save:
                    steps.settle(*pending)  # sync: the state about to be evaluated or saved must be finite
                    pending, paused_at = None, time.perf_counter()
                    if do_eval:
                        self.evaluate(evaluate, step, state, False)
                    if do_save:
                        save(step, state)
                    steps.exclude(time.perf_counter() - paused_at)
                if preempted and not is_last:
                    self.mngr.wait_until_finished()
                    self.log(
                        f"preempted: saved the checkpoint of step {step} and stopped; the same command "
                        "resumes it"
                    )
                    return state, {"preempted_at": step}
        return state, self.evaluate(evaluate, max(self.start, train_config.num_steps), state, True)

    def write_results(self, result: dict, outcome: str) -> None:
        """results.json (what sweeps read) and the closing line."""
        if self.lead:
            checkpoint.write_results(self.workdir, result)
            self.log(f"done: step {self.config.train.num_steps}, {outcome}")
