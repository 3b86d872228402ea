"""Moving stage outputs into KFP artifact paths.

Stages write on local disk and the result is copied to the artifact's path afterwards: on
Vertex AI artifact paths are Cloud Storage FUSE mounts (/gcs/...), where directory renames are
not atomic (or refused), and both the RLDS writer and Orbax checkpointing rename directories
into place. Copying only a finished stage also means a failed attempt leaves no half-written
artifact for a retry to trip over; the exception is a stage that checkpoints as it goes
(`mirrored`), whose partial artifact is exactly what a retry resumes from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


SYNC_MANIFEST = ".efm-synced.json"  # in a mirrored artifact: the files completely copied so far


def _files(root: Path) -> dict[str, int]:
    """Relative path -> size of the files under root, without Orbax's unfinished (tmp) saves."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and ".orbax-checkpoint-tmp" not in p.as_posix() and p.name != SYNC_MANIFEST}


def _write_manifest(artifact: Path, files: dict[str, int]) -> None:
    tmp = artifact / f"{SYNC_MANIFEST}.tmp"
    tmp.write_text(json.dumps(files, sort_keys=True))
    tmp.replace(artifact / SYNC_MANIFEST)


def _stale(work: Path, artifact: Path, rel: str, size: int | None) -> bool:
    """Whether the artifact's copy of a listed file is older than work's (rewritten in place)."""
    copy = artifact / rel
    return size != (work / rel).stat().st_size or not copy.is_file() or \
        copy.stat().st_mtime_ns < (work / rel).stat().st_mtime_ns


def sync_tree(work: Path, artifact: Path) -> None:
    """Copies work's files to artifact and lists them in the manifest, then prunes the rest.

    Only the manifest says what is complete: a task killed mid-copy leaves files it does not
    list, and a restart copies back only what it lists. New files are copied and listed before
    any listed file is rewritten (each through a temporary name), so a kill at any point leaves
    every listed file whole, old or new, and whatever a new one names (the round directory a
    Self-Improvement `state.json` points to, say) already listed.
    """
    artifact.mkdir(parents=True, exist_ok=True)
    manifest_path = artifact / SYNC_MANIFEST
    synced: dict[str, int] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    files = _files(work)
    new = [rel for rel in files if rel not in synced]
    for rel in new:
        (artifact / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / rel, artifact / rel)
    if new:
        _write_manifest(artifact, {**synced, **{rel: files[rel] for rel in new}})
    for rel in files:
        if rel not in new and _stale(work, artifact, rel, synced.get(rel)):
            tmp = artifact / f"{rel}.efm-partial"
            shutil.copyfile(work / rel, tmp)
            tmp.replace(artifact / rel)
    _write_manifest(artifact, files)
    for rel in set(_files(artifact)) - set(files):
        (artifact / rel).unlink()


@contextmanager
def mirrored(artifact_path: str | Path) -> Iterator[tuple[Path, Callable[..., None]]]:
    """A local working copy of `artifact_path` and `sync()`, which copies it back.

    For stages that checkpoint as they go: a restarted task (a Vertex retry, a TPU preemption)
    gets the same artifact path, finds what the previous attempt synced and resumes from it.
    Everything is synced once more on success.
    """
    artifact = Path(artifact_path)
    with tempfile.TemporaryDirectory(prefix="efm-stage-") as tmp:
        work = Path(tmp) / "out"
        work.mkdir()
        manifest = artifact / SYNC_MANIFEST
        if manifest.is_file():
            for rel in json.loads(manifest.read_text()):
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(artifact / rel, work / rel)  # its time too: not newer than the artifact's copy

        def sync(*_: object) -> None:
            sync_tree(work, artifact)

        yield work, sync
        sync()
