"""The Single-Insertion task (Section 4.1.3, Appendix D.3): sampling, instruction, success.

The left gripper picks up the blue socket, the right gripper the red peg, and the peg goes into
the socket. One task, so one instruction. Peg and socket start flat on the table at positions
drawn uniformly from gym-aloha's ranges (peg on the right half, socket on the left); a task is
a pure function of its random stream. Success is ALOHA's: the peg touches the pin inside the
socket, a contact only a full insertion makes (the cameras barely see it, Section 4.1.3).
"""

from __future__ import annotations

import numpy as np

from efm.config import AlohaConfig
from efm.envs.aloha.scene import PEG_GEOM, PIN_GEOM

Array = np.ndarray

INSTRUCTION = "insert the red peg into the blue socket"
SPAWN_Z = 0.05  # objects are dropped from this height and settle before the first observation
IDENTITY_QUAT = np.array([1.0, 0.0, 0.0, 0.0])
# Heights (m) of a held object: above where it rests (0.01, 0.022) and at most a little above the
# meeting point (0.15; demonstrations never pass 0.18). Higher is thrown: a flailing arm can fling
# an object metres up, where it stays a second or two.
LIFT_BANDS = {"peg": (0.05, 0.3), "socket": (0.06, 0.3)}
HELD_CHUNKS = 3  # observations (1.5 s) within the band: lifted, not knocked up by a flailing arm


def sample_poses(rng: np.random.Generator, cfg: AlohaConfig) -> tuple[Array, Array]:
    """(peg [7], socket [7]) start poses: uniform positions in the configured ranges, upright."""
    peg = np.array([rng.uniform(*cfg.peg_x_range), rng.uniform(*cfg.peg_y_range), SPAWN_Z])
    socket = np.array([rng.uniform(*cfg.socket_x_range), rng.uniform(*cfg.socket_y_range), SPAWN_Z])
    return np.concatenate([peg, IDENTITY_QUAT]), np.concatenate([socket, IDENTITY_QUAT])


def inserted(contacts: set[frozenset[str]]) -> bool:
    """Ground-truth success: the peg is in contact with the pin inside the socket."""
    return frozenset((PEG_GEOM, PIN_GEOM)) in contacts


def held_up(heights: Array, band: tuple[float, float], held: int = HELD_CHUNKS) -> bool:
    """Whether `heights` [T] stay within `band` (above low, at most high) for `held` consecutive
    observations."""
    heights = np.asarray(heights)
    inside = ((heights > band[0]) & (heights <= band[1])).astype(int)
    return len(inside) >= held and bool((np.convolve(inside, np.ones(held, int), "valid") == held).any())
