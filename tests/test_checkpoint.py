"""Checkpoints that cannot be read: one line naming the step, and train.restore_step to resume from an older
one exactly, with the newer checkpoints moved aside rather than deleted."""

import asyncio
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmjax import checkpoint, errors, metrics
from lmjax.modes import train as train_mode


def losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r}


@pytest.fixture
def config(tiny_config):
    tiny_config.train.update(
        num_steps=30, checkpoint_every=10, eval_every=100, log_every=1, sample_tokens=0, keep_checkpoints=5
    )
    tiny_config.model.dropout = 0.1
    return tiny_config


def test_unreadable_newest_checkpoint_is_one_line_and_restore_step_resumes_exactly(config, tmp_path):
    train_mode.run(config, tmp_path / "straight")
    ref = losses(tmp_path / "straight")
    run = tmp_path / "run"
    shutil.copytree(
        tmp_path / "straight", run
    )  # the same finished run, whose newest checkpoint is then damaged
    newest = run / "checkpoints" / "30"
    damaged = sorted(newest.glob("state/ocdbt.process_0/d/*"))
    assert damaged
    for path in damaged:
        path.write_bytes(b"\0" * 100)
    files_before = sorted(p.relative_to(newest) for p in newest.rglob("*"))

    overrides = {
        "data.text_files": config.data.text_files,
        "data.cache_dir": config.data.cache_dir,
        "train.num_steps": 30,
        "train.checkpoint_every": 10,
        "train.log_every": 1,
        "train.eval_every": 100,
        "train.sample_tokens": 0,
        "model.dropout": 0.1,
        "train.keep_checkpoints": 5,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmjax.main",
            "--config=experiments/configs/shakespeare_char.py:tiny",
            f"--workdir={run}",
            *(f"--config.{k}={v}" for k, v in overrides.items()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    line = result.stderr.strip()
    assert line.startswith(f"error: the checkpoint of step 30 ({newest}) cannot be read (")
    assert line.endswith(
        "resume from step 20 with --config.train.restore_step=20 (newer checkpoints are moved "
        "aside, nothing is deleted)"
    )
    assert checkpoint.saved_steps(run) == [10, 20, 30]  # nothing was touched

    config.train.restore_step = 20
    train_mode.run(config, run)
    got = losses(run)
    assert sorted(got) == list(range(1, 31))
    np.testing.assert_allclose([got[s] for s in range(1, 31)], [ref[s] for s in range(1, 31)], rtol=2e-5)
    (aside,) = run.glob("set_aside_checkpoint_30_*")
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == files_before
    assert checkpoint.saved_steps(run) == [10, 20, 30]


def test_restore_step_that_was_not_saved_is_one_clear_error(config, tmp_path):
    config.train.update(num_steps=10, restore_step=5)
    with pytest.raises(
        errors.InputError,
        match=r"train.restore_step=5: .* has no finished checkpoint of that step "
        r"\(it has none\)",
    ):
        train_mode.run(config, tmp_path)


def run_in_a_new_loop(coro):
    """As Orbax runs a read: a new event loop, closed as soon as the coroutine returns or raises."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_a_failed_read_leaves_no_task_pending_on_its_closed_loop():
    """The cause of the damaged-checkpoint error's stray lines: a read that fails while others it started have
    not run yet leaves them pending on a closed loop (reported at exit as never awaited); inside
    checkpoint.restore the loop cancels and ends them first."""
    left = []

    async def other_read():
        await asyncio.sleep(0)

    async def read():
        left.append(asyncio.ensure_future(other_read()))
        raise OSError("damaged")

    with checkpoint._loops_that_finish_their_tasks(), pytest.raises(OSError, match="damaged"):
        run_in_a_new_loop(read())
    assert left[0].cancelled()
