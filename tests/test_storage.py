"""gs:// workdirs end to end against a local GCS emulator (fake-gcs-server on 127.0.0.1, started by the
gcs_emulator fixture): train, SIGTERM, resume from the bucket's checkpoint, sample; and bad input in one
line."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from etils import epath

from lmjax import main, metrics

CONFIG = "experiments/configs/shakespeare_char.py:tiny"


def command(tiny_config, workdir, *extra) -> list[str]:
    values = {
        "data.text_files": tiny_config.data.text_files,
        "data.cache_dir": tiny_config.data.cache_dir,
        "train.num_steps": 24,
        "train.log_every": 1,
        "train.checkpoint_every": 4,
        "train.eval_every": 12,
        "train.sample_tokens": 8,
    }
    return [
        sys.executable,
        "-m",
        "lmjax.main",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in values.items()),
        *extra,
    ]


def losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r}


def test_train_stop_resume_and_sample_in_a_bucket(tiny_config, bucket, tmp_path):
    workdir = f"{bucket}/run"
    proc = subprocess.Popen(
        command(tiny_config, workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoints = epath.Path(workdir) / "checkpoints"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (checkpoints / "4" / "state").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == main.EXIT_PREEMPTED, out[-3000:]
    assert "preempted: saved the checkpoint of step" in out
    stopped_at = int(out.split("preempted: saved the checkpoint of step ")[1].split()[0])
    assert stopped_at < 24 and str(stopped_at) in {p.name for p in checkpoints.iterdir()}

    resumed = subprocess.run(command(tiny_config, workdir), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming at step {stopped_at}" in resumed.stdout
    run = epath.Path(workdir)
    names = {p.name for p in run.iterdir()}
    assert {
        "checkpoints",
        "config.json",
        "tokenizer",
        "metrics.jsonl",
        "tensorboard",
        "loss.png",
        "results.json",
    } <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert json.loads((run / "results.json").read_text())["eval/loss"] > 0

    local = tmp_path / "local"  # the same run uninterrupted on local disk: the resumed run matches it
    straight = subprocess.run(command(tiny_config, local), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    got, want = losses(workdir), losses(local)
    assert sorted(got) == list(range(1, 25))
    np.testing.assert_allclose([got[i] for i in range(1, 25)], [want[i] for i in range(1, 25)], rtol=2e-5)

    sampled = subprocess.run(
        command(tiny_config, workdir, "--config.mode=sample", "--config.sample.num_tokens=12"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert f"sample(s) from {workdir} at step 24" in sampled.stdout

    steps_before = sorted(p.name for p in checkpoints.iterdir())
    config_before = (run / "config.json").read_text()
    other = subprocess.run(
        command(tiny_config, workdir, "--config.model.num_layers=3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in other.stderr.splitlines() if line.startswith("error:")]
    assert other.returncode == 1 and len(errors) == 1, other.stderr[-2000:]
    assert (
        "holds a checkpoint of a different architecture (model.num_layers: checkpoint 2 vs config 3)"
        in errors[0]
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == steps_before
    assert (run / "config.json").read_text() == config_before


def one_line_error(tiny_config, workdir, env) -> str:
    result = subprocess.run(
        command(tiny_config, workdir), capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    return line


def test_unknown_bucket_is_one_line(tiny_config, bucket):
    line = one_line_error(tiny_config, "gs://no-such-bucket/run", dict(os.environ))
    assert line == (
        "error: gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist or these credentials "
        "cannot see it; create it (gcloud storage buckets create gs://no-such-bucket) or fix the URL"
    )


def test_missing_credentials_outside_an_emulator_is_one_line(tiny_config, tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")
    }
    env |= {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}  # no gcloud credentials file
    line = one_line_error(tiny_config, "gs://some-bucket/run", env)
    assert line.startswith(
        "error: gs://some-bucket/run: no Google Cloud credentials; run `gcloud auth "
        "application-default login`"
    )
