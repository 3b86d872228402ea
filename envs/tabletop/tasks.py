"""Tabletop tasks and instructions (pure): the three task families, every phrasing and its
parser, ground-truth success tests, optimal-length estimates, and board sampling given an rng.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from efm.config import TABLETOP_TASK_FAMILIES, TabletopConfig
from efm.envs.base import Array
from efm.envs.tabletop.geometry import (
    BLOCK_RADIUS,
    BLOCKS,
    COLORS,
    EFFECTOR_RADIUS,
    SHAPES,
    WORKSPACE,
)

# --- Tasks and instructions (pure) -----------------------------------------------------------

BLOCK2BLOCK, BLOCK2LOCATION, BLOCK2RELATIVE = TABLETOP_TASK_FAMILIES
VERBS = ("push", "move", "slide", "nudge")
BLOCK2BLOCK_PREPOSITIONS = ("to", "towards", "next to", "close to", "near")
LOCATION_INSET = 0.05  # location targets sit this far inside the workspace edges
# fmt: off
LOCATIONS: dict[str, tuple[int, int]] = {  # name -> (row, column) on a 3 x 3 grid
    "top_left": (0, 0), "top": (0, 1), "top_right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom_left": (2, 0), "bottom": (2, 1), "bottom_right": (2, 2),
}
LOCATION_PHRASES: dict[str, tuple[str, ...]] = {
    "top_left": ("top left corner", "top left of the board", "upper left corner", "top left"),
    "top": ("top of the board", "top side", "top edge of the board", "top"),
    "top_right": ("top right corner", "top right of the board", "upper right corner", "top right"),
    "left": ("left side of the board", "left side", "center left", "left edge of the board"),
    "center": ("center of the board", "middle of the board", "center", "middle"),
    "right": ("right side of the board", "right side", "center right", "right edge of the board"),
    "bottom_left": ("bottom left corner", "bottom left of the board", "lower left corner",
                    "bottom left"),
    "bottom": ("bottom of the board", "bottom side", "bottom edge of the board", "bottom"),
    "bottom_right": ("bottom right corner", "bottom right of the board", "lower right corner",
                     "bottom right"),
}
# Up is towards the top of the image (-x), left is -y.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "up": (-1.0, 0.0), "down": (1.0, 0.0), "left": (0.0, -1.0), "right": (0.0, 1.0),
    "up_left": (-1.0, -1.0), "up_right": (-1.0, 1.0),
    "down_left": (1.0, -1.0), "down_right": (1.0, 1.0),
}
DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "up": ("up", "upwards"), "down": ("down", "downwards"),
    "left": ("left", "to the left"), "right": ("right", "to the right"),
}
DIAGONAL_TEMPLATES = ("{} and {}", "{} and then {}", "diagonally {} and {}", "{} and {} diagonally")
RELATIVE_DISTANCES = {"near": 0.1, "far": 0.2}  # metres the block should move
SLIGHTLY = ("slightly", "a bit", "a little")
# fmt: on


@dataclass(frozen=True)
class Task:
    """What an instruction asks for, independent of its phrasing.

    block2block: push `block` to `target_block`; block2location: push `block` to `location`
    (a LOCATIONS key); block2relative: push `block` by RELATIVE_DISTANCES[`distance`] along
    DIRECTIONS[`direction`] from where it started.
    """

    family: str
    block: str
    target_block: str | None = None
    location: str | None = None
    direction: str | None = None
    distance: str | None = None

    def __post_init__(self) -> None:
        if self.family not in TABLETOP_TASK_FAMILIES:
            raise ValueError(
                f"unknown task family {self.family!r}; expected one of {TABLETOP_TASK_FAMILIES}"
            )
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}")
        given = {
            k
            for k in ("target_block", "location", "direction", "distance")
            if getattr(self, k) is not None
        }
        needs = {
            BLOCK2BLOCK: {"target_block"},
            BLOCK2LOCATION: {"location"},
            BLOCK2RELATIVE: {"direction", "distance"},
        }[self.family]
        if given != needs:
            raise ValueError(
                f"{self.family} task needs exactly {sorted(needs)}, got {sorted(given)}"
            )
        if self.target_block is not None and (
            self.target_block not in BLOCKS or self.target_block == self.block
        ):
            raise ValueError(f"invalid target block {self.target_block!r} for block {self.block!r}")
        if self.location is not None and self.location not in LOCATIONS:
            raise ValueError(f"unknown location {self.location!r}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}")
        if self.distance is not None and self.distance not in RELATIVE_DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}")

    @property
    def blocks(self) -> tuple[str, ...]:
        """The blocks the task is about (their rest is part of success)."""
        return (self.block,) if self.target_block is None else (self.block, self.target_block)


def block_text(block: str) -> str:
    return block.replace("_", " ")


_BLOCK_MENTION = re.compile(r"\b(" + "|".join(block_text(b) for b in BLOCKS) + r")\b")


def block_mentions(text: str) -> list[tuple[str, int, int]]:
    """The blocks an instruction names, in text order: (block, start, end) character offsets of
    each mention ("push the red moon to the blue cube": red_moon 9-17, blue_cube 25-34)."""
    return [(m[1].replace(" ", "_"), m.start(), m.end()) for m in _BLOCK_MENTION.finditer(text.lower())]


def location_target(location: str) -> Array:
    """The board point a block2location task aims at: a 3 x 3 grid inset from the edges."""
    row, col = LOCATIONS[location]
    lo, hi = WORKSPACE[0] + LOCATION_INSET, WORKSPACE[1] - LOCATION_INSET
    return lo + (hi - lo) * np.array([row, col]) / 2


def relative_offset(direction: str, distance: str) -> Array:
    d = np.array(DIRECTIONS[direction])
    return RELATIVE_DISTANCES[distance] * d / np.linalg.norm(d)


def direction_phrases(direction: str) -> list[str]:
    if direction in DIRECTION_WORDS:
        return list(DIRECTION_WORDS[direction])
    vertical, horizontal = direction.split("_")
    return [
        t.format(v, h)
        for t in DIAGONAL_TEMPLATES
        for v in DIRECTION_WORDS[vertical]
        for h in DIRECTION_WORDS[horizontal]
    ]


def all_instructions(task: Task) -> list[str]:
    """Every phrasing of the task the generator can produce."""
    b = block_text(task.block)
    if task.family == BLOCK2BLOCK:
        t = block_text(task.target_block or "")
        return [f"{v} the {b} {p} the {t}" for v in VERBS for p in BLOCK2BLOCK_PREPOSITIONS]
    if task.family == BLOCK2LOCATION:
        return [
            f"{v} the {b} to the {loc}"
            for v in VERBS
            for loc in LOCATION_PHRASES[task.location or ""]
        ]
    out = []
    for v, d in itertools.product(VERBS, direction_phrases(task.direction or "")):
        if task.distance == "far":
            out.append(f"{v} the {b} {d}")
        else:
            out.append(f"slightly {v} the {b} {d}")
            for s in SLIGHTLY:
                out += [f"{v} the {b} {s} {d}", f"{v} the {b} {d} {s}"]
    return out


def instruction_for(task: Task, rng: np.random.Generator) -> str:
    """A phrasing drawn uniformly from `all_instructions(task)`."""
    phrases = all_instructions(task)
    return phrases[int(rng.integers(len(phrases)))]


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_BLOCK = rf"(?:{_alternation(COLORS)}) (?:{_alternation(SHAPES)})"
_VERB = _alternation(VERBS)
_LOCATION_OF = {p: loc for loc, ps in LOCATION_PHRASES.items() for p in ps}
_DIRECTION_OF = {p: d for d in DIRECTIONS for p in direction_phrases(d)}
_DIR = _alternation(list(_DIRECTION_OF))
_SLIGHT = _alternation(SLIGHTLY)
_PREP = _alternation(BLOCK2BLOCK_PREPOSITIONS)
_LOC = _alternation(list(_LOCATION_OF))
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        BLOCK2BLOCK,
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?:{_PREP}) the (?P<target>{_BLOCK})"),
    ),
    (
        BLOCK2LOCATION,
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) to the (?P<location>{_LOC})"),
    ),
    ("near", re.compile(rf"slightly (?:{_VERB}) the (?P<block>{_BLOCK}) (?P<direction>{_DIR})")),
    (
        "near",
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?:{_SLIGHT}) (?P<direction>{_DIR})"),
    ),
    (
        "near",
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?P<direction>{_DIR}) (?:{_SLIGHT})"),
    ),
    ("far", re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?P<direction>{_DIR})")),
)


def normalize_instruction(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def parse_instruction(text: str) -> Task:
    """The task an instruction asks for: inverts every phrasing `all_instructions` produces."""
    norm = normalize_instruction(text)
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(norm)
        if m is None:
            continue
        block = m["block"].replace(" ", "_")
        if kind == BLOCK2BLOCK:
            return Task(BLOCK2BLOCK, block, target_block=m["target"].replace(" ", "_"))
        if kind == BLOCK2LOCATION:
            return Task(BLOCK2LOCATION, block, location=_LOCATION_OF[m["location"]])
        return Task(BLOCK2RELATIVE, block, direction=_DIRECTION_OF[m["direction"]], distance=kind)
    raise ValueError(f"not a tabletop instruction: {text!r}")


def task_target(task: Task, positions: Mapping[str, Array], start: Array | None = None) -> Array:
    """Where the task's block should end up: the target block's current position, a board
    location, or `start` (the block's position at the episode start) plus the offset."""
    if task.family == BLOCK2BLOCK:
        return np.asarray(positions[task.target_block or ""], float)
    if task.family == BLOCK2LOCATION:
        return location_target(task.location or "")
    if start is None:
        raise ValueError("a block2relative task needs the block's start position")
    return np.asarray(start, float) + relative_offset(task.direction or "", task.distance or "")


def success_threshold(task: Task, cfg: TabletopConfig) -> float:
    return {
        BLOCK2BLOCK: cfg.block2block_threshold,
        BLOCK2LOCATION: cfg.location_threshold,
        BLOCK2RELATIVE: cfg.relative_threshold,
    }[task.family]


def task_satisfied(
    task: Task, positions: Mapping[str, Array], cfg: TabletopConfig, start: Array | None = None
) -> bool:
    """Whether the block is within the family's threshold of its target (rest not checked)."""
    target = task_target(task, positions, start)
    return bool(
        np.linalg.norm(np.asarray(positions[task.block], float) - target)
        < success_threshold(task, cfg)
    )


def chebyshev(v: Array) -> float:
    """Per-axis bounded actions cover an L-infinity distance of max_delta per step."""
    return float(np.abs(v).max())


def push_steps_estimate(
    effector: Array, center: Array, target: Array, reach: float, standoff: float, max_delta: float
) -> float:
    """Steps of a perfect push: the effector to `standoff` behind the object (as seen from the
    target), then pushing straight until the object is within `reach` of the target."""
    d = np.asarray(target, float) - center
    dist = float(np.linalg.norm(d))
    if dist <= reach:
        return 0.0
    u = d / dist
    behind = center - standoff * u
    travel = chebyshev(behind - effector) + (dist - reach) * chebyshev(u)
    return float(math.ceil(travel / max_delta - 1e-9))  # no extra step for rounding noise



# --- Sampling boards (pure, given an rng) ----------------------------------------------------

SPAWN_MARGIN = 0.06  # blocks start this far inside the workspace: the effector can get behind them
MIN_BLOCK_SPACING = 0.07
EFFECTOR_CLEARANCE = BLOCK_RADIUS + EFFECTOR_RADIUS + 0.01


def sample_positions(
    rng: np.random.Generator,
    k: int,
    spacing: float,
    margin: float,
    avoid: Sequence[Array] = (),
    tries: int = 200,
) -> Array | None:
    """k points in the workspace shrunk by `margin`, pairwise (and from `avoid`) at least
    `spacing` apart; None when rejection sampling gives up."""
    lo, hi = WORKSPACE[0] + margin, WORKSPACE[1] - margin
    points: list[Array] = []
    for _ in range(k):
        for _ in range(tries):
            p = rng.uniform(lo, hi)
            if all(np.linalg.norm(p - q) >= spacing for q in [*avoid, *points]):
                points.append(p)
                break
        else:
            return None
    return np.array(points).reshape(k, 2)


def sample_task(
    rng: np.random.Generator,
    families: Sequence[str],
    positions: Mapping[str, Array],
    cfg: TabletopConfig,
    tries: int = 50,
) -> Task | None:
    """A task of a random family that the board does not already satisfy and that a push can
    solve (targets inside the workspace); None when none was found."""
    names = list(positions)
    family = families[int(rng.integers(len(families)))]
    for _ in range(tries):
        block = names[int(rng.integers(len(names)))]
        if family == BLOCK2BLOCK:
            others = [n for n in names if n != block]
            if not others:
                return None
            task = Task(family, block, target_block=others[int(rng.integers(len(others)))])
        elif family == BLOCK2LOCATION:
            task = Task(family, block, location=list(LOCATIONS)[int(rng.integers(len(LOCATIONS)))])
        else:
            task = Task(
                family,
                block,
                direction=list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
                distance=list(RELATIVE_DISTANCES)[int(rng.integers(len(RELATIVE_DISTANCES)))],
            )
        target = task_target(task, positions, positions[block])
        inside = bool(
            np.all(target >= WORKSPACE[0] + 0.03) and np.all(target <= WORKSPACE[1] - 0.03)
        )
        far = np.linalg.norm(target - positions[block]) > success_threshold(task, cfg) + 0.05
        if inside and far:
            return task
    return None
