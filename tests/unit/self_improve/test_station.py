"""A robot station behind the simulator's interface: the actor runs a round on it unchanged."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from efm.config import debug_config
from efm.self_improve.actor import RETURN
from efm.self_improve.builder import FleetBuilder
from efm.self_improve.station import StationEnv


class PointStation:
    """A stand-in for robot hardware: a point that moves by 0.1 * action, goal at (0.5, 0)."""

    action_dim = 2

    def __init__(self) -> None:
        self.position = np.zeros(2, np.float32)
        self.resets = 0
        self.closed = False

    def reset(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
        self.resets += 1
        self.position = np.zeros(2, np.float32)
        return {"position": self.position.copy()}, {"target": np.array([0.5, 0.0], np.float32)}, "go right"

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
        self.position = self.position + 0.1 * action
        return {"position": self.position.copy()}

    def close(self) -> None:
        self.closed = True


class DistanceSteps:
    """d(o, g): ten steps per unit of distance to the goal (a stand-in reward model)."""

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return 10.0 * np.linalg.norm(inputs["observation/position"] - inputs["goal/target"], axis=-1)


def test_an_actor_practises_on_a_robot_station() -> None:
    cfg = debug_config()
    cfg = cfg.replace(env=dataclasses.replace(cfg.env, max_episode_steps=20))
    builder = FleetBuilder(cfg)
    params = builder.fns.init(jax.random.PRNGKey(0), {"observation/position": np.zeros((1, 2), np.float32),
                                                      "goal/target": np.zeros((1, 2), np.float32)})
    station = PointStation()
    with builder.make_replay_server() as replay:
        actor = builder.make_actor(0, params, DistanceSteps(), replay, env=StationEnv(station))
        episodes = actor.run_round(params, 0, max_episodes=3, target_size=10_000)
        held = replay.take_episodes(replay.num_episodes())
        actor.close()
    assert len(episodes) == 3 == station.resets and station.closed
    assert all(0 < e["length"] <= 20 and e["success"] == 0.0 for e in episodes)  # no ground truth on a robot
    assert sorted(len(e[RETURN]) for e in held) == sorted(int(e["length"]) for e in episodes)
