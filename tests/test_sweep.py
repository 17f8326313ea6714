"""experiments/sweep.py: grids, one-line errors, local runs that skip finished ones, the README's lambda sweep
in its smoke form with gs:// paths, and --launch=tpu through tpu_scripts/tpu.py against a fake gcloud."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import sweep
from lmjax import config as config_lib

ROOT = Path(__file__).resolve().parents[1]


def test_grid_expands_to_every_combination_with_tied_keys():
    points = sweep.expand(
        {
            "finetune.pretrain_lambda": [0.0, 1.0],
            "seed": [0, 1],
            ("optim.learning_rate", "optim.warmup_steps"): [(1e-3, 10), (1e-4, 0)],
        }
    )
    assert len(points) == 8 and points[0] == {
        "finetune.pretrain_lambda": 0.0,
        "seed": 0,
        "optim.learning_rate": 1e-3,
        "optim.warmup_steps": 10,
    }
    assert len({sweep.run_name(p) for p in points}) == 8


def write_sweep(tmp_path, grid, config):
    path = tmp_path / "s.py"
    path.write_text(
        f"def get_sweep():\n    return dict(config={config!r}, grid={grid!r}, x='optim.learning_rate',\n"
        f"                metrics=('eval/loss',), overrides={{'train.num_steps': 3}})\n"
    )
    return path


def run_sweep(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_unknown_sweep_key_is_one_line_and_runs_nothing(tmp_path):
    path = write_sweep(
        tmp_path, {"optim.learning_rat": [0.1]}, "experiments/configs/shakespeare_char.py:tiny"
    )
    result = run_sweep(f"--sweep={path}", f"--outdir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown sweep key 'optim.learning_rat'; did you mean 'optim.learning_rate'? "
        "(keys are config paths such as finetune.pretrain_lambda)"
    ]
    assert not (tmp_path / "out").exists()


def test_sweep_runs_skips_finished_and_writes_table_and_plot(tmp_path, corpus_file, cache_dir):
    path = write_sweep(
        tmp_path, {"optim.learning_rate": [1e-3, 3e-3]}, "experiments/configs/shakespeare_char.py:tiny"
    )
    out = tmp_path / "out"
    sets = [
        f"--set=data.text_files={corpus_file}",
        f"--set=data.cache_dir={cache_dir}",
        "--set=train.eval_batches=2",
    ]
    printed = run_sweep(f"--sweep={path}", f"--outdir={out}", "--launch=print", *sets)
    assert printed.returncode == 0 and len(printed.stdout.strip().splitlines()) == 2
    assert "--config.optim.learning_rate=0.003" in printed.stdout and not out.exists()
    first = run_sweep(f"--sweep={path}", f"--outdir={out}", *sets)
    assert first.returncode == 0, first.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {
        "results.csv",
        "results.md",
        "results.png",
        "learning_rate=0.001",
    }
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == "optim.learning_rate,eval/loss" and len(lines) == 3
    assert json.loads((out / "learning_rate=0.003" / "results.json").read_text())["eval/loss"] > 0
    again = run_sweep(f"--sweep={path}", f"--outdir={out}", *sets)
    assert again.stdout.count("finished, skipped") == 2


def upload(local: Path, url: str) -> None:
    """Copies a local run directory into a bucket, file by file."""
    from etils import epath

    for path in local.rglob("*"):
        if path.is_file():
            (epath.Path(url) / path.relative_to(local).as_posix()).write_bytes(path.read_bytes())


@pytest.mark.slow  # ~80 s; test_storage.py keeps a bucket run (train, resume, sample) in the default suite
def test_readme_lambda_sweep_smoke_in_a_bucket_from_a_pretrained_run_in_a_bucket(
    bert_workdir, cache_dir, gcs_emulator, monkeypatch
):
    """The README's two commands (pretrain, sweep) in their smoke form, every path a gs:// URL."""
    url, bucket = gcs_emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    upload(bert_workdir, f"{bucket}/bert_mlm")
    out = f"{bucket}/sweeps/lambda_smoke"
    args = [
        "--sweep=experiments/sweeps/lambda_bert_mlm.py:smoke",
        f"--outdir={out}",
        f"--set=finetune.init={bucket}/bert_mlm",
        f"--set=data.cache_dir={cache_dir}",
    ]
    result = run_sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 2 of 2 runs finished" in result.stdout
    from etils import epath

    from lmjax import storage

    storage.use_emulator()
    table = (epath.Path(out) / "results.md").read_text()
    assert "| finetune.pretrain_lambda | test/accuracy | pretrain/heldout_loss | runs |" in table
    assert {p.name for p in epath.Path(out).iterdir()} >= {
        "pretrain_lambda=0.0,seed=0",
        "pretrain_lambda=0.3,seed=0",
        "results.csv",
        "results.md",
        "results.png",
    }
    again = run_sweep(*args)
    assert again.stdout.count("finished, skipped") == 2


FAKE_GCLOUD = '''#!{python}
"""A TPU VM whose training writes a finished run's results.json into the workdir (a bucket on the
emulator)."""
import json, re, sys
from etils import epath
from lmjax import storage
command = sys.argv[-1]
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
workdir = re.search(r"--workdir=(\\S+)", command).group(1)
storage.use_emulator()
lam = float(re.search(r"--config.finetune.pretrain_lambda=(\\S+)", command).group(1))
(epath.Path(workdir) / "results.json").write_text(json.dumps({{"test/accuracy": 0.5 + lam / 10,
                                                               "pretrain/heldout_loss": 6.0 - lam}}))
'''


@pytest.mark.slow  # ~20 s; test_sweep_runs_skips_finished... runs a sweep in the default suite
def test_launch_on_tpus_runs_each_point_through_tpu_py_and_tabulates_from_the_bucket(
    tmp_path, gcs_emulator, monkeypatch
):
    url, bucket = gcs_emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    out = f"{bucket}/sweeps/on_tpus"
    args = [
        "--sweep=experiments/sweeps/lambda_bert_mlm.py",
        f"--outdir={out}",
        "--launch=tpu",
        "--tpu=vm-a,vm-b",
        "--zone=us-west4-a",
    ]
    dry = run_sweep(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    lines = dry.stdout.strip().splitlines()
    assert len(lines) == 10 and all(
        line.startswith(f"python {ROOT / 'tpu_scripts/tpu.py'} launch --name=vm-") for line in lines
    )
    assert (
        f"launch --name=vm-b --zone=us-west4-a --wait --workdir={out}/pretrain_lambda=0.0,seed=1 -- "
        "--config=experiments/configs/finetune_bert_mlm.py --config.finetune.pretrain_lambda=0.0 "
        "--config.seed=1"
    ) in lines[1]

    (tmp_path / "gcloud").write_text(
        FAKE_GCLOUD.format(python=sys.executable, log=str(tmp_path / "calls.jsonl"))
    )
    (tmp_path / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = run_sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 10 and {c[4] for c in calls} == {"vm-a", "vm-b"}
    assert "sweep: 10 of 10 runs finished" in result.stdout
    # means over the two seeds, read from the bucket; the metric no run reported is "-"
    assert "| 3.0 | 0.8000 ± 0.0000 | - | 3.0000 ± 0.0000 | 2 |" in result.stdout
    assert "| 3.0 | 1 | 0.8000 | - | 3.0000 |" in result.stdout
    rerun = run_sweep(*args)
    assert rerun.returncode == 0 and len((tmp_path / "calls.jsonl").read_text().splitlines()) == 10


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "sweeps").glob("*.py")), ids=lambda p: p.name)
def test_every_committed_sweep_names_keys_its_config_has(path):
    spec = sweep.load_sweep(str(path))
    points = sweep.expand(spec["grid"])
    sweep.check_keys(list(points[0]) + list(spec.get("overrides", {})), config_lib.load(spec["config"]))


def test_every_run_table_prints_swept_values_as_given(tmp_path):
    rows = [
        {"optim.learning_rate": 5e-05, "eval/loss": 1.23456},
        {"optim.learning_rate": 1e-4, "eval/loss": 2.0},
    ]
    sweep.summarize(rows, ["optim.learning_rate"], ["eval/loss"], tmp_path, None)
    every_run = (tmp_path / "results.md").read_text().split("## Every run")[1]
    assert "| 5e-05 | 1.2346 |" in every_run and "| 0.0001 | 2.0000 |" in every_run
