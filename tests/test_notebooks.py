"""The Colab notebooks run top to bottom (on smoke configs) in a Jupyter kernel with 8 devices, and their
install cell (notebooks/install_lmjax.py) keeps a runtime's jax."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import install_lmjax  # noqa: E402


def code_cells(name: str) -> list[str]:
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


# finetune_lambda is slow (the suite's time budget): make test-slow
@pytest.mark.parametrize("name", ["quickstart", pytest.param("finetune_lambda", marks=pytest.mark.slow)])
def test_notebook_executes(name, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("LMJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("LMJAX_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("LMJAX_CACHE", str(cache_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"]  # tests/conftest.py
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    if name == "quickstart":  # the full run's batch of 12 does not divide over 8 devices: 16 does
        assert any("batch 16 over 8 device(s)" in o.get("text", "") for o in outputs)


def test_both_notebooks_share_one_install_cell_with_one_url_to_set():
    cells = [code_cells(name)[0] for name in ("quickstart", "finetune_lambda")]
    assert cells[0] == cells[1]
    assert [line for line in cells[0].splitlines() if "://" in line or "URL =" in line] == [
        'LMJAX_GIT_URL = ""  # @param {type:"string"}  the git URL of lmjax: the one line to set in your copy'
    ]
    assert "notebooks/install_lmjax.py" in cells[0]


def test_install_keeps_a_jax_in_range_and_brings_the_platform_extra_otherwise(monkeypatch):
    versions = {"jax": "0.11.2", "jaxlib": "0.11.2", "jax-cuda13-plugin": "0.11.2"}  # the GPU machines' image
    monkeypatch.setattr(install_lmjax, "installed", versions.get)
    monkeypatch.setattr(install_lmjax, "platform_extra", lambda: "cuda")
    assert SpecifierSet(install_lmjax.jax_range(ROOT)) == SpecifierSet(">=0.11.1,<0.13")  # this Python: 3.12+
    assert install_lmjax.plan(ROOT) == (
        str(ROOT),
        ["jax==0.11.2", "jaxlib==0.11.2", "jax-cuda13-plugin==0.11.2"],
    )
    versions.update(jax="0.12.1", jaxlib="0.12.1")
    assert install_lmjax.plan(ROOT)[1][0] == "jax==0.12.1"
    versions["jax"] = "0.10.2"  # fine on Python 3.11, but no flax for Python 3.12 imports under it: replaced
    assert install_lmjax.plan(ROOT) == (f"{ROOT}[cuda]", [])
    versions.pop("jax")
    monkeypatch.setattr(install_lmjax, "platform_extra", lambda: "")
    assert install_lmjax.plan(ROOT) == (str(ROOT), [])


@pytest.mark.slow  # a fresh venv and a real install from the package index (minutes)
@pytest.mark.parametrize("jax_version", ["0.11.2", "0.12.1"])
def test_install_cell_keeps_the_runtimes_jax_and_brings_a_flax_that_imports_with_it(tmp_path, jax_version):
    """A runtime with jax installed first, and flax 0.12.9, which does not import under jax >= 0.11.2."""
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)  # the interpreter, not .venv
    pins = [f"jax=={jax_version}", f"jaxlib=={jax_version}", "flax==0.12.9"]
    subprocess.run([python, "-m", "pip", "install", "-q", *pins], check=True)
    probe = "import importlib.metadata as m, jax; print(jax.__file__, m.version('jax'), m.version('jaxlib'))"
    before = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    record = next((venv / "lib").glob(f"python3*/site-packages/jax-{jax_version}.dist-info/RECORD"))
    stamp = record.stat().st_mtime_ns
    cell = code_cells("quickstart")[0]
    result = subprocess.run(
        [python, "-c", cell],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"keeping jax=={jax_version}, jaxlib=={jax_version}" in result.stderr
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout == before
    assert record.stat().st_mtime_ns == stamp  # not reinstalled
    imported = subprocess.run(
        [
            python,
            "-c",
            "import flax, gcsfs, lmjax.training.pretrain as m; print(m.__file__, flax.__version__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0 and str(venv) in imported.stdout, imported.stderr[-2000:]
    assert imported.stdout.split()[1] != "0.12.9"
