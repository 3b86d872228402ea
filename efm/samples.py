"""Episodes -> Stage-1 training samples (o_t, a_t, g, t' - t), as flat arrays.

Samples are held in memory as numpy arrays, which suits state-based domains; the batch format
(model inputs + objective + target tokens) is what any data source must produce.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from efm.envs.base import Episode
from efm.models.tokenizers import Vocabulary

Batch = dict[str, np.ndarray]


def model_inputs(observation: dict[str, np.ndarray], goal: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's input dict from observation and goal arrays (same leading axes)."""
    return {**{f"observation/{k}": v for k, v in observation.items()}, **{f"goal/{k}": v for k, v in goal.items()}}


def episode_inputs(episode: Episode) -> dict[str, np.ndarray]:
    """Inputs for every observation of an episode. [T+1, ...]"""
    n = episode.length + 1
    goal = {k: np.broadcast_to(v, (n, *np.shape(v))) for k, v in episode.goal.items()}
    return model_inputs(episode.observations, goal)


@dataclass
class ObjectiveSamples:
    inputs: dict[str, np.ndarray]  # [S, ...]
    targets: np.ndarray  # [S, L] global token ids

    def __len__(self) -> int:
        return len(self.targets)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def behavioral_cloning_samples(episodes: Sequence[Episode], vocab: Vocabulary) -> ObjectiveSamples:
    """(o_t, g) -> a_t for every step that has an action."""
    inputs = _concat([{k: v[:-1] for k, v in episode_inputs(e).items()} for e in episodes if e.length])
    actions = np.concatenate([e.actions for e in episodes if e.length])
    return ObjectiveSamples(inputs, vocab.action_targets(actions))


def steps_to_go_samples(episodes: Sequence[Episode], vocab: Vocabulary) -> ObjectiveSamples:
    """(o_t, g) -> T - t for every observation of successful episodes (goal reached at T)."""
    done = [e for e in episodes if e.success]
    if not done:
        raise ValueError("no successful episode: steps-to-go labels need episodes that reach their goal")
    inputs = _concat([episode_inputs(e) for e in done])
    steps = np.concatenate([np.arange(e.length, -1, -1) for e in done])
    return ObjectiveSamples(inputs, vocab.steps_to_go_targets(steps))


def make_batch(samples: dict[str, ObjectiveSamples], indices: dict[str, np.ndarray], objective_ids: dict[str, int],
               max_len: int) -> Batch:
    """One batch mixing objectives: inputs, objective id, padded targets and target mask."""
    parts = []
    for name, idx in indices.items():
        s = samples[name]
        targets = np.zeros((len(idx), max_len), np.int32)
        mask = np.zeros((len(idx), max_len), np.float32)
        targets[:, : s.targets.shape[1]] = s.targets[idx]
        mask[:, : s.targets.shape[1]] = 1.0
        parts.append({
            **{f"inputs/{k}": v[idx] for k, v in s.inputs.items()},
            "objective": np.full(len(idx), objective_ids[name], np.int32),
            "targets": targets,
            "target_mask": mask,
        })
    return _concat(parts)


def training_batch(samples: dict[str, ObjectiveSamples], batch_size: int, objective_ids: dict[str, int],
                   max_len: int, rng: np.random.Generator) -> Batch:
    """Each batch split uniformly across objectives (Appendix A.3)."""
    per = batch_size // len(samples)
    idx = {name: rng.integers(0, len(s), per) for name, s in samples.items()}
    return make_batch(samples, idx, objective_ids, max_len)


def evaluation_batches(s: ObjectiveSamples, name: str, batch_size: int, objective_ids: dict[str, int],
                       max_len: int) -> Iterator[Batch]:
    """Every sample of one objective once, in order."""
    for start in range(0, len(s), batch_size):
        idx = np.arange(start, min(start + batch_size, len(s)))
        yield make_batch({name: s}, {name: idx}, objective_ids, max_len)


def split_inputs(batch: Batch) -> tuple[dict[str, np.ndarray], Batch]:
    inputs = {k.removeprefix("inputs/"): v for k, v in batch.items() if k.startswith("inputs/")}
    rest = {k: v for k, v in batch.items() if not k.startswith("inputs/")}
    return inputs, rest
