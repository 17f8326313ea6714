"""--config.mode=export: the decoder of a workdir (or finetune.init) as a directory that runs without lmjax's
model code (lmjax/serving/exported.py reads it): prefill and step serialised by jax.export for a symbolic
batch size (and prompt length), the weights, the tokenizer and manifest.json."""

from __future__ import annotations

import json
import uuid

import jax
import jax.numpy as jnp
from etils import epath
from ml_collections import ConfigDict
from safetensors.numpy import save as save_safetensors

from lmjax.errors import InputError
from lmjax.serving import exported, live, quantize


def weight_names(loaded: live.Loaded) -> list[str]:
    treedef = loaded.functions.treedef
    paths = jax.tree_util.tree_flatten_with_path(jax.tree.unflatten(treedef, loaded.weights))[0]
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


def run(config: ConfigDict, workdir: str | epath.PathLike) -> epath.Path:
    """Writes the export directory (serve.export_dir, else <workdir>/export) and returns it. A previous
    export there is replaced only once the new one is complete; any other non-empty directory is refused."""
    out = epath.Path(config.serve.export_dir or epath.Path(workdir) / "export")
    if out.exists() and any(out.iterdir()) and not (out / exported.MANIFEST).exists():
        raise InputError(f"{out} is not empty and holds no export; choose a new serve.export_dir")
    loaded = live.load(config, workdir)
    platforms = tuple(p.strip() for p in config.serve.platforms.split(",") if p.strip())
    fns, S = loaded.functions, loaded.cache_shape[0]
    b, p = jax.export.symbolic_shape("b, p", constraints=(f"p <= {S}",))
    weights = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in loaded.weights]
    (r,) = jax.export.symbolic_shape("b")  # the step's own scope (p's constraint is not about its inputs)
    rows = jax.ShapeDtypeStruct((r,), jnp.int32)
    caches = [jax.ShapeDtypeStruct((r, *loaded.cache_shape), loaded.cache_dtype)] * loaded.num_caches
    try:
        prefill = jax.export.export(jax.jit(fns.prefill), platforms=platforms)(
            weights, jax.ShapeDtypeStruct((b, p), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32)
        )
        step = jax.export.export(jax.jit(fns.step), platforms=platforms)(weights, rows, caches, rows)
    except ValueError as e:
        if "platform" not in str(e).lower():
            raise
        raise InputError(f"serve.platforms={config.serve.platforms!r}: {e}; use cpu, cuda or tpu") from None
    names = weight_names(loaded)
    manifest = {
        "format": exported.FORMAT,
        "model_name": loaded.name,
        "source": loaded.source,
        "quantize": config.serve.quantize,
        "weights": names,
        "weight_bytes": quantize.nbytes(loaded.weights),
        "cache": {"shape": list(loaded.cache_shape), "dtype": loaded.cache_dtype, "count": loaded.num_caches},
        "max_len": S,
        "vocab_size": int(prefill.out_avals[0].shape[1]),
        "platforms": list(platforms),
        "jax_version": jax.__version__,
    }
    files = {
        exported.PREFILL: prefill.serialize(),
        exported.STEP: step.serialize(),
        exported.WEIGHTS: save_safetensors(
            {n: jax.device_get(w) for n, w in zip(names, loaded.weights, strict=True)}
        ),
        exported.MANIFEST: json.dumps(manifest, indent=2).encode(),
    }
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        loaded.tokenizer.save(staging / exported.TOKENIZER)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if out.exists():  # the previous export goes only once the new one is complete
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            staging.rename(out)
            old.rmtree()
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            staging.rmtree()
    print(f"exported {loaded.source} to {out} ({manifest['weight_bytes']:,} weight bytes, {S} cache slots)")
    return out
