"""All checkpoint I/O goes through here (Orbax)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def training_manager(directory: str | Path) -> ocp.CheckpointManager:
    """Step-numbered training checkpoints; pruning is the caller's policy (keep the best ones)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_step(manager: ocp.CheckpointManager, step: int, state: PyTree) -> None:
    manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()


def restore_step(manager: ocp.CheckpointManager, step: int, like: PyTree | None = None) -> PyTree:
    """The state saved at `step`, shaped like `like` (default: as saved, on this host's device)."""
    if like is None:
        with ocp.StandardCheckpointer() as ckptr:
            like = _abstract(ckptr.metadata(Path(manager.directory) / str(step) / "default"))
    return manager.restore(step, args=ocp.args.StandardRestore(like))


def _abstract(metadata: Any) -> PyTree:
    """Shapes and dtypes from checkpoint metadata, placed on this process's first device when
    restored (on a multi-host slice jax.devices()[0] may belong to another host)."""
    tree = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def save_params(path: str | Path, params: PyTree) -> None:
    """A standalone params checkpoint (what `select` and `self_improve` hand on)."""
    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=True)


def load_params(path: str | Path, like: PyTree | None = None) -> PyTree:
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, like if like is not None else _abstract(ckptr.metadata(path)))
