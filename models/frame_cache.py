"""The image tower's per-frame work, kept across control steps.

A policy reads the current and the previous camera frame (Appendix D.1), and the previous frame
is the one it read as current a control step earlier, under the same instruction. `FrameCache`
remembers each frame's `vit.FrameCodes` by the bytes of the frame and of its instruction, so a
control step runs the tower over the new frames only and hands the model their codes instead of
the frames (`prefix_lm.IMAGE_TOKENS`). Keyed by content, it needs no notion of environments or
episodes: it serves one actor's envs, an evaluation's, or a service batching several actors'
requests alike.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from efm.models.efm import EFMFunctions
from efm.models.prefix_lm import IMAGE, TEXT, trim_text

Arrays = dict[str, np.ndarray]


def bucket_size(rows: int) -> int:
    """Rows padded to the next power of two, so a jitted pass compiles a few shapes, not one per
    number of rows."""
    return 1 << max(0, rows - 1).bit_length()


def frame_key(frame: np.ndarray, text: np.ndarray) -> bytes:
    digest = hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(text).tobytes())
    return digest.digest()


class FrameCache:
    """`cache(inputs)`: the inputs with IMAGE [B, F, H, W, C] replaced by its frames' codes,
    encoded with `params` where not remembered. Holds twice the last call's frames (the previous
    call's are the ones a control step reads again); inputs without IMAGE, or a model without an image tower, pass
    through. New weights need a new cache (`LocalPolicy.update`). Callers may share it across
    threads (a service's concurrent batches)."""

    def __init__(self, fns: EFMFunctions, params: Any):
        self._fns, self.params = fns, params
        self._codes: OrderedDict[bytes, Arrays] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # frames run through the tower
        self.reused = 0  # frames whose codes were remembered

    def __call__(self, inputs: Arrays) -> Arrays:
        if IMAGE not in inputs or not self._fns.encodes_frames:
            return inputs
        with self._lock:
            return self._replace_frames(inputs)

    def _replace_frames(self, inputs: Arrays) -> Arrays:
        # Text first cut as the model would (`trim_text`), so the grounded positions of the codes
        # line up with the text tokens the model is handed.
        inputs = trim_text({k: np.asarray(v) for k, v in inputs.items()})
        frames = inputs[IMAGE]
        b, f = frames.shape[:2]
        flat = frames.reshape(b * f, *frames.shape[2:])
        text = np.repeat(inputs[TEXT], f, axis=0)  # each frame's sample's
        keys = [frame_key(x, t) for x, t in zip(flat, text, strict=True)]
        new = {k: i for i, k in enumerate(keys) if k not in self._codes}  # first row of each unseen frame
        if new:
            rows = list(new.values())
            self._encode(list(new), flat[rows], text[rows])
        self.encoded += len(new)
        self.reused += len(keys) - len(new)
        for k in keys:
            self._codes.move_to_end(k)
        while len(self._codes) > 2 * len(keys):
            self._codes.popitem(last=False)
        rows = [self._codes[k] for k in keys]
        codes = {name: np.stack([r[name] for r in rows]).reshape(b, f, *rows[0][name].shape) for name in rows[0]}
        return {k: v for k, v in inputs.items() if k != IMAGE} | codes

    def _encode(self, keys: list[bytes], frames: np.ndarray, text: np.ndarray) -> None:
        pad = bucket_size(len(frames)) - len(frames)
        frames, text = (np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in (frames, text))
        codes = {name: np.asarray(v) for name, v in self._fns.encode_frames(self.params, frames, text).items()}
        for i, k in enumerate(keys):
            self._codes[k] = {name: v[i] for name, v in codes.items()}
