"""Nested, deterministic subsets of a demonstration dataset (the paper's 10%/20%/80% runs).

Comparisons across data fractions are only fair if the small subset is part of the larger one
and every fraction is validated on the same held-out episodes. So validation is drawn once,
then one seeded permutation of the remaining ids is cut at each fraction's size: every subset
is a prefix of the same permutation, hence 10% ⊂ 20% ⊂ 80%. The validation draw and the
permutation use separate streams of the seed, so changing the fractions never moves the
validation set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from efm.data import rlds

MANIFEST = "manifest.json"
VALIDATION_DIR = "validation"
VALIDATION_SPLIT = "validation"
TRAIN_SPLIT = "train"

_VALIDATION_STREAM, _FRACTION_STREAM = 0, 1


def _check_unique(ids: Sequence[str]) -> None:
    dupes = [k for k, c in Counter(ids).items() if c > 1]
    if dupes:
        raise ValueError(f"episode ids must be unique; duplicated: {sorted(dupes)[:10]}")


def split_validation(
    ids: Sequence[str], num_validation: int, seed: int
) -> tuple[list[str], list[str]]:
    """(train_ids, validation_ids): a seeded draw of `num_validation` ids held out.

    Both lists keep the input order, so datasets written from them keep the source order.
    """
    ids = list(ids)
    _check_unique(ids)
    if not 0 <= num_validation < len(ids):
        raise ValueError(f"num_validation={num_validation} must be in [0, {len(ids)}) "
                         f"for {len(ids)} episodes (at least one must remain for training)")
    rng = np.random.default_rng([seed, _VALIDATION_STREAM])
    held = np.zeros(len(ids), bool)
    held[rng.permutation(len(ids))[:num_validation]] = True
    return ([i for i, h in zip(ids, held, strict=True) if not h],
            [i for i, h in zip(ids, held, strict=True) if h])


def fraction_size(fraction: float, n: int) -> int:
    """round(fraction * n), halves up, at least 1: a fraction never yields an empty dataset."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} must be in (0, 1]")
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def nested_fractions(
    train_ids: Sequence[str], fractions: Iterable[float], seed: int
) -> dict[float, list[str]]:
    """fraction -> ids; each subset is a prefix of one seeded permutation, so they nest.

    Subsets keep the input order (the prefix decides membership, not order).
    """
    ids = list(train_ids)
    _check_unique(ids)
    if not ids:
        raise ValueError("no training ids to subsample")
    order = np.random.default_rng([seed, _FRACTION_STREAM]).permutation(len(ids))
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))  # position of each id in the permutation
    out = {}
    for f in sorted(set(fractions)):
        k = fraction_size(f, len(ids))
        out[f] = [i for i, r in zip(ids, rank, strict=True) if r < k]
    return out


def fraction_key(fraction: float) -> str:
    """"0.1": the fraction's name in the manifest and its folder; exact, so two fractions never
    share one (1/3 is "0.3333333333333333", not "0.333333")."""
    short = f"{fraction:g}"
    return short if float(short) == fraction else repr(float(fraction))


def fraction_dirname(fraction: float) -> str:
    """"fraction_0.1": the folder name is the fraction, so manifests and paths agree."""
    return f"fraction_{fraction_key(fraction)}"


FINGERPRINTED_FILES = ("dataset_info.json", "features.json", rlds.METADATA_FILE)


def dataset_fingerprint(directory: str | os.PathLike[str]) -> str | None:
    """A sha1 identifying a dataset directory's contents cheaply, without reading its records:
    its dataset_info.json, features.json and efm_metadata.json as they are, and the name and size
    of every record file. None if `directory` holds no dataset_info.json (not a dataset: whoever
    reads it reports that). Two datasets of the same size with positional ids (demo-000000...)
    differ here, though not in their ids."""
    path = epath.Path(directory)
    if not (path / "dataset_info.json").is_file():
        return None
    h = hashlib.sha1()
    for name in FINGERPRINTED_FILES:
        f = path / name
        h.update(f"{name}\0".encode())
        h.update(f.read_bytes() if f.is_file() else b"<absent>")
    for f in sorted(path.iterdir(), key=lambda f: f.name):
        if ".tfrecord" in f.name or ".array_record" in f.name:
            h.update(f"{f.name}\0{f.stat().length}\0".encode())
    return h.hexdigest()


def subsample_dataset(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fractions: Iterable[float],
    num_validation: int,
    seed: int,
    *,
    split: str = TRAIN_SPLIT,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes out_dir/fraction_<f>/ (split "train") per fraction, out_dir/validation/ (split
    "validation") and out_dir/manifest.json; returns the manifest.

    The manifest is written last, so its presence marks a complete subsampling. Paths in it
    are relative to out_dir, so the folder can be moved (e.g. between pipeline artifacts).
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise rlds.DatasetError(f"cannot subsample into {out}: it exists and is not empty "
                                "(use another directory, or delete it)")
    if num_validation < 1:
        raise ValueError(f"num_validation={num_validation}: need at least one validation episode")
    ids = rlds.read_episode_ids(source_dir, split)  # one pass over the ids; records are copied below
    train_ids, val_ids = split_validation(ids, num_validation, seed)
    subsets = nested_fractions(train_ids, fractions, seed)
    if out.is_dir():  # overwrite: no longer complete until the new manifest, no stale fractions
        (out / MANIFEST).unlink(missing_ok=True)
        keep = {fraction_dirname(f) for f in subsets}
        for stale in out.glob("fraction_*"):
            if stale.name not in keep:
                shutil.rmtree(stale)

    source = {"path": str(Path(source_dir).absolute()), "split": split,
              "fingerprint": dataset_fingerprint(source_dir)}
    manifest: dict[str, Any] = {
        "source": source,
        "seed": seed,
        "num_episodes": len(ids),
        "num_train_pool": len(train_ids),
        "validation": {"path": VALIDATION_DIR, "split": VALIDATION_SPLIT,
                       "count": len(val_ids), "episode_ids": val_ids},
        "fractions": {},
    }

    position = {k: i for i, k in enumerate(ids)}

    def write(ids_: list[str], name: str, split_: str, role: str) -> None:
        """Copies the episodes `ids_` as stored (in source order): no frame decoded again, one
        record in memory at a time."""
        meta = {"source": source, "seed": seed, "role": role, "count": len(ids_)}
        rlds.copy_episodes(source_dir, split, [position[k] for k in ids_], out / name, out_split=split_,
                           metadata=meta, overwrite=overwrite)

    write(val_ids, VALIDATION_DIR, VALIDATION_SPLIT, "validation")
    for f, subset in subsets.items():
        write(subset, fraction_dirname(f), TRAIN_SPLIT, f"fraction {fraction_key(f)}")
        manifest["fractions"][fraction_key(f)] = {"fraction": f, "path": fraction_dirname(f),
                                           "split": TRAIN_SPLIT, "count": len(subset),
                                           "episode_ids": subset}
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)
    return manifest


def manifest_mismatch(manifest: dict[str, Any], source_dir: str | os.PathLike[str],
                      fractions: Iterable[float], num_validation: int, seed: int,
                      split: str = TRAIN_SPLIT) -> str | None:
    """Why a finished subsampling is not the one `subsample_dataset` would write from this
    source with these arguments (None if it is): the source's fingerprint (`dataset_fingerprint`)
    must be the one the manifest records (a manifest written before fingerprints were recorded
    has none and is not checked so), and the draws are recomputed from the source's episode ids,
    so a regenerated or different source is caught, not only other arguments (ids alone are
    positional, demo-%06d, the same for any two datasets of one size)."""
    if manifest["seed"] != seed or manifest["validation"]["count"] != num_validation:
        return (f"it holds seed {manifest['seed']} and {manifest['validation']['count']} validation episodes, "
                f"not seed {seed} and {num_validation}")
    stored = {v["fraction"]: v["episode_ids"] for v in manifest["fractions"].values()}
    missing = sorted(set(fractions) - set(stored))
    if missing:
        return f"it has no fraction {', '.join(map(fraction_key, missing))} (it has {sorted(stored)})"
    recorded = manifest["source"].get("fingerprint")
    if recorded is not None:
        current = dataset_fingerprint(source_dir)
        if current != recorded:
            return (f"it was drawn from other episodes than {source_dir} (split {split!r}) now holds: "
                    f"its source was {manifest['source']['path']} (fingerprint {recorded}), "
                    f"{source_dir}'s fingerprint is {current}")
    train_ids, val_ids = split_validation(rlds.read_episode_ids(source_dir, split), num_validation, seed)
    subsets = nested_fractions(train_ids, fractions, seed)
    if val_ids != manifest["validation"]["episode_ids"] or any(stored[f] != ids for f, ids in subsets.items()):
        return f"it was drawn from other episodes than {source_dir}'s (split {split!r}) now holds"
    return None


def load_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a finished `subsample_dataset`, or a DatasetError if there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise rlds.DatasetError(f"{path} does not exist: {out_dir} is not a finished subsampling")
    try:
        manifest = json.loads(path.read_text())
        # what readers of a manifest take from it
        _ = (manifest["seed"], manifest["validation"]["count"], manifest["validation"]["episode_ids"],
             manifest["source"]["path"], [(v["fraction"], v["episode_ids"]) for v in manifest["fractions"].values()])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise rlds.DatasetError(f"{path} is not a subsampling manifest ({what}): subsample into a new "
                                "directory") from e
    return manifest
