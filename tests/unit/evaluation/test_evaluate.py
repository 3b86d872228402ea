"""Evaluation compares policies on one fixed task list."""

from __future__ import annotations

import numpy as np
import pytest

from efm.config import debug_config
from efm.envs.base import TimeStep
from efm.evaluation import evaluate
from efm.rollout import ACTION
from efm.self_improve.actor import STEPS_TO_GO


class StraightLineAgent:
    """Heads for the target at a speed that differs per env: policies of different lengths."""

    def __init__(self, fns: object, speeds: np.ndarray, steps_to_go: object, seed: int):
        self._speeds = speeds

    def reset(self, mask: np.ndarray) -> None:
        del mask

    def observe(self, ts: TimeStep) -> dict[str, np.ndarray]:
        return {STEPS_TO_GO: np.linalg.norm(ts.goal["target"] - ts.observation["position"], axis=-1) * 10}

    def act(self, ts: TimeStep) -> dict[str, np.ndarray]:
        d = ts.goal["target"] - ts.observation["position"]
        unit = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
        return {ACTION: (unit * self._speeds[:, None]).astype(np.float32)}


def test_different_policies_see_identical_task_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Episodes of different lengths finish in different orders; the tasks must not follow."""
    cfg = debug_config()
    monkeypatch.setattr(evaluate, "PolicyAgent", StraightLineAgent)
    monkeypatch.setattr(evaluate, "StepsToGoService", lambda fns, params: None)

    def tasks(speeds: list[float]) -> tuple[dict[str, tuple], list[str]]:
        _, _, episodes = evaluate.evaluate_policy(cfg, None, np.asarray(speeds), None)  # type: ignore[arg-type]
        by_id = {e.episode_id: (tuple(e.observations["position"][0]), tuple(e.goal["target"])) for e in episodes}
        return by_id, [e.episode_id for e in episodes]

    a, order_a = tasks([1.0, 0.3, 1.0, 0.5])
    b, order_b = tasks([0.3, 1.0, 0.6, 1.0])
    assert len(a) == cfg.eval.num_episodes
    assert order_a != order_b  # the episodes finished in different orders
    assert a == b  # yet every (env, episode index) ran the same (start, target)
    assert len(set(a.values())) == len(a)  # and the tasks are distinct
