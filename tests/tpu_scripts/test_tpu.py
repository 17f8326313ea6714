"""tpu_scripts/tpu.py against a fake `gcloud` on PATH that records its arguments and plays a scripted
cloud."""

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE = """#!{python}
import json, sys
from pathlib import Path
here = Path(__file__).parent
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
script = json.loads((here / "cloud.json").read_text())
def pop(key, default):
    value = script[key].pop(0) if script.get(key) else default
    (here / "cloud.json").write_text(json.dumps(script))
    return value
if "describe" in args:
    state = pop("states", "READY")
    if state == "NOT_FOUND":
        sys.exit(1)
    print(state)
elif "ssh" in args and any("lmjax.main" in a for a in args):
    sys.exit(pop("train_exits", 0))
"""
BASE = ["--name=lm", "--zone=us-west4-a", "--repo=https://example.org/lmjax.git", "--ref=abc123"]


@pytest.fixture
def cloud(tmp_path):
    (tmp_path / "gcloud").write_text(FAKE.format(python=sys.executable))
    (tmp_path / "gcloud").chmod(stat.S_IRWXU)

    def run(*args, **script):
        (tmp_path / "cloud.json").write_text(json.dumps(script))
        (tmp_path / "calls.jsonl").write_text("")
        env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        result = subprocess.run(
            [sys.executable, str(ROOT / "tpu_scripts/tpu.py"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
        return result, calls

    return run


def test_dry_run_prints_the_exact_commands_and_runs_nothing(cloud):
    result, calls = cloud("create", *BASE, "--accelerator=v5litepod-8", "--spot", "--dry-run")
    assert result.returncode == 0 and calls == []
    assert result.stdout.strip() == (
        "+ gcloud compute tpus tpu-vm create lm --zone=us-west4-a "
        "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite --spot"
    )
    result, calls = cloud(
        "run",
        *BASE,
        "--accelerator=v4-16",
        "--workdir=gs://b/r",
        "--dry-run",
        "--",
        "--config=experiments/configs/gpt.py:124m",
    )
    assert result.returncode == 0 and calls == []
    printed = [line for line in result.stdout.splitlines() if line.startswith("+ gcloud")]
    assert len(printed) == 6 and "tpu-vm create lm" in printed[1] and "--worker=all" in printed[3]


def test_each_action_calls_gcloud_with_its_arguments(cloud):
    _, calls = cloud("create", *BASE, "--accelerator=v5p-128", "--queued", "--spot")
    assert calls == [
        [
            "compute",
            "tpus",
            "queued-resources",
            "create",
            "lm",
            "--node-id=lm",
            "--zone=us-west4-a",
            "--accelerator-type=v5p-128",
            "--runtime-version=v2-alpha-tpuv5",
            "--spot",
        ]
    ]
    _, calls = cloud("setup", *BASE, "--project=my-project")
    (ssh,) = calls
    assert ssh[:7] == ["compute", "tpus", "tpu-vm", "ssh", "lm", "--zone=us-west4-a", "--project=my-project"]
    assert ssh[7] == "--worker=all"
    command = ssh[8].removeprefix("--command=")
    assert command.startswith("bash -c ") and command.endswith(
        " setup_worker.sh https://example.org/lmjax.git abc123"
    )
    assert (ROOT / "tpu_scripts/setup_worker.sh").read_text() in shlex.split(command)
    assert "gcsfuse" not in command
    _, calls = cloud(
        "launch",
        *BASE,
        "--workdir=gs://my-bucket/runs/a",
        "--",
        "--config=experiments/configs/gpt.py:124m",
        "--config.train.num_steps=10",
    )
    command = calls[0][7]
    assert (
        calls[0][6] == "--worker=all"
        and "nohup .venv/bin/python -m lmjax.main --workdir=gs://my-bucket/runs/a "
        "--config=experiments/configs/gpt.py:124m --config.train.num_steps=10 --config.distributed.enable=yes"
        in command
    )
    assert command.endswith("> ~/lmjax.log 2>&1 < /dev/null &")
    result, calls = cloud(
        "launch", *BASE, "--wait", "--workdir=gs://my-bucket/runs/a", "--", "--config=c.py", train_exits=[75]
    )
    assert result.returncode == 75 and calls[0][7].endswith("2>&1 | tee ~/lmjax.log; exit ${PIPESTATUS[0]}")
    _, calls = cloud("stop", *BASE)
    assert calls[0][6:] == ["--worker=all", "--command=pkill -TERM -f lmjax.main || true"]
    _, calls = cloud("logs", *BASE, "--worker=1")
    assert calls[0][6:] == ["--worker=1", "--command=tail -n 200 -F ~/lmjax.log"]
    _, calls = cloud("ssh", *BASE, "--", "gcloud", "storage", "cp", "-r", "gs://b/tfds", "~/")
    assert calls[0][6:] == ["--worker=all", "--command=gcloud storage cp -r gs://b/tfds ~/"]
    _, calls = cloud("delete", *BASE)
    assert calls == [["compute", "tpus", "tpu-vm", "delete", "lm", "--zone=us-west4-a", "--quiet"]]


def test_run_recreates_a_preempted_vm_and_relaunches_until_the_training_succeeds(cloud):
    result, calls = cloud(
        "run",
        *BASE,
        "--accelerator=v5litepod-8",
        "--spot",
        "--workdir=gs://b/r",
        "--poll-seconds=0",
        "--",
        "--config=c.py",
        states=["NOT_FOUND", "READY", "PREEMPTED", "PREEMPTED", "READY", "READY"],
        train_exits=[255, 75, 0],
    )
    assert result.returncode == 0, result.stderr
    kinds = [c[3] if c[3] != "ssh" else ("train" if "lmjax.main" in c[7] else "setup") for c in calls]
    assert kinds == [
        "describe",
        "create",
        "describe",
        "setup",
        "train",
        "describe",  # preempted mid-run
        "describe",
        "delete",
        "create",
        "describe",
        "setup",
        "train",
        "describe",  # SIGTERM: exit 75
        "describe",
        "describe",
        "setup",
        "train",
        "describe",
    ]
    assert "attempt 1 ended with exit 255, VM PREEMPTED; resuming from the last checkpoint" in result.stdout
    assert "attempt 2 ended with exit 75, VM READY; resuming from the last checkpoint" in result.stdout
    assert "run: finished (attempt 3)" in result.stdout


def test_run_stops_when_the_training_fails_on_a_running_vm(cloud):
    result, calls = cloud(
        "run",
        *BASE,
        "--workdir=gs://b/r",
        "--poll-seconds=0",
        "--",
        "--config=c.py",
        states=["READY", "READY", "READY"],
        train_exits=[1, 0],
    )
    assert (
        result.returncode == 1
        and "the training failed with exit 1 on a running VM; not retrying" in result.stderr
    )
    assert sum("lmjax.main" in c[-1] for c in calls) == 1


def test_setup_refuses_a_commit_that_is_not_pushed(cloud, tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "local"], check=True)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tpu_scripts/tpu.py"),
            "setup",
            "--zone=z",
            "--repo=https://example.org/lmjax.git",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "is not on any branch of origin; `git push` it first" in result.stderr.strip().splitlines()[-1]


def test_missing_arguments_fail_with_one_line(cloud):
    result, calls = cloud("launch", *BASE)
    assert result.returncode == 2 and calls == []
    assert "launch needs --workdir and the lmjax.main arguments after --" in result.stderr.splitlines()[-1]
