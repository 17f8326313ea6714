"""tpu_scripts/aot_check.py compiles train steps for real TPU topologies with libtpu, on this CPU machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
needs_libtpu = pytest.mark.skipif(
    not (Path(sys.prefix) / "tpu-compiler" / "libtpu").is_dir()
    and subprocess.run([sys.executable, "-c", "import libtpu"], capture_output=True).returncode,
    reason="libtpu is not installed (make test installs it in .venv/tpu-compiler)",
)


def aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tpu_scripts/aot_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    return result.returncode, result.stdout, result.stderr


# Slow (make test-slow): GPT-2 124M's widths at 2 of its 12 layers and short sequences, then the whole model
# at its context and batch; the default run checks that the 7B without FSDP does not fit, and bad input.
SMALL = ("--config.model.num_layers=2", "--config.data.seq_len=128", "--config.data.batch_size=16")


@pytest.mark.parametrize(
    "shrink",
    [
        pytest.param(SMALL, id="small", marks=pytest.mark.slow),
        pytest.param((), id="whole", marks=pytest.mark.slow),
    ],
)
@needs_libtpu
def test_gpt2_124m_fits_a_v5e_2x4_and_reports_memory_per_device(shrink):
    code, out, err = aot("--config=experiments/configs/gpt.py:124m", "--topology=v5e:2x4", *shrink)
    assert code == 0, out + err[-2000:]
    assert "8 devices (TPU v5 lite)" in out and "mesh {'data': 1, 'fsdp': 8" in out
    assert ("124.5M parameters" in out) == (not shrink)
    assert "temporaries" in out and "fits: " in out and "of 16.0 GiB HBM" in out


@needs_libtpu
def test_7b_without_fsdp_does_not_fit_a_v5e_2x2():
    code, out, err = aot(
        "--config=experiments/configs/gpt.py:7b",
        "--topology=v5e:2x2",
        "--config.mesh.fsdp=1",
        "--config.mesh.data=-1",
        "--config.data.batch_size=4",
    )
    assert code == 1, out + err[-2000:]
    assert "6,738.4M parameters" in out
    assert "DOES NOT FIT: the train state alone needs 75.308 GiB per device of 16.0 GiB HBM" in out


@pytest.mark.slow
@needs_libtpu
def test_when_the_compiler_runs_out_of_memory_it_is_reported_with_its_numbers():
    code, out, err = aot(
        "--config=experiments/configs/gpt.py:124m",
        "--topology=v5e:2x2",
        "--config.mesh.fsdp=1",
        "--config.mesh.data=-1",
        "--config.data.batch_size=512",
    )
    assert code == 1, out + err[-2000:]
    assert "DOES NOT FIT: the TPU compiler ran out of memory" in out and "exceeds available HBM" in out


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("topology, devices, hosts", [("v4:2x2x2", 16, 2), ("v5p:4x4x4", 64, 16)])
def test_multi_host_topologies_compile(topology, devices, hosts):
    code, out, err = aot("--config=experiments/configs/gpt.py:124m", f"--topology={topology}")
    assert code == 0, out + err[-2000:]
    assert f"{devices} devices" in out and f"on {hosts} host(s)" in out and "fits: " in out


def test_bad_topology_fails_with_one_line():
    code, out, err = aot("--config=experiments/configs/gpt.py:124m", "--topology=v9z:2x2")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --topology='v9z:2x2'"), err[-2000:]
