"""What the model reads: observations, goal and instruction -> the model's input arrays.

One place decides it for training samples, actors and evaluation alike:
- state models (pointmass MLP): every observation array and goal array, `observation/<key>`
  and `goal/<key>`;
- vision-language models: IMAGE, the current and the previous camera frame [2, H, W, C]
  (Appendix D.1; at t = 0 the previous frame is the first), and TEXT, the instruction's UTF-8
  bytes. Never the simulator's privileged state (block or banana poses): a real robot has
  none, and only the scripted demonstrators read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from efm.config import RunConfig
from efm.envs.base import Episode
from efm.models.tokenizers import TextTokenizer
from efm.models.vlm import IMAGE, TEXT

Arrays = dict[str, np.ndarray]
CAMERA = "rgb"  # the observation key of the camera frame the vision-language model reads


@dataclass(frozen=True)
class InputSpec:
    text: TextTokenizer | None  # None: a state model
    camera: str = CAMERA

    @property
    def reads_images(self) -> bool:
        return self.text is not None

    def inputs(self, observation: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray] | None,
               goal: Mapping[str, np.ndarray], instructions: Sequence[str]) -> Arrays:
        """Model inputs for a batch [N] of observations (the previous ones for frame pairs)."""
        if self.text is None:
            return {**{f"observation/{k}": np.asarray(v) for k, v in observation.items()},
                    **{f"goal/{k}": np.asarray(v) for k, v in goal.items()}}
        if self.camera not in observation:
            raise KeyError(f"the vision-language model reads the camera frame {self.camera!r}; the observation "
                           f"has {sorted(observation)} (render_images off?)")
        now = np.asarray(observation[self.camera])
        before = now if previous is None else np.asarray(previous[self.camera])
        return {IMAGE: np.stack([now, before], axis=1), TEXT: self.text.encode(list(instructions))}

    def episode_inputs(self, episode: Episode) -> Arrays:
        """Inputs for every observation of an episode. [T+1, ...]"""
        n = episode.length + 1
        previous = {k: np.concatenate([v[:1], v[:-1]]) for k, v in episode.observations.items()}
        goal = {k: np.broadcast_to(v, (n, *np.shape(v))) for k, v in episode.goal.items()}
        return self.inputs(episode.observations, previous, goal, [episode.instruction] * n)

    def first_last_inputs(self, episodes: Sequence[Episode]) -> Arrays:
        """The auxiliary objective's inputs: first and last frame, no instruction. [N, ...]"""
        assert self.text is not None
        frames = [np.stack([e.observations[self.camera][0], e.observations[self.camera][-1]]) for e in episodes]
        return {IMAGE: np.stack(frames), TEXT: np.zeros((len(episodes), self.text.length), np.int32)}


def input_spec(cfg: RunConfig) -> InputSpec:
    return InputSpec(TextTokenizer(cfg.tokenizer.text_tokens) if cfg.model.reads_text else None)


class FrameHistory:
    """The previous observation of each of N environments, for frame-pair inputs.

    `reset(mask)` marks new episodes (their previous frame is their first); `__call__` returns
    the previous observations for the current ones and remembers the current ones.
    """

    def __init__(self) -> None:
        self._previous: Arrays | None = None
        self._fresh: np.ndarray | None = None

    def reset(self, mask: np.ndarray) -> None:
        self._fresh = np.asarray(mask, bool) if self._fresh is None else self._fresh | np.asarray(mask, bool)

    def __call__(self, observation: Mapping[str, np.ndarray]) -> Arrays:
        current = {k: np.asarray(v) for k, v in observation.items()}
        if self._previous is None:
            previous = current
        else:
            fresh = np.zeros(len(next(iter(current.values()))), bool) if self._fresh is None else self._fresh
            previous = {k: np.where(fresh.reshape(-1, *[1] * (v.ndim - 1)), v, self._previous[k])
                        for k, v in current.items()}
        self._previous, self._fresh = current, None
        return previous
