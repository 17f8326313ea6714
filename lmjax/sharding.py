"""The one table mapping logical axis names to mesh axes, and what follows from it: the shardings of
parameters, optimizer state and batches, and activation constraints (models import this module only).

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


def per_shard(fn: Callable, args: Sequence[jax.Array | None], axes: Sequence, out_axes: Sequence) -> Any:
    """fn(*args) run on each device's shard of its arrays (jax.shard_map over the current layout; args[i]
    laid out by its logical axes[i]; None args stay None); outside `Layout.traced`, fn(*args). For kernels
    that XLA cannot partition (Pallas). The output has the first argument's shape."""
    layout = _CURRENT.get()
    if layout is None:
        return fn(*args)
    present = [i for i, x in enumerate(args) if x is not None]

    def local(*arrays):
        full = list(args)
        for i, x in zip(present, arrays, strict=True):
            full[i] = x
        return fn(*full)

    specs = tuple(layout.spec(axes[i], args[i].shape) for i in present)
    out_spec = layout.spec(out_axes, args[0].shape)
    mapped = jax.shard_map(local, mesh=layout.mesh, in_specs=specs, out_specs=out_spec, check_vma=False)
    return mapped(*(args[i] for i in present))


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
