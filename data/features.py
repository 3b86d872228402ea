"""What the model reads: observations, goal and instruction -> the model's input arrays.

One place decides it for training samples, actors and evaluation alike:
- state models (pointmass MLP): every observation array and goal array, `observation/<key>`
  and `goal/<key>`, and STATE where the tokenizer asks for it (a transformer decoder's joint
  tokens);
- vision-language models: IMAGE, the current and the previous frame of each configured camera
  (`tokenizer.cameras`), [2 * cameras, H, W, C] as [cam0 now, cam0 before, cam1 now, ...]
  (Appendix D.1; at t = 0 the previous frame is the first): the table's one camera, Aloha's
  two stacked images (D.3); TEXT, the instruction's tokens; and where the tokenizer asks for it
  STATE, proprioception tokens (the effector position, Aloha's joints). Never the simulator's privileged state (block or banana poses):
  a real robot has none, and only the scripted demonstrators read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from efm.envs.base import Episode
from efm.models.prefix_lm import IMAGE, STATE, TEXT
from efm.models.tokenizers import StateTokenizer, TextTokenizer, Vocabulary

Arrays = dict[str, np.ndarray]
CAMERAS = ("rgb",)  # default observation keys of the camera frames a vision-language model reads


@dataclass(frozen=True)
class InputSpec:
    text: TextTokenizer | None  # None: a state model
    state: StateTokenizer | None = None
    cameras: tuple[str, ...] = CAMERAS

    @property
    def reads_images(self) -> bool:
        return self.text is not None

    def inputs(self, observation: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray] | None,
               goal: Mapping[str, np.ndarray], instructions: Sequence[str]) -> Arrays:
        """Model inputs for a batch [N] of observations (the previous ones for frame pairs)."""
        if self.text is None:
            out = {**{f"observation/{k}": np.asarray(v) for k, v in observation.items()},
                   **{f"goal/{k}": np.asarray(v) for k, v in goal.items()}}
            return {**out, **self._state(observation)}
        frames = []
        for camera in self.cameras:
            if camera not in observation:
                raise KeyError(f"the vision-language model reads the camera frames {self.cameras}; the observation "
                               f"has {sorted(observation)} (render_images off?)")
            now = np.asarray(observation[camera])
            frames += [now, now if previous is None else np.asarray(previous[camera])]
        return {IMAGE: self._stack(frames), TEXT: self.text.encode(list(instructions)), **self._state(observation)}

    def _state(self, observation: Mapping[str, np.ndarray]) -> Arrays:
        """STATE, the proprioception tokens, where the tokenizer reads them."""
        if self.state is None:
            return {}
        if self.state.key not in observation:
            raise KeyError(f"the model reads the state input {self.state.key!r}; the observation has "
                           f"{sorted(observation)}")
        return {STATE: self.state.encode(observation[self.state.key])}

    def episode_inputs(self, episode: Episode) -> Arrays:
        """Inputs for every observation of an episode. [T+1, ...]"""
        n = episode.length + 1
        previous = {k: np.concatenate([v[:1], v[:-1]]) for k, v in episode.observations.items()}
        goal = {k: np.broadcast_to(v, (n, *np.shape(v))) for k, v in episode.goal.items()}
        return self.inputs(episode.observations, previous, goal, [episode.instruction] * n)

    def first_last_inputs(self, episodes: Sequence[Episode]) -> Arrays:
        """The auxiliary objective's inputs: first and last frame, no instruction. [N, ...]"""
        assert self.text is not None
        frames = [np.stack([e.observations[c][i] for e in episodes]) for c in self.cameras for i in (0, -1)]
        out = {IMAGE: self._stack(frames), TEXT: np.zeros((len(episodes), self.text.length), np.int32)}
        if self.state is not None:  # no state either: the answer must come from the frames
            out[STATE] = np.zeros((len(episodes), self.state.dims), np.int32)
        return out


    def _stack(self, frames: list[np.ndarray]) -> np.ndarray:
        """[F] frames of [N, H, W, C] -> [N, F, H, W, C]; one ViT reads them all, so one shape."""
        shapes = {f.shape[1:] for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"the cameras {self.cameras} give frames of different shapes {sorted(shapes)}; "
                             "the image tower reads one shape")
        return np.stack(frames, axis=1)


def input_spec(vocab: Vocabulary) -> InputSpec:
    """What a model with this vocabulary reads (a vocabulary with text: frames + text)."""
    return InputSpec(vocab.text, vocab.state, vocab.cameras)


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
