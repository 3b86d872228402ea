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


def test_evaluation_runs_exactly_num_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """6 episodes on 4 envs run 6 (tasks 0-5 of the fixed list), not 8: the reported counts
    and intervals take n = eval.num_episodes. Multiples of num_envs (every shipped config) run
    as before: num_episodes / num_envs each."""
    import dataclasses

    assert evaluate.episodes_per_env(6, 4).tolist() == [2, 2, 1, 1]
    assert evaluate.episodes_per_env(3, 4).tolist() == [1, 1, 1, 0]
    for n, envs in ((100, 25), (8, 4), (2, 2), (200, 50)):
        assert evaluate.episodes_per_env(n, envs).tolist() == [n // envs] * envs
    monkeypatch.setattr(evaluate, "PolicyAgent", StraightLineAgent)
    monkeypatch.setattr(evaluate, "StepsToGoService", lambda fns, params: None)
    cfg = debug_config()

    def run(num_episodes: int) -> dict[str, tuple]:
        c = cfg.replace(eval=dataclasses.replace(cfg.eval, num_episodes=num_episodes, num_envs=4))
        _, _, episodes = evaluate.evaluate_policy(c, None, np.asarray([1.0, 0.3, 1.0, 0.5]), None)  # type: ignore[arg-type]
        return {e.episode_id: (tuple(e.observations["position"][0]), tuple(e.goal["target"])) for e in episodes}

    six, eight = run(6), run(8)
    assert len(six) == 6 and len(eight) == 8
    assert six == {k: v for k, v in eight.items() if k not in ("eval-2-1", "eval-3-1")}  # tasks 6 and 7 left out


def test_aloha_steps_to_go_strip_is_written_for_a_tiny_model(tmp_path) -> None:
    """Figures 2-3 for an Aloha episode in state mode: the scene rendered from the recorded
    state, each frame with the predicted steps-to-go distribution and d(o, g); a PNG, logged
    with the evaluation's other *.png."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from PIL import Image

    from efm.data.features import input_spec
    from efm.domains import figure_frames, make_local_env
    from efm.envs.base import Episode
    from efm.models.efm import make_functions
    from efm.models.tokenizers import make_vocabulary
    from efm.stages import write_episode_figures

    cfg = debug_config("aloha-insertion")
    cfg = cfg.replace(eval=dataclasses.replace(cfg.eval, strip_frames=3))
    env = make_local_env(cfg.env, 1, seed=0)
    ts = env.reset()
    obs, actions = [ts.observation], []
    for _ in range(3):  # hold the current joints for a chunk
        a = np.tile(ts.observation["joints"], (1, cfg.env.aloha.chunk_length))
        ts = env.step(a)
        obs.append(ts.observation)
        actions.append(a[0])
    env.close()
    episode = Episode(observations={k: np.concatenate([o[k] for o in obs]) for k in obs[0]},
                      actions=np.stack(actions).astype(np.float32), instruction=ts.instruction[0], success=False,
                      episode_id="eval-0-0")
    aloha = cfg.env.aloha
    frames = figure_frames(cfg.env, episode, np.array([0, 3]))
    assert frames.shape == (2, 2 * aloha.view_height + aloha.band_height, 2 * aloha.view_width + aloha.band_height, 3)
    assert frames.std() > 10  # a rendered scene, not a blank image
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    x = {k: jnp.asarray(v) for k, v in input_spec(fns.vocab).episode_inputs(episode).items()}
    params = jax.jit(fns.init)(jax.random.PRNGKey(0), x)
    write_episode_figures(cfg, fns, params, {"SFT (Stage 1)": [episode]}, tmp_path)
    png = tmp_path / "steps_to_go_sft.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.size[0] > 300 and img.size[1] > 200 and np.asarray(img).std() > 10
    assert not list(tmp_path.glob("*.gif"))  # state mode: no camera frames to animate
    # With cameras the recorded stacked images are shown side by side, nothing rendered.
    images = {"rgb": np.full((4, 6, 5, 3), 10, np.uint8), "rgb_wrist": np.full((4, 6, 5, 3), 200, np.uint8)}
    shown = figure_frames(cfg.env, dataclasses.replace(episode, observations=images), np.array([1, 2]))
    assert shown.shape == (2, 6, 5 + aloha.band_height + 5, 3)
    assert (shown[:, :, :5] == 10).all() and (shown[:, :, -5:] == 200).all()
    assert figure_frames(debug_config().env, dataclasses.replace(episode, observations={"position": np.zeros((4, 2))}),
                         np.array([0])) is None  # pointmass: its figure is the trajectory plot


def test_best_threshold_is_where_the_detector_agrees_best_with_ground_truth() -> None:
    d = np.array([0.5, 3.0, 3.0, 8.0, 9.0, 20.0, 30.0])
    truth = np.array([1, 1, 0, 1, 0, 0, 0], bool)
    best = evaluate.best_threshold(d, truth)
    # s = 8 fires on 4 observations, 3 of them successes (F1 6/7); s = 3 would be 2 of 3 (F1 2/3);
    # ties in d fire together, so s = 3.0 cannot count one of its two observations alone.
    assert best == {"threshold": 8.0, "precision": 0.75, "recall": 1.0, "f1": pytest.approx(6 / 7)}
    assert evaluate.best_threshold(d, np.zeros(7, bool)) is None
    assert evaluate.precision_recall(d, truth, best["threshold"]) == {"precision": 0.75, "recall": 1.0}
