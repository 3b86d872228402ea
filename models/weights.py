"""Starting weights: the image tower, the text tower or the whole model from a local checkpoint.

Two formats:
- big_vision `.npz` (what PaliGemma publishes): flat keys joined by "/" under `params/`,
  `img/...` the image tower and `llm/...` the text tower, bfloat16 stored as 2-byte numpy void
  (recovered with `.view(ml_dtypes.bfloat16)`, as big_vision's `utils.recover_dtype`). Scanned
  layers (`encoderblock/...`, `layers/...` with a leading layer axis) are unstacked into this
  model's `encoderblock_<i>` / `layers_<i>`.
- this project's Orbax params checkpoints (`select/policy`, a Self-Improved policy), and the
  one an `efm pretrain` output directory holds (`params/`, `model.init="pretrain"`).
Every array of a loaded part must exist with the model's shape; anything else is an error that
names the keys, before training starts. Pretrained towers of our own plug in through either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from flax import traverse_util

from efm.config import ModelConfig

Params = dict[str, Any]
PRETRAINED_PARAMS = "params"  # in an `efm pretrain` output directory
BIG_VISION_PARTS = {"img": "vision_encoder", "llm": "llm"}  # big_vision tower -> this model's module
_SCANNED = {"encoderblock": "encoderblock_{}", "layers": "layers_{}"}


def recover_dtype(a: np.ndarray) -> np.ndarray:
    """numpy cannot store bfloat16: big_vision saves it as 2-byte void."""
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return a.view(ml_dtypes.bfloat16)
    return a


def read_big_vision_npz(path: str | Path) -> dict[tuple[str, ...], np.ndarray]:
    """Flat {key path: array} in this model's naming (towers renamed, scanned layers unstacked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no big_vision checkpoint at {path}")
    out: dict[tuple[str, ...], np.ndarray] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            parts = key.split("/")
            if parts[0] == "params":
                parts = parts[1:]
            if not parts or parts[0] not in BIG_VISION_PARTS:
                continue  # e.g. optimizer state saved beside the params
            parts[0] = BIG_VISION_PARTS[parts[0]]
            arr = recover_dtype(npz[key])
            scanned = next((i for i, p in enumerate(parts) if p in _SCANNED), None)
            if scanned is None:
                out[tuple(parts)] = arr
                continue
            for layer in range(arr.shape[0]):
                named = [*parts[:scanned], _SCANNED[parts[scanned]].format(layer), *parts[scanned + 1:]]
                out[tuple(named)] = arr[layer]
    return out


def _read_orbax(path: str | Path) -> dict[tuple[str, ...], np.ndarray]:
    from efm import checkpoints  # Orbax only where it is used

    params = checkpoints.load_params(path)
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def merge_parts(params: Params, loaded: dict[tuple[str, ...], np.ndarray], parts: tuple[str, ...],
                source: str) -> Params:
    """`params` with every array under the top-level modules `parts` taken from `loaded`."""
    flat = traverse_util.flatten_dict(params)
    missing, mismatched = [], []
    for part in parts:
        keys = [k for k in flat if k[0] == part]
        if not keys:
            raise ValueError(f"model has no module {part!r} to load (top-level modules: "
                             f"{sorted({k[0] for k in flat})})")
        for k in keys:
            if k not in loaded:
                missing.append("/".join(k))
            elif loaded[k].shape != np.shape(flat[k]):
                mismatched.append(f"{'/'.join(k)}: checkpoint {loaded[k].shape}, model {np.shape(flat[k])}")
            else:
                flat[k] = np.asarray(loaded[k], np.float32)
    if missing or mismatched:
        raise ValueError(f"cannot start from {source}: " + "; ".join(
            ([f"{len(missing)} arrays missing ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''})"]
             if missing else []) + ([f"shapes differ ({'; '.join(mismatched[:6])})"] if mismatched else [])))
    return traverse_util.unflatten_dict(flat)


def initial_weights_path(cfg: ModelConfig) -> Path:
    """The file or directory `cfg.init` loads: init_path, or an `efm pretrain` output's params."""
    if cfg.init != "pretrain":
        return Path(cfg.init_path)
    if not cfg.init_path:
        raise ValueError("model.init='pretrain' starts from an `efm pretrain` output: set model.init_path to its "
                         "directory (the pipeline's pretrain step sets it)")
    return Path(cfg.init_path) / PRETRAINED_PARAMS


def check_initial_weights(cfg: ModelConfig) -> None:
    """Fails, before any training, where the starting checkpoint `cfg.init` names is missing."""
    if cfg.init != "scratch" and not (start := initial_weights_path(cfg)).exists():
        raise FileNotFoundError(f"model.init={cfg.init!r}: {start} does not exist")


def load_initial(cfg: ModelConfig, params: Params) -> Params:
    """The model's starting parameters: `params` (scratch) with `cfg.init_parts` replaced."""
    if cfg.init == "scratch":
        return params
    path = initial_weights_path(cfg)
    loaded = read_big_vision_npz(path) if cfg.init == "big_vision" else _read_orbax(path)
    return merge_parts(params, loaded, cfg.init_parts, f"{cfg.init} checkpoint {path}")


def write_big_vision_npz(path: str | Path, params: Params, *, bfloat16: bool = True) -> None:
    """Writes params in big_vision's layout (towers renamed back, layers stacked, bf16 as void):
    for tests, and to hand a tower to big_vision tools."""
    to_bv = {v: k for k, v in BIG_VISION_PARTS.items()}
    flat: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for k, v in traverse_util.flatten_dict(params).items():
        if k[0] not in to_bv:
            continue
        parts = [to_bv[k[0]], *k[1:]]
        arr = np.asarray(v)
        if bfloat16 and arr.dtype == np.float32:
            arr = arr.astype(ml_dtypes.bfloat16).view(np.dtype("V2"))
        layer = next(((i, m) for i, p in enumerate(parts) if (m := re.fullmatch(r"(encoderblock|layers)_(\d+)", p))),
                     None)
        if layer is None:
            flat["/".join(["params", *parts])] = arr
            continue
        i, m = layer
        key = "/".join(["params", *parts[:i], m.group(1), *parts[i + 1:]])
        stacks.setdefault(key, {})[int(m.group(2))] = arr
    for key, layers in stacks.items():
        flat[key] = np.stack([layers[i] for i in sorted(layers)])
    np.savez(path, **flat)
