"""Where in the camera image the objects a text names are: the targets of the grounding loss
(`EFMFunctions.grounding_loss`), for pretraining questions and for Stage-1 instructions.

Each text token that is part of an object's name gets that object's image position (row,
column in [-1, 1], `envs.tabletop.image_position`); the others are masked out. The positions
come from the simulator's privileged poses, so they supervise training only: the model never
reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from efm.envs.tabletop.geometry import BLOCK_HALF_HEIGHT, BLOCKS, EFFECTOR_Z
from efm.envs.tabletop.scene import image_position
from efm.envs.tabletop.tasks import block_mentions
from efm.models.tokenizers import TextTokenizer

EFFECTOR = "effector"


def _byte_offset(sentence: str, char: int) -> int:
    """Where character offset `char` is in the sentence's UTF-8 bytes, moved back over the
    spaces before it: a word's space goes with the word (token " red"), so a span owns it."""
    return len(sentence[:char].rstrip(" ").encode("utf-8"))


def span_owners(text: TextTokenizer, sentence: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which span (its index in `spans`, character offsets) each text token of the sentence
    belongs to, -1 for tokens outside every span; a later span wins a shared token. [text length]

    Spans map to the tokens of one encoding of the whole sentence (a token belongs to a span
    if it stands for any of its bytes), so a name followed by punctuation ("moon." is no word
    token) owns the bytes it is spelled in."""
    tokens = text.encode([sentence])[0]  # [L]
    ends = np.cumsum(text.byte_lengths(tokens))  # [L] byte offset after each token
    starts = ends - text.byte_lengths(tokens)
    owner = np.full(text.length, -1, np.int32)
    for i, (start, end) in enumerate(spans):
        lo, hi = _byte_offset(sentence, start), _byte_offset(sentence, end)
        if lo < hi:  # an empty span owns no token
            owner[(tokens != 0) & (starts < hi) & (ends > lo)] = i
    return owner


def object_points(objects: Sequence[str], xy: np.ndarray) -> np.ndarray:
    """The centres of a board's objects in the world [objects, 3] (blocks rest on the table,
    the effector hovers), for where they appear in the camera image."""
    z = [EFFECTOR_Z if name == EFFECTOR else BLOCK_HALF_HEIGHT for name in objects]
    return np.concatenate([xy, np.asarray(z, np.float32)[:, None]], axis=1)


def instruction_grounding(text: TextTokenizer, instructions: Sequence[str], blocks: np.ndarray,
                          aspect: float, camera: str = "oblique") -> tuple[np.ndarray, np.ndarray]:
    """Grounding targets of table instructions: each block name's tokens get where that block
    is in the frame. blocks [n, len(BLOCKS), 2] (the step's block positions), aspect = width /
    height, camera the table's (`env.tabletop.camera`). Returns rc [n, text length, 2] and
    mask [n, text length]."""
    rc = np.zeros((len(instructions), text.length, 2), np.float32)
    mask = np.zeros((len(instructions), text.length), np.float32)
    for i, sentence in enumerate(instructions):
        mentions = block_mentions(sentence)
        if not mentions:
            continue
        names = [name for name, _, _ in mentions]
        owner = span_owners(text, sentence, [(start, end) for _, start, end in mentions])
        xy = blocks[i, [BLOCKS.index(name) for name in names]]
        named = owner >= 0
        rc[i, named] = image_position(object_points(names, xy), aspect, camera)[owner[named]]
        mask[i, named] = 1.0
    return rc, mask
