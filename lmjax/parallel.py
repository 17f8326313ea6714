"""Device mesh and the one table that maps logical axis names to mesh axes."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or None: replicated). Parameters name their axes in `axes` metadata.
RULES: dict[str | None, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv": None,
    "mlp": "tensor",
    None: None,
}


def make_mesh(mesh_config: ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the devices that are left."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices but "
                         f"{len(devices)} are available; set --config.mesh.* so the product matches")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None]) -> P:
    return P(*(RULES[a] for a in axes))


def state_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """Shardings for a pytree holding nnx Variables (sharded by their `axes`) and plain arrays (replicated)."""

    def one(x):
        if isinstance(x, nnx.Variable):
            if not hasattr(x.value, "ndim"):  # optax's MaskedNode (no state for a frozen or masked parameter)
                return x
            axes = x.get_metadata().get("axes")
            spec = logical_to_spec(axes) if axes is not None and len(axes) == x.value.ndim else P()
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[batch, ...] arrays split over the data and fsdp axes."""
    return NamedSharding(mesh, P(RULES["batch"]))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's share of a batch into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
