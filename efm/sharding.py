"""Devices: one `jax.sharding.Mesh` over every device of every host, data-parallel by default.

Axes ("data", "fsdp"): the batch is split over both; parameters and optimizer state are
replicated, or with fsdp > 1 each array is split along its largest axis that the fsdp group
divides (big_vision's FSDP rule), so a model too large for one chip's memory still trains.
On a multi-host slice (a TPU pod slice on Vertex) `initialize_distributed` connects the hosts
before any device is touched; each host then feeds its own share of the batch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")
MIN_SHARDED_SIZE = 2**12  # smaller arrays stay replicated: sharding them costs more than it saves


def initialize_distributed() -> bool:
    """Connects the hosts of a multi-host slice (once); False on a single host.

    TPU VMs describe the slice in TPU_WORKER_HOSTNAMES; other clusters set
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    if len(hosts) <= 1 and not explicit:
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize()
    return True


def make_mesh(fsdp: int = 1) -> Mesh:
    devices = np.asarray(jax.devices())
    if devices.size % fsdp:
        raise ValueError(f"invalid config: sft.fsdp={fsdp} (must divide the {devices.size} devices)")
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), BATCH_AXES)


def check_batch(mesh: Mesh, batch_size: int, what: str = "sft.batch_size") -> None:
    if batch_size % mesh.size:
        raise ValueError(f"invalid config: {what}={batch_size} (must be divisible by the {mesh.size} devices)")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    if fsdp == 1 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
        return PartitionSpec()
    for axis in np.argsort(shape)[::-1]:  # the largest axis the group divides
        if shape[axis] % fsdp == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(mesh: Mesh, tree: Any) -> Any:
    """A NamedSharding per array of a (possibly abstract) pytree."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, _spec(tuple(np.shape(x)), fsdp)), tree)


def put_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's share of a global batch onto the mesh (the whole batch on one host)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
