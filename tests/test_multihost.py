"""Multi-host through jax.distributed (2 local processes x 4 CPU devices, gloo), preemption by SIGTERM, and a
checkpoint restored under other meshes: each continues with the losses of one uninterrupted run."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lmjax import main, metrics
from lmjax.data import corpora
from lmjax.modes import train as train_mode

CONFIG = "experiments/configs/shakespeare_char.py:tiny"


def losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r}


def flags(config, workdir, **overrides) -> list[str]:
    values = {
        "data.text_files": config.data.text_files,
        "data.cache_dir": config.data.cache_dir,
        "train.log_every": 1,
        "train.checkpoint_every": 4,
        "train.eval_every": 100,
        "train.sample_tokens": 0,
        "data.shards": 2,
    } | overrides
    return [f"--config={CONFIG}", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in values.items()]


def env(devices: int) -> dict:
    """A process's environment with `devices` CPU devices (tests/conftest.py's other XLA flags kept)."""
    flags = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
    return dict(
        os.environ,
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )


def reference(config, workdir, steps: int) -> dict[int, float]:
    """One process, all 8 devices, uninterrupted (it also builds the corpus cache the other runs share)."""
    config.train.update(num_steps=steps, log_every=1, checkpoint_every=4, eval_every=100, sample_tokens=0)
    config.data.shards = 2
    train_mode.run(config, workdir)
    return losses(workdir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(config, workdir, steps: int, **overrides) -> list[subprocess.Popen]:
    port = free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmjax.main",
                *flags(
                    config,
                    workdir,
                    **{
                        "train.num_steps": steps,
                        "distributed.coordinator_address": f"127.0.0.1:{port}",
                        "distributed.num_processes": 2,
                        "distributed.process_id": i,
                    }
                    | overrides,
                ),
            ],
            env=env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def finish(procs: list[subprocess.Popen], code: int = 0) -> list[str]:
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:  # a hung pair ignores SIGTERM (it means "save and stop" to lmjax): not left running
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == code, out[-3000:]
    return outputs


def two_processes(config, workdir, steps: int) -> None:
    finish(start_two_processes(config, workdir, steps))


def test_two_processes_train_checkpoint_and_resume_like_one(tiny_config, tmp_path_factory):
    ref = reference(tiny_config, tmp_path_factory.mktemp("reference"), steps=8)
    workdir = tmp_path_factory.mktemp("multihost")
    two_processes(tiny_config, workdir, steps=4)  # saves step 4 cooperatively
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    two_processes(tiny_config, workdir, steps=8)  # restores step 4 (model + both processes' data iterators)
    got = losses(workdir)
    assert sorted(got) == list(range(1, 9))
    np.testing.assert_allclose([got[i] for i in range(1, 9)], [ref[i] for i in range(1, 9)], rtol=2e-5)


@pytest.mark.slow  # two processes again (the suite's 10-minute budget): make test-slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_one_checkpoint(tiny_config, tmp_path):
    corpora.load(tiny_config.data)  # built here, not by both processes at once
    procs = start_two_processes(tiny_config, tmp_path, 10**6, **{"train.checkpoint_every": 10**6})
    deadline = time.time() + 240
    while len(losses(tmp_path)) < 3 and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.1)
    procs[0].send_signal(signal.SIGTERM)  # JAX's preemption service tells the other process
    outputs = finish(procs, code=main.EXIT_PREEMPTED)
    reached = max(losses(tmp_path))
    assert [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == [reached]
    assert f"preempted: saved the checkpoint of step {reached} and stopped" in outputs[0]
    assert all(f"Reached preemption sync point, step={reached}" in out for out in outputs)


def test_checkpoint_restores_under_other_meshes(tiny_config, tmp_path):
    """data=8 -> fsdp=4,tensor=2 -> one device, continuing the same losses."""
    import jax

    tiny_config.train.update(num_steps=6, log_every=1, checkpoint_every=2, eval_every=100, sample_tokens=0)
    straight = tmp_path / "straight"
    train_mode.run(tiny_config, straight)
    moved = tmp_path / "moved"
    for steps, mesh, devices in (
        (2, (8, 1, 1), None),
        (4, (1, 4, 2), None),
        (6, (1, 1, 1), jax.devices()[:1]),
    ):
        tiny_config.train.num_steps = steps
        tiny_config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
        train_mode.run(tiny_config, moved, devices=devices)
    a, b = losses(straight), losses(moved)
    assert sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[i] for i in range(1, 7)], [a[i] for i in range(1, 7)], rtol=2e-5)


def test_sigterm_saves_at_the_step_reached_and_exits_cleanly(tiny_config, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "lmjax.main",
        *flags(tiny_config, tmp_path, **{"train.num_steps": 10**6, "train.checkpoint_every": 10**6}),
    ]
    proc = subprocess.Popen(cmd, env=env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while len(losses(tmp_path)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == main.EXIT_PREEMPTED == 75, out[-3000:]
    reached = max(losses(tmp_path))
    assert [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == [reached]
    assert f"preempted: saved the checkpoint of step {reached} and stopped" in out


def test_preempted_run_resumes_with_the_losses_of_an_uninterrupted_one(tiny_config, tmp_path, monkeypatch):
    ref = reference(tiny_config, tmp_path / "straight", steps=12)
    real_scalars = metrics.Writer.scalars

    def scalars_then_preempt(self, step, values):  # the signal arrives while step 5 is being logged
        real_scalars(self, step, values)
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics.Writer, "scalars", scalars_then_preempt)
    result = train_mode.run(tiny_config, tmp_path / "preempted")
    assert result == {"preempted_at": 6}  # the step after the signal is the boundary it saves at
    monkeypatch.setattr(metrics.Writer, "scalars", real_scalars)
    train_mode.run(tiny_config, tmp_path / "preempted")
    got = losses(tmp_path / "preempted")
    np.testing.assert_allclose([got[i] for i in range(1, 13)], [ref[i] for i in range(1, 13)], rtol=2e-5)
