"""Moving stage outputs into KFP artifact paths.

Stages write on local disk and the result is copied to the artifact's path afterwards: on
Vertex AI artifact paths are Cloud Storage FUSE mounts (/gcs/...), where directory renames are
not atomic (or refused), and both the RLDS writer and Orbax checkpointing rename directories
into place. Copying only a finished stage also means a failed attempt leaves no half-written
artifact for a retry to trip over.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def publish(src: str | Path, dst: str | Path) -> Path:
    """Copies directory `src` to `dst`, replacing whatever an earlier attempt left there."""
    dst = Path(dst)
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    shutil.copytree(src, dst)
    return dst


@contextmanager
def staged(artifact_path: str | Path) -> Iterator[Path]:
    """A fresh local directory (not yet created) whose contents go to `artifact_path` on success."""
    with tempfile.TemporaryDirectory(prefix="efm-stage-") as tmp:
        work = Path(tmp) / "out"
        yield work
        publish(work, artifact_path)
