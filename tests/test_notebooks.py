"""The Colab notebooks run top to bottom (on smoke configs) in a Jupyter kernel."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]


# finetune_lambda is slow (the suite's 10-minute budget): make test-slow
@pytest.mark.parametrize("name", ["quickstart", pytest.param("finetune_lambda", marks=pytest.mark.slow)])
def test_notebook_executes(name, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("LMJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("LMJAX_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("LMJAX_CACHE", str(cache_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
