"""All checkpoint I/O goes through here (Orbax)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

PyTree = Any


def training_manager(directory: str | Path) -> ocp.CheckpointManager:
    """Step-numbered training checkpoints; pruning is the caller's policy (keep the best ones)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_step(manager: ocp.CheckpointManager, step: int, state: PyTree) -> None:
    manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()


def restore_step(manager: ocp.CheckpointManager, step: int, like: PyTree) -> PyTree:
    return manager.restore(step, args=ocp.args.StandardRestore(like))


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
        return ckptr.restore(path, like) if like is not None else ckptr.restore(path)
