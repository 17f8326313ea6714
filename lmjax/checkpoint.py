"""Orbax CheckpointManager holding the train state and the grain iterator state, step by step.

Beside the checkpoints, a run's workdir holds its config (config.json) and tokenizer (tokenizer/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from typing import Any, Iterator

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from lmjax import storage
from lmjax.errors import InputError

CKPT_DIR, CONFIG_FILE, TOKENIZER_DIR = "checkpoints", "config.json", "tokenizer"
RESULTS_FILE = "results.json"  # a finished run's final metrics (pretraining or fine-tuning); sweeps read it


ITERATORS = (
    "data",
    "task_data",
)  # the data iterators a checkpoint may hold: pretraining / LM stream, task stream


def manager(workdir: epath.Path, *, keep: int) -> ocp.CheckpointManager:
    """Saves happen when the loop asks (it checks the state is finite first); the newest `keep` are kept."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(
        storage.local_absolute(epath.Path(workdir)) / CKPT_DIR,
        options=options,
        item_names=("state",) + ITERATORS,
    )


class _IteratorState:
    """Adapts a grain iterator to grain's checkpoint handler, which stores per-process JSON.

    Save: the state is read now, because Orbax writes in a background thread when the loop has moved on.
    Restore: JSON turns tuples into lists, which grain's packing state compares against tuples.
    """

    def __init__(self, data_iter: Any):
        self.data_iter = data_iter
        self.saved = json.dumps(data_iter.get_state(), indent=2).encode()

    def get_state(self) -> bytes:
        return self.saved

    def set_state(self, raw: bytes) -> None:
        self.data_iter.set_state(_tuples(json.loads(raw)))

    def start_prefetch(self) -> None:
        pass


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None, **iters: Any) -> bool:
    """Saves the state and the data iterators: `data_iter` as 'data', and keyword ones by name (ITERATORS)."""
    items = {"state": ocp.args.StandardSave(state)}
    for name, it in ({"data": data_iter} | iters).items():
        if it is not None:
            items[name] = grain.checkpoint.CheckpointSave(_IteratorState(it))
    return mngr.save(step, args=ocp.args.Composite(**items), force=True)


def start_step(mngr: ocp.CheckpointManager, requested: int = 0) -> int:
    """The step a run resumes from: the newest finished checkpoint (0: none), or `requested`
    (train.restore_step).
    Checkpoints newer than a requested one are moved aside, not deleted, to
    WORKDIR/set_aside_checkpoint_<step>_*,
    so that the run can save those steps again."""
    steps = mngr.all_steps()
    if not requested:
        return max(steps, default=0)
    if requested not in steps:
        raise InputError(
            f"train.restore_step={requested}: {mngr.directory} has no finished checkpoint of that step "
            f"(it has {sorted(steps) or 'none'})"
        )
    for newer in sorted(s for s in steps if s > requested):
        aside = mngr.directory.parent / f"set_aside_checkpoint_{newer}_{time.strftime('%Y%m%d-%H%M%S')}"
        (mngr.directory / str(newer)).rename(aside)
        print(f"checkpoint {newer} moved to {aside} (train.restore_step={requested})", flush=True)
    mngr.reload()
    return requested


def _read_error(e: BaseException) -> str:
    """The line of an exception chain that says what could not be read (TensorStore names the array and
    file)."""
    lines = []
    while e is not None and len(lines) < 20:
        lines += [line.strip(" :") for line in str(e).splitlines() if line.strip(" :")]
        e = e.__cause__ or e.__context__
    named = [line for line in lines if 'Error reading "' in line] + [
        line for line in lines if "reading" in line
    ]
    return (named or lines or ["unknown error"])[0].split(". See full")[0][:300]


class _FinishingLoop(asyncio.SelectorEventLoop):
    """An event loop that, asked to close, first cancels the tasks still pending on it and lets them end."""

    def close(self) -> None:
        left = asyncio.all_tasks(self) if not (self.is_running() or self.is_closed()) else set()
        for task in left:
            task.cancel()
        if left:
            self.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        super().close()


class _FinishingLoopPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = _FinishingLoop


@contextlib.contextmanager
def _loops_that_finish_their_tasks() -> Iterator[None]:
    """Orbax reads a checkpoint in a new event loop that it closes as soon as the read returns or fails
    (orbax.checkpoint._src.asyncio_utils.run_sync). After a damaged file fails one array's read, the reads of
    other arrays that had not started yet stay pending on the closed loop, and at exit Python reports each as
    a coroutine that was never awaited. Loops made meanwhile cancel and finish such tasks before closing."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_FinishingLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def restore(
    mngr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any | None, **iters: Any
) -> Any:
    """Restores the state (sharded like `abstract_state`) and, in place, the data iterators."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    for name, it in ({"data": data_iter} | iters).items():
        if it is not None:
            items[name] = grain.checkpoint.CheckpointRestore(_IteratorState(it))
    try:
        with _loops_that_finish_their_tasks():
            restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
        if "reading" not in _read_error(e).lower():
            raise InputError(
                f"the checkpoint at step {step} in {mngr.directory} does not fit this model "
                f"({str(e).splitlines()[0][:200]}); use a fresh --workdir or the run's own config"
            ) from None
        unreadable = e
    except Exception as e:  # noqa: BLE001  TensorStore raises plain Exceptions for a damaged file
        unreadable = e
    else:
        return restored["state"]
    older = [s for s in mngr.all_steps() if s < step]
    hint = (
        (
            f"resume from step {max(older)} with --config.train.restore_step={max(older)} (newer checkpoints "
            "are "
            "moved aside, nothing is deleted)"
        )
        if older
        else "no older checkpoint is left to resume from"
    )
    raise InputError(
        f"the checkpoint of step {step} ({mngr.directory / str(step)}) cannot be read "
        f"({_read_error(unreadable)}); {hint}"
    ) from None


class Preemption:
    """Tells the loop when to save and stop: SIGTERM (what a preempted VM or `scancel` sends) on one process;
    with several, JAX's preemption service, which turns a notice on any host into the same step on all.

    Use as a context manager; `reached(step)` is called once per step, after the step is dispatched.
    """

    def __init__(self, mngr: ocp.CheckpointManager):
        self.mngr, self.signalled, self.previous = mngr, False, None
        # Several processes: no Python handler, which would displace the one JAX's service listens with.
        self.own = jax.process_count() == 1 and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> "Preemption":
        if self.own:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.own:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def reached(self, step: int) -> bool:
        return self.signalled if self.own else self.mngr.reached_preemption(step)


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )


def restore_latest(workdir: epath.Path, abstract_state: Any, shardings: Any) -> tuple[Any, int]:
    """(state, step) of a workdir's latest checkpoint, sharded by `shardings` (no data iterator)."""
    step = saved_steps(workdir)[-1]
    abstract = abstract_with_shardings(abstract_state, shardings)
    return restore(manager(workdir, keep=1), step, abstract, None), step


def write_results(workdir: epath.Path, result: dict) -> epath.Path:
    """results.json: a run's or an evaluation's final figures (what sweeps read)."""
    path = epath.Path(workdir) / RESULTS_FILE
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return path


def saved_steps(workdir: epath.Path) -> list[int]:
    """The steps with a finished checkpoint, oldest first (without opening a manager, which creates dirs); in
    a bucket too, where a step's directory exists before its save has finished."""
    return sorted(ocp.path.step.checkpoint_steps(epath.Path(workdir) / CKPT_DIR))


def save_config(workdir: epath.Path, config: ConfigDict) -> None:
    (epath.Path(workdir) / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: epath.Path) -> dict | None:
    path = epath.Path(workdir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.exists() else None
