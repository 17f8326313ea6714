"""An exported model directory (--config.mode=export) read back and run with JAX alone: jax.export's
serialised prefill and step, the weights (safetensors), the tokenizer and manifest.json. Imports no lmjax
model code, so a serving host needs the directory, JAX and lmjax's tokenizers only."""

from __future__ import annotations

import json

import jax
from etils import epath
from safetensors.numpy import load as load_safetensors

from lmjax.data import tokenizers
from lmjax.errors import InputError, MissingInput
from lmjax.serving.runner import Runner

FORMAT = "lmjax-export/1"
MANIFEST, WEIGHTS, PREFILL, STEP, TOKENIZER = (
    "manifest.json",
    "weights.safetensors",
    "prefill.jaxexport",
    "step.jaxexport",
    "tokenizer",
)


def read_manifest(directory: epath.Path) -> dict:
    path = directory / MANIFEST
    if not path.exists():
        raise MissingInput(f"{directory} holds no {MANIFEST}; export a model first (--config.mode=export)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise InputError(
            f"{path} is format {manifest.get('format')!r}, not {FORMAT!r}; export again with this lmjax"
        )
    return manifest


class ExportedLM(Runner):
    """Runner over an export: .prefill / .step / .logits as the live model's, .manifest, .tokenizer."""

    def __init__(self, directory: str | epath.PathLike):
        directory = epath.Path(directory)
        self.manifest = manifest = read_manifest(directory)
        tensors = load_safetensors((directory / WEIGHTS).read_bytes())
        prefill = jax.export.deserialize(bytearray((directory / PREFILL).read_bytes()))
        step = jax.export.deserialize(bytearray((directory / STEP).read_bytes()))
        if jax.default_backend() not in prefill.platforms:
            raise InputError(
                f"{directory} was exported for {', '.join(prefill.platforms)}, not this host's "
                f"{jax.default_backend()}; export with --config.serve.platforms={jax.default_backend()}"
            )
        cache = manifest["cache"]
        super().__init__(
            prefill_fn=prefill.call,
            step_fn=step.call,
            weights=[jax.numpy.asarray(tensors[name]) for name in manifest["weights"]],
            cache_shape=tuple(cache["shape"]),
            cache_dtype=cache["dtype"],
            num_caches=cache["count"],
            tokenizer=tokenizers.load(directory / TOKENIZER),
            name=manifest["model_name"],
        )
