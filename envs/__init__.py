"""The simulated domains (pointmass, the table, BananaTable, Aloha) and their scripted demonstrators."""

from __future__ import annotations

import hashlib
from pathlib import Path


def source_digest(root: Path) -> str:
    """sha256 (16 hex) of the Python sources under `root`, by their relative paths and bytes."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def simulation_version() -> str:
    """The digest of this package's sources: what the steps that first run a simulation (dataset,
    pretrain) take as an input, so a cached result of other physics is never reused."""
    return source_digest(Path(__file__).parent)
