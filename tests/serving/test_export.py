"""mode=export: the directory runs in a process that cannot import lmjax.models and gives the live model's
logits (fp32, 1e-5) for two batch sizes, through prefill and a decode step; int8 exports likewise."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import sample
from lmjax.serving import export, quantize

PROMPTS = {2: [[5, 9, 14, 3, 7], [8, 2]], 3: [[4, 4, 4], [11, 12, 13, 14, 15, 16, 17], [6]]}
NEXT = [13, 7, 21]  # the token each row continues with for the step

LOADER = """
import importlib.abc, json, sys
import numpy as np

class NoModels(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "lmjax.models" or name.startswith("lmjax.models."):
            raise ImportError("lmjax.models must not be imported here")

sys.meta_path.insert(0, NoModels())
from lmjax.serving import load_exported

lm = load_exported(sys.argv[1])
prompts, next_tokens, out = json.loads(sys.argv[2]), json.loads(sys.argv[3]), {}
for batch, rows in prompts.items():
    lengths = np.asarray([len(p) for p in rows], np.int32)
    tokens = np.zeros((len(rows), lengths.max()), np.int32)
    for i, p in enumerate(rows):
        tokens[i, : len(p)] = p
    logits, caches = lm.prefill(tokens, lengths)
    step_logits, _ = lm.step(np.asarray(next_tokens[: len(rows)], np.int32), caches, lengths)
    out[f"prefill{batch}"], out[f"step{batch}"] = np.asarray(logits), np.asarray(step_logits)
assert not any(m == "lmjax.models" or m.startswith("lmjax.models.") for m in sys.modules)
np.savez(sys.argv[4], **out)
"""


def live_logits(config, workdir, rows, quantized=False):
    """Next-token logits of the live model's full forward pass after each row (padding masked)."""
    graphdef, params, _, _ = sample.load(config, workdir)
    if quantized:
        params = quantize.dequantize(quantize.quantize(params.to_pure_dict()))
    model = nnx.merge(graphdef, params)
    out = []
    for row in rows:
        logits = model(jnp.asarray([row], jnp.int32))
        out.append(np.asarray(logits[0, -1]))
    return np.stack(out)


def run_loader(directory, tmp_path, repo):
    out = tmp_path / "exported.npz"
    args = [json.dumps({str(k): v for k, v in PROMPTS.items()}), json.dumps(NEXT), str(out)]
    subprocess.run([sys.executable, "-c", LOADER, str(directory), *args], cwd=repo, check=True)
    return np.load(out)


@pytest.mark.parametrize(
    "source, quantized", [("workdir", False), ("workdir", True), ("hugging face", False)], ids=str
)
def test_exported_logits_equal_the_live_model(
    chat_workdir, chat_config, hf_llama, repo, tmp_path, source, quantized
):
    config = chat_config
    config.serve.update(export_dir=str(tmp_path / "export"), quantize="int8" if quantized else "")
    if source == "hugging face":  # a Llama directory through finetune.init (grouped-query attention)
        config.finetune.init = str(hf_llama[0])
        config.serve.max_len = 64
    directory = export.export(config, chat_workdir)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["quantize"] == config.serve.quantize and manifest["max_len"] == 64
    got = run_loader(directory, tmp_path, repo)
    for batch, rows in PROMPTS.items():
        np.testing.assert_allclose(
            got[f"prefill{batch}"], live_logits(config, chat_workdir, rows, quantized), atol=1e-5
        )
        longer = [row + [NEXT[i]] for i, row in enumerate(rows)]
        np.testing.assert_allclose(
            got[f"step{batch}"], live_logits(config, chat_workdir, longer, quantized), atol=1e-5
        )


def test_export_replaces_an_export_but_never_other_files(chat_workdir, chat_config, tmp_path):
    from lmjax.errors import InputError

    config = chat_config
    other = tmp_path / "results"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    config.serve.export_dir = str(other)
    with pytest.raises(InputError, match="is not empty and holds no export; choose a new serve.export_dir"):
        export.export(config, chat_workdir)
    assert (other / "keep.txt").read_text() == "mine"
    config.serve.export_dir = str(tmp_path / "export")
    first = export.export(config, chat_workdir)
    (first / "stale.txt").write_text("old")
    config.serve.quantize = "int8"
    second = export.export(config, chat_workdir)
    assert second == first and not (second / "stale.txt").exists()
    assert json.loads((second / "manifest.json").read_text())["quantize"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "results"]  # no staging left behind
