"""Device mesh, the one table mapping logical axis names to mesh axes, the pmap engine (multi-host start-up:
lmjax.distributed).

Parameters name their axes in `axes` metadata (lmjax.models.layers.param); key activations are
constrained with `constrain(x, axes)`. Both go through `config.mesh.rules`, one table:

  logical axis -> comma-separated mesh axes ('' = replicated)

A dimension that the mesh axes do not divide (a 65-character vocabulary on tensor=2) is replicated
rather than refused, so every config runs on every mesh.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from lmjax.config import DEFAULT_RULES
from lmjax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
ENGINES = ("jit", "pmap")


def make_mesh(mesh_config: ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the devices that are left."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    if shape.count(-1) > 1:
        raise InputError(f"mesh {dict(zip(MESH_AXES, shape, strict=True))}: at most one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise InputError(
                f"mesh {dict(zip(MESH_AXES, shape, strict=True))} does not divide {len(devices)} devices"
            )
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise InputError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {int(np.prod(shape))} devices but "
            f"{len(devices)} are available; set --config.mesh.* so the product matches"
        )
    if getattr(devices[0], "platform", "") == "tpu":  # axes laid out along the chips' interconnect
        from jax.experimental import mesh_utils

        try:
            return Mesh(
                mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True), MESH_AXES
            )
        except (AssertionError, ValueError, NotImplementedError):  # e.g. one device per core, not per chip
            pass
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def check(mesh_config: ConfigDict) -> None:
    """The mesh section: a known engine and a rules table that names mesh axes only."""
    if mesh_config.engine not in ENGINES:
        raise InputError(f"mesh.engine={mesh_config.engine!r} is unknown; use one of {ENGINES}")
    parse_rules(mesh_config.rules)


def parse_rules(rules: ConfigDict | dict | None) -> dict[str, tuple[str, ...]]:
    """config.mesh.rules -> {logical axis: mesh axes}; unknown mesh axes fail with one line."""
    table = dict(DEFAULT_RULES if rules is None else rules)
    parsed = {}
    for logical, value in table.items():
        axes = tuple(a.strip() for a in str(value).split(",") if a.strip())
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise InputError(
                f"mesh.rules.{logical}={value!r} names {bad}, not a mesh axis; use a comma-separated "
                f"subset of {MESH_AXES} or '' to replicate"
            )
        parsed[logical] = axes
    return parsed


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the rules table: everything that decides where an array lives."""

    mesh: Mesh
    rules: dict[str, tuple[str, ...]]

    def spec(self, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
        """The PartitionSpec of an array with these logical axes; undivisible or repeated mesh axes are
        dropped."""
        used: set[str] = set()
        out = []
        for i, logical in enumerate(axes):
            if logical is not None and logical not in self.rules:
                raise InputError(
                    f"logical axis {logical!r} has no entry in mesh.rules; add one "
                    f"(known: {sorted(self.rules)})"
                )
            mesh_axes = tuple(
                a for a in self.rules.get(logical, ()) if a not in used and self.mesh.shape[a] > 1
            )
            size = int(np.prod([self.mesh.shape[a] for a in mesh_axes]))
            if shape is not None and shape[i] % size:
                mesh_axes = ()
            used.update(mesh_axes)
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
        return P(*out)

    def sharding(self, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes, shape))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_shards(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in self.rules["batch"]]))

    def traced(self, fn: Callable) -> Callable:
        """`fn` run with this layout current, so that `constrain` inside it (traced by jit) takes effect."""

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            token = _CURRENT.set(self)
            try:
                with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                    return fn(*args, **kwargs)
            finally:
                _CURRENT.reset(token)

        return wrapped


_CURRENT: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("lmjax_layout", default=None)


def make_layout(mesh_config: ConfigDict, devices: Sequence[jax.Device] | None = None) -> Layout:
    return Layout(make_mesh(mesh_config, devices), parse_rules(mesh_config.get("rules")))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by its logical axes; a no-op outside `Layout.traced` (e.g. eager
    calls)."""
    layout = _CURRENT.get()
    if layout is None:
        return x
    return jax.lax.with_sharding_constraint(x, layout.spec(axes, x.shape))


def state_shardings(abstract_tree: Any, layout: Layout) -> Any:
    """Shardings for a pytree holding nnx Variables (sharded by their `axes`) and plain arrays
    (replicated)."""

    def one(x):
        if isinstance(x, nnx.Variable):
            if not hasattr(x.value, "ndim"):  # optax's MaskedNode (no state for a frozen or masked parameter)
                return x
            axes = x.get_metadata().get("axes")
            spec = layout.spec(axes, x.value.shape) if axes is not None and len(axes) == x.value.ndim else P()
            return x.replace(NamedSharding(layout.mesh, spec))
        return layout.replicated

    return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(layout: Layout) -> NamedSharding:
    """[batch, ...] arrays split over the batch axes of the rules (data and fsdp by default)."""
    return layout.sharding(("batch",))


def global_batch(local_batch: dict[str, np.ndarray], layout: Layout) -> dict[str, jax.Array]:
    """Assembles this process's share of a batch into global arrays sharded over the batch axes."""
    sharding = batch_sharding(layout)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


# ---------------------------------------------------------------------------------------------
# The pmap engine: the same step function, data-parallel over this process's devices.


PMAP_AXIS = "devices"


def check_pmap(mesh_config: ConfigDict) -> None:
    if jax.process_count() > 1:
        raise InputError("mesh.engine='pmap' runs in one process; multi-host runs use mesh.engine='jit'")
    if mesh_config.fsdp != 1 or mesh_config.tensor != 1 or mesh_config.data not in (-1, jax.device_count()):
        raise InputError(
            f"mesh.engine='pmap' is data-parallel only: it needs mesh.fsdp=1, mesh.tensor=1 and "
            f"mesh.data=-1 (got {mesh_config.data}, {mesh_config.fsdp}, {mesh_config.tensor}); "
            f"use mesh.engine='jit' for FSDP or tensor parallelism"
        )


def replicate(tree: Any) -> Any:
    """A state on one device -> one copy per local device (the leading axis pmap maps over)."""
    devices = jax.local_devices()
    stacked = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))
    return jax.tree.map(
        lambda x: jax.device_put(jax.numpy.broadcast_to(x, (len(devices), *x.shape)), stacked), tree
    )


def unreplicate(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[B_local, ...] -> [local devices, B_local / local devices, ...]."""
    n = jax.local_device_count()
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in local_batch.items()}
