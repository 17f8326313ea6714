"""mode=export: the directory runs in a process that cannot import lmjax.models and gives the live model's
logits (fp32, 1e-5) for two batch sizes, through prefill and a decode step; int8 exports likewise."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from lmjax.modes import export as export_mode
from lmjax.serving import quantize
from lmjax.training import pretrained

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

directories, prompts, next_tokens = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for name, directory in directories.items():
    lm = load_exported(directory)
    for batch, rows in prompts.items():
        lengths = np.asarray([len(p) for p in rows], np.int32)
        tokens = np.zeros((len(rows), lengths.max()), np.int32)
        for i, p in enumerate(rows):
            tokens[i, : len(p)] = p
        logits, caches = lm.prefill(tokens, lengths)[:2]
        step = lm.step(np.asarray(next_tokens[: len(rows)], np.int32), caches, lengths)[0]
        out[f"{name}_prefill{batch}"], out[f"{name}_step{batch}"] = np.asarray(logits), np.asarray(step)
assert not any(m == "lmjax.models" or m.startswith("lmjax.models.") for m in sys.modules)
np.savez(sys.argv[4], **out)
"""


def live_logits(config, workdir, rows, quantized=False):
    """Next-token logits of the live model's full forward pass after each row (compiled once, on the rows
    right-padded to the model's length)."""
    graphdef, params, _, _ = pretrained.load_decoder(config, workdir)
    if quantized:
        params = quantize.dequantize(quantize.quantize(params.to_pure_dict()))
    model = nnx.merge(graphdef, params)
    padded = np.zeros((len(rows), model.max_len), np.int32)  # causal: padding after a row changes nothing
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(padded)))
    return np.stack([logits[i, len(row) - 1] for i, row in enumerate(rows)])


SOURCES = {"workdir": (False, False), "workdir-int8": (False, True), "hugging-face": (True, False)}


def test_exported_logits_equal_the_live_model(chat_workdir, chat_config, hf_llama, repo, tmp_path):
    """An lmjax workdir, the same in int8, and a Hugging Face Llama directory through finetune.init
    (grouped-query attention): batch sizes 2 and 3, prefill and a decode step."""
    configs, directories = {}, {}
    for name, (hf, quantized) in SOURCES.items():
        config = configs[name] = ConfigDict(chat_config.to_dict())
        config.serve.update(export_dir=str(tmp_path / name), quantize="int8" if quantized else "", max_len=64)
        config.finetune.init = str(hf_llama[0]) if hf else ""
        directories[name] = str(export_mode.run(config, chat_workdir))
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["quantize"] == config.serve.quantize and manifest["max_len"] == 64
    out = tmp_path / "exported.npz"
    args = [json.dumps(directories), json.dumps({str(k): v for k, v in PROMPTS.items()}), json.dumps(NEXT)]
    subprocess.run([sys.executable, "-c", LOADER, *args, str(out)], cwd=repo, check=True)
    got = np.load(out)
    for name, (_, quantized) in SOURCES.items():
        for batch, rows in PROMPTS.items():
            longer = [row + [NEXT[i]] for i, row in enumerate(rows)]
            want = live_logits(configs[name], chat_workdir, rows + longer, quantized)
            np.testing.assert_allclose(got[f"{name}_prefill{batch}"], want[: len(rows)], atol=1e-5)
            np.testing.assert_allclose(got[f"{name}_step{batch}"], want[len(rows) :], atol=1e-5)


def test_export_replaces_an_export_but_never_other_files(chat_workdir, chat_config, tmp_path):
    from lmjax.errors import InputError

    config = chat_config
    other = tmp_path / "results"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    config.serve.export_dir = str(other)
    with pytest.raises(InputError, match="is not empty and holds no export; choose a new serve.export_dir"):
        export_mode.run(config, chat_workdir)
    assert (other / "keep.txt").read_text() == "mine"
    config.serve.export_dir = str(tmp_path / "export")
    first = export_mode.run(config, chat_workdir)
    (first / "stale.txt").write_text("old")
    config.serve.quantize = "int8"
    second = export_mode.run(config, chat_workdir)
    assert second == first and not (second / "stale.txt").exists()
    assert json.loads((second / "manifest.json").read_text())["quantize"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "results"]  # no staging left behind
