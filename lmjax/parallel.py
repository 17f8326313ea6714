"""Device meshes and their layouts (lmjax.sharding maps logical axes onto them), multi-host start-up
(`jax.distributed`) and the pmap engine."""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from lmjax import sharding
from lmjax.errors import InputError
from lmjax.sharding import MESH_AXES

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
    sharding.parse_rules(mesh_config.rules)


def make_layout(mesh_config: ConfigDict, devices: Sequence[jax.Device] | None = None) -> sharding.Layout:
    return sharding.Layout(make_mesh(mesh_config, devices), sharding.parse_rules(mesh_config.get("rules")))


# ---------------------------------------------------------------------------------------------
# Multi-host start-up.


def cluster_detected(environ: dict | None = None) -> str | None:
    """The kind of multi-process launch this process is part of, if any: 'slurm', 'tpu' or None."""
    env = os.environ if environ is None else environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in env:
        return "slurm"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return None


def initialize(dist: ConfigDict) -> bool:
    """Starts `jax.distributed` when this is one process of several; returns whether it did.

    distributed.coordinator_address (host:port) with num_processes and process_id starts it explicitly
    (any cluster, or several local processes); enable='yes' lets JAX detect the cluster (TPU VMs, Slurm,
    MPI, Kubernetes); enable='auto' does that only when the environment shows a multi-process launch.
    """
    if dist.enable == "no":
        return False
    if dist.coordinator_address:
        if dist.num_processes < 1 or not 0 <= dist.process_id < dist.num_processes:
            raise InputError(
                f"distributed.coordinator_address={dist.coordinator_address!r} needs num_processes >= 1 "
                f"and 0 <= process_id < num_processes (got {dist.num_processes}, {dist.process_id})"
            )
        local = [int(i) for i in str(dist.local_device_ids).split(",") if i.strip()] or None
        jax.distributed.initialize(
            dist.coordinator_address, dist.num_processes, dist.process_id, local_device_ids=local
        )
    elif dist.enable == "yes" or cluster_detected():
        jax.distributed.initialize()
    else:
        return False
    if jax.default_backend() == "cpu":
        # XLA:CPU programs that JAX's persistent compilation cache hands to several processes hang in
        # their first cross-process collective (jax 0.12, gloo): each process compiles its own.
        jax.config.update("jax_enable_compilation_cache", False)
    return True


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
