"""Multi-host start-up: `jax.distributed`, started explicitly or when the environment shows a cluster."""

from __future__ import annotations

import os

import jax
from ml_collections import ConfigDict

from lmjax.errors import InputError


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
        return True
    if dist.enable == "yes" or cluster_detected():
        jax.distributed.initialize()
        return True
    return False
