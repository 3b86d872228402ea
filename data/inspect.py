"""Describe any RLDS dataset on disk: what `efm data inspect PATH` prints.

Users point this at datasets they did not write (LanguageTable, Open X-Embodiment) before
training on them, so it reads only what TFDS stores (dataset_info.json, features.json) plus a
streaming pass that counts steps with images left undecoded, and a few example episodes for
their instructions. It understands where instructions live in the layouts we read:

  efm (`efm.data.rlds`)      episode_metadata/instruction (Text), steps/language_instruction
  LanguageTable              steps/observation/instruction: int32[512] UTF-8 byte codes
  Open X-Embodiment & co.    steps/language_instruction, steps/observation/natural_language_...

`inspect_dataset` returns a JSON-able dict (for `--json`); `format_inspection` renders it as text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from efm.data import languagetable
from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError

STEPS = "steps"
EPISODE_METADATA = "episode_metadata"
DATASET_INFO = "dataset_info.json"
_MAX_LISTED_VALUES = 16  # metadata arrays longer than this are summarized, not listed

_f = tfds.features


# ----------------------------------------------------------------------------- locating


def resolve_dataset_dir(path: str | os.PathLike[str]) -> epath.Path:
    """The TFDS directory at `path`, or in its one subdirectory (TFDS's name/version layout).

    Users point at .../language_table/0.0.1 or at .../language_table; more than one version
    below is ambiguous, so it is an error listing them rather than a guess.
    """
    p = epath.Path(path)  # pathlib would fold gs://b into gs:/b
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise DatasetError(f"{p} is a file, not an RLDS dataset directory")
    if (p / DATASET_INFO).is_file():
        return p
    below = sorted(d for d in p.iterdir() if d.is_dir() and (d / DATASET_INFO).is_file())
    if len(below) == 1:
        return below[0]
    if below:
        raise DatasetError(f"{p} holds {len(below)} datasets or versions "
                           f"({', '.join(d.name for d in below)}); point at one of them")
    if not any(p.iterdir()):
        raise DatasetError(f"{p} is an empty directory, not an RLDS dataset")
    return p  # let efm.data.rlds say which TFDS files are missing


# ----------------------------------------------------------------------------- features


def _dtype_name(f: _f.FeatureConnector) -> str:
    if f.dtype == tf.string:
        return "string"
    return np.dtype(f.np_dtype).name


def describe_feature(f: _f.FeatureConnector) -> dict[str, Any]:
    """A feature connector as a JSON-able dict: kind (class name), dtype, shape, and children."""
    out: dict[str, Any] = {"kind": type(f).__name__}
    if isinstance(f, _f.FeaturesDict):
        out["features"] = {k: describe_feature(f[k]) for k in sorted(f.keys())}
    elif isinstance(f, _f.Sequence | _f.Dataset) and not isinstance(f, _f.Video):
        out["feature"] = describe_feature(f.feature)
    else:
        out["dtype"] = _dtype_name(f)
        out["shape"] = list(f.shape)
        if isinstance(f, _f.Image | _f.Video):
            out["encoding"] = getattr(f, "encoding_format", None) or "png"
        if isinstance(f, _f.ClassLabel):
            out["num_classes"] = f.num_classes
    doc = getattr(f, "doc", None)
    if doc is not None and getattr(doc, "desc", None):
        out["description"] = doc.desc
    return out


def _leaves(f: _f.FeatureConnector, prefix: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], _f.FeatureConnector]]:
    if isinstance(f, _f.FeaturesDict):
        for k, v in f.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(f, _f.Dataset):
        yield from _leaves(f.feature, prefix)
    else:
        yield prefix, f


def _is_text(f: _f.FeatureConnector) -> bool:
    return isinstance(f, _f.Tensor) and f.dtype == tf.string and tuple(f.shape) == ()


def _is_codes(f: _f.FeatureConnector) -> bool:
    return (isinstance(f, _f.Tensor) and not isinstance(f, _f.ClassLabel)
            and len(f.shape) == 1 and np.dtype(f.np_dtype).kind in "iu")


def instruction_feature(features: _f.FeaturesDict) -> tuple[str, ...] | None:
    """Where the instruction is: a text feature named *instruction*, or byte codes named
    `instruction` (LanguageTable); episode-level before per-step, shallow before deep."""
    found = [path for path, f in _leaves(features)
             if path and ((_is_text(f) and "instruction" in path[-1])
                          or (_is_codes(f) and path[-1] == languagetable.INSTRUCTION))]
    found.sort(key=lambda p: (p[0] == STEPS, len(p), p))
    return found[0] if found else None


def _skip_images(f: _f.FeatureConnector) -> Any:
    """A `decoders` tree that leaves every image under it encoded (counting needs no pixels)."""
    if isinstance(f, _f.Image | _f.Video):
        return tfds.decode.SkipDecoding()
    if isinstance(f, _f.FeaturesDict):
        sub = {k: _skip_images(v) for k, v in f.items()}
        return {k: v for k, v in sub.items() if v is not None} or None
    if isinstance(f, _f.Dataset):
        return _skip_images(f.feature)
    return None


def _format(features: _f.FeaturesDict, directory: epath.Path) -> str:
    if not languagetable.schema_problems(features):
        return "language_table"
    if (directory / rlds_io.METADATA_FILE).is_file():
        return "efm"
    return "rlds"


# ----------------------------------------------------------------------------- reading


def _split_dataset(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
    decoders = {STEPS: _skip_images(builder.info.features[STEPS])}
    if decoders[STEPS] is None:
        decoders = None
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)


def _count_steps(ds: tf.data.Dataset) -> tuple[int, int]:
    """(episodes, steps), streaming inside tf.data: no Python work per episode or step."""
    def count(ep: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor]:
        # Known for TFDS steps, which are built from tensors; a reduce() here instead would
        # iterate every step in the graph.
        return tf.constant(1, tf.int64), ep[STEPS].cardinality()

    zero = tf.constant(0, tf.int64)
    episodes, steps = ds.map(count, num_parallel_calls=tf.data.AUTOTUNE).reduce(
        (zero, zero), lambda acc, x: (acc[0] + x[0], acc[1] + x[1]))
    return int(episodes), int(steps)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    arr = np.asarray(x)
    if arr.dtype == object:
        return [_jsonable(v) for v in arr.tolist()] if arr.ndim else _jsonable(arr.item())
    if arr.size > _MAX_LISTED_VALUES:
        return {"dtype": arr.dtype.name, "shape": list(arr.shape)}
    return arr.tolist()


def _instruction_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    arr = np.asarray(value)
    if arr.dtype == object:
        return _instruction_text(arr.item())
    return languagetable.decode_instruction(arr)


def _examples(builder: tfds.core.DatasetBuilder, split: str, count: int,
              where: tuple[str, ...] | None) -> list[dict[str, Any]]:
    out = []
    for i, ep in enumerate(_split_dataset(builder, split).take(count)):
        steps = ep[STEPS]
        n = int(steps.cardinality())
        first = next(iter(steps.take(1)), None)
        example: dict[str, Any] = {"split": split, "index": i,
                                   "steps": n if n >= 0 else None}
        if where is not None:
            per_step = where[0] == STEPS
            node: Any = first if per_step else ep
            for key in where[1:] if per_step else where:
                node = None if node is None else node[key]
            try:
                example["instruction"] = None if node is None else _instruction_text(
                    node.numpy())
            except (DatasetError, UnicodeDecodeError) as e:
                example["instruction"] = None
                example["instruction_error"] = str(e)
        if EPISODE_METADATA in ep:
            example[EPISODE_METADATA] = _jsonable(tfds.as_numpy(ep[EPISODE_METADATA]))
        out.append(example)
    return out


def inspect_dataset(path: str | os.PathLike[str], examples: int = 3, *,
                    max_episodes: int | None = None) -> dict[str, Any]:
    """Describes the RLDS dataset at `path` (or in its single version subdirectory).

    Step counts are exact (a streaming pass over every episode, images not decoded) unless
    `max_episodes` caps the episodes counted per split; `steps_exact` says which. `examples`
    episodes of the train split (else the first split) give instruction examples.
    """
    if examples < 0 or (max_episodes is not None and max_episodes < 0):
        raise ValueError(f"examples and max_episodes must be >= 0, got {examples}, "
                         f"{max_episodes}")
    directory = resolve_dataset_dir(path)
    metadata = rlds_io.read_metadata(directory)  # DatasetError unless an RLDS dataset
    builder = tfds.builder_from_directory(os.fspath(directory))
    info, features = builder.info, builder.info.features
    splits: dict[str, dict[str, Any]] = {}
    where = instruction_feature(features)
    with rlds_io.reading(directory):  # a corrupt file: DatasetError naming the dataset
        for name in sorted(info.splits.keys()):
            episodes = int(info.splits[name].num_examples)
            ds = _split_dataset(builder, name)
            if max_episodes is not None:
                ds = ds.take(max_episodes)
            counted, steps = _count_steps(ds)
            splits[name] = {"episodes": episodes, "steps": steps, "counted_episodes": counted,
                            "steps_exact": counted == episodes}
        example_split = "train" if "train" in splits else next(iter(splits), None)
        examples_read = (_examples(builder, example_split, examples, where)
                         if example_split is not None and examples else [])
    return {
        "path": rlds_io.absolute(directory),
        "name": info.name,
        "version": str(info.version),
        "format": _format(features, directory),
        "description": (info.description or "").strip(),
        "splits": splits,
        "total_episodes": sum(s["episodes"] for s in splits.values()),
        "total_steps": sum(s["steps"] for s in splits.values()),
        "steps_exact": all(s["steps_exact"] for s in splits.values()),
        "features": {k: describe_feature(features[k]) for k in sorted(features.keys())},
        "instruction_feature": "/".join(where) if where else None,
        "examples": examples_read,
        "metadata": metadata,
    }


# ----------------------------------------------------------------------------- text


def _leaf_text(d: Mapping[str, Any]) -> str:
    shape = ", ".join("?" if s is None else str(s) for s in d.get("shape", []))
    extra = f" ({d['encoding']})" if "encoding" in d else ""
    return f"{d['kind']} {d.get('dtype')}[{shape}]{extra}"


def _feature_lines(name: str, d: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    if "feature" in d and "features" not in d["feature"]:  # a sequence of leaves
        return [f"{pad}{name}: {d['kind']} of {_leaf_text(d['feature'])}"]
    if "feature" in d:  # a sequence of dicts (RLDS steps)
        d = {"kind": f"{d['kind']} of {d['feature']['kind']}",
             "features": d["feature"]["features"]}
    if "features" in d:
        lines = [f"{pad}{name}: {d['kind']}"]
        for k, v in d["features"].items():
            lines += _feature_lines(k, v, indent + 1)
        return lines
    return [f"{pad}{name}: {_leaf_text(d)}"]


def format_inspection(info: Mapping[str, Any]) -> str:
    """`inspect_dataset`'s result as readable text (the CLI's default output)."""
    exact = "" if info["steps_exact"] else " (steps counted over the first episodes only)"
    lines = [f"{info['name']} {info['version']}  [{info['format']}]", f"path: {info['path']}"]
    if info.get("description"):
        lines.append(f"description: {info['description'].splitlines()[0]}")
    lines.append("splits:")
    for name, s in info["splits"].items():
        counted = ("" if s["steps_exact"]
                   else f" in the first {s['counted_episodes']} episodes")
        lines.append(f"  {name}: {s['episodes']} episodes, {s['steps']} steps{counted}")
    lines.append(f"total: {info['total_episodes']} episodes, {info['total_steps']} steps{exact}")
    lines.append("features:")
    for name, d in info["features"].items():
        lines += _feature_lines(name, d, 1)
    lines.append(f"instruction feature: {info['instruction_feature'] or 'none found'}")
    if info["examples"]:
        lines.append(f"examples ({info['examples'][0]['split']}):")
        for ex in info["examples"]:
            text = (json.dumps(ex["instruction"], ensure_ascii=False)
                    if ex.get("instruction") is not None
                    else f"<{ex.get('instruction_error', 'no instruction')}>")
            lines.append(f"  #{ex['index']}: {ex['steps']} steps, {text}")
    meta = info.get("metadata") or {}
    lines.append("metadata: " + (json.dumps(meta, sort_keys=True) if meta else "none"))
    return "\n".join(lines)
