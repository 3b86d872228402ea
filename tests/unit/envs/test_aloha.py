"""The Aloha Single-Insertion domain: joint conventions, camera stacking, success, determinism,
and the scripted demonstrator producing a small state-mode dataset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dm_control.rl.control import PhysicsError

from efm.config import AlohaConfig, EnvConfig, RunConfig, default_config
from efm.data import rlds
from efm.domains import progress_metrics
from efm.envs.aloha import scene
from efm.envs.aloha.demonstrator import (
    AlohaDemonstrator,
    mocap_from_gripper,
    quat_about_y,
    quat_mul,
    quat_rotate,
)
from efm.envs.aloha.env import (
    JOINTS,
    PEG_POSE,
    RGB,
    RGB_WRIST,
    SOCKET_POSE,
    AlohaInsertionEnv,
    lift_progress,
    validated_chunks,
)
from efm.envs.aloha.tasks import INSTRUCTION, held_up, inserted
from efm.envs.base import Episode
from efm.stages import dataset_stage


def aloha_env_config(**aloha: object) -> EnvConfig:
    return EnvConfig(domain="aloha-insertion", max_episode_steps=300, aloha=AlohaConfig(**aloha))


# --- Pure parts -------------------------------------------------------------------------------


def test_stack_views_puts_upper_over_a_black_band_over_lower() -> None:
    upper = np.full((3, 4, 3), 7, np.uint8)
    lower = np.full((3, 4, 3), 9, np.uint8)
    image = scene.stack_views(upper, lower, band=2)
    assert image.shape == (8, 4, 3)
    assert (image[:3] == 7).all() and (image[3:5] == 0).all() and (image[5:] == 9).all()
    with pytest.raises(ValueError, match="one shape"):
        scene.stack_views(upper, lower[:2], band=2)


def test_stacked_images_follow_appendix_d3() -> None:
    views = {c: np.full((2, 2, 3), k + 1, np.uint8) for k, c in enumerate(scene.CAMERAS)}
    first, second = scene.stacked_images(views, band=1)
    assert first[0, 0, 0] == 1 and first[-1, 0, 0] == 2  # top over angle
    assert second[0, 0, 0] == 3 and second[-1, 0, 0] == 4  # left wrist over right wrist


def test_joint_conventions_round_trip() -> None:
    rng = np.random.default_rng(0)
    joints = rng.uniform(scene.JOINT_LOW, scene.JOINT_HIGH, (5, 14))
    np.testing.assert_allclose(scene.unnormalize_joints(scene.normalize_joints(joints)), joints, atol=1e-12)
    np.testing.assert_allclose(scene.qpos_to_joints(scene.joints_to_qpos(joints)), joints, atol=1e-12)
    normalized = scene.normalize_joints(joints)
    assert normalized.min() >= -1 and normalized.max() <= 1
    qpos = scene.joints_to_qpos(joints)
    np.testing.assert_allclose(qpos[:, 7], -qpos[:, 6])  # fingers mirror each other


def test_interpolation_reaches_each_target_linearly() -> None:
    previous, targets = np.zeros(14), np.stack([np.full(14, 5.0), np.full(14, 10.0)])
    out = scene.interpolate_targets(previous, targets, steps=5)
    assert out.shape == (10, 14)
    np.testing.assert_allclose(out[:, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


def test_actions_are_chunks_of_14_joint_targets() -> None:
    chunks = validated_chunks(np.arange(140.0).reshape(2, 70) / 1000, 2, 5)
    assert chunks.shape == (2, 5, 14) and chunks[1, 0, 0] == pytest.approx(0.07)
    assert validated_chunks(np.full((1, 70), 3.0), 1, 5).max() == 1.0  # clipped to [-1, 1]
    with pytest.raises(ValueError, match="shape"):
        validated_chunks(np.zeros((1, 14)), 1, 5)
    with pytest.raises(ValueError, match="finite"):
        validated_chunks(np.full((1, 70), np.nan), 1, 5)


def test_mocap_pose_inverts_the_weld() -> None:
    rel_pos, rel_quat = np.array([-0.13, 0.0, 0.002]), quat_about_y(180.0)
    mocap_pos, mocap_quat = np.array([0.1, 0.5, 0.2]), quat_about_y(60.0)
    grip_pos = mocap_pos + quat_rotate(mocap_quat, rel_pos)
    grip_quat = quat_mul(mocap_quat, rel_quat)
    pos, quat = mocap_from_gripper(grip_pos, grip_quat, rel_pos, rel_quat)
    np.testing.assert_allclose(pos, mocap_pos, atol=1e-12)
    np.testing.assert_allclose(np.abs(quat @ mocap_quat), 1.0, atol=1e-12)


def test_success_is_the_peg_touching_the_pin() -> None:
    assert inserted({frozenset(("red_peg", "pin")), frozenset(("red_peg", "table"))})
    assert not inserted({frozenset(("red_peg", "socket-1")), frozenset(("pin", "table"))})


def test_held_up_needs_consecutive_observations_within_the_band() -> None:
    band = (0.05, 0.3)
    assert held_up(np.array([0.0, 0.1, 0.1, 0.3, 0.0]), band, held=3)
    assert not held_up(np.array([0.1, 0.1, 0.0, 0.1, 0.1, 0.05]), band, held=3)  # knocked up twice; 0.05 is not above
    assert not held_up(np.array([0.1, 0.1]), band, held=3)  # too short to tell
    assert not held_up(np.array([0.01, 0.2, 3.6, 6.0, 5.9, 3.4, 0.2, 0.01]), band, held=3)  # flung, not lifted


def _posed_episode(peg_z: list[float], socket_z: list[float]) -> Episode:
    """An episode whose only observations are the objects' poses at the given heights."""
    def poses(z: list[float]) -> np.ndarray:
        p = np.zeros((len(z), 7), np.float32)
        p[:, 2], p[:, 3] = z, 1.0
        return p

    return Episode(observations={PEG_POSE: poses(peg_z), SOCKET_POSE: poses(socket_z)},
                   actions=np.zeros((len(peg_z) - 1, 70), np.float32), instruction=INSTRUCTION)


def test_progress_is_the_share_of_episodes_that_held_each_object_up() -> None:
    cfg = aloha_env_config()
    rest, up = [0.01] * 6, [0.01, 0.08, 0.08, 0.08, 0.08, 0.01]
    knocked = [0.022, 0.2, 0.2, 0.022, 0.022, 0.022]  # up for two chunks: thrown, not lifted
    episodes = [_posed_episode(up, knocked), _posed_episode(rest, up)]
    assert lift_progress(episodes[0].observations) == {"peg_lifted": True, "socket_lifted": False}
    assert progress_metrics(cfg, episodes) == {"peg_lifted": 0.5, "socket_lifted": 0.5}
    assert progress_metrics(cfg, []) == {}
    camera_only = Episode(observations={JOINTS: np.zeros((6, 14), np.float32)},
                          actions=np.zeros((5, 70), np.float32), instruction=INSTRUCTION)
    assert progress_metrics(cfg, [camera_only]) == {}  # no poses recorded, nothing to say
    assert progress_metrics(EnvConfig(domain="pointmass"), episodes) == {}


def test_default_config_validates_and_matches_the_env() -> None:
    cfg = default_config("aloha-insertion")
    assert cfg.tokenizer.action_dim == cfg.env.aloha.action_dim == 70
    assert cfg.tokenizer.steps_to_go_max >= cfg.env.max_episode_steps
    assert RunConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match=r"aloha\.chunk_length"):
        AlohaConfig(chunk_length=0)
    with pytest.raises(ValueError, match=r"aloha\.peg_x_range"):
        AlohaConfig(peg_x_range=(0.2, 0.1))


# --- The simulated scene ------------------------------------------------------------------------


def test_reset_is_deterministic_per_seed_and_task() -> None:
    cfg = aloha_env_config()
    actions = np.random.default_rng(0).uniform(-0.2, 0.2, (2, 70)).astype(np.float32)
    runs = []
    for seed in (3, 3, 4):
        with AlohaInsertionEnv(cfg, 2, seed) as env:
            first = env.reset()
            after = env.step(actions)
            runs.append((first, after))
    (a0, a1), (b0, b1), (c0, _) = runs
    for key in (JOINTS, PEG_POSE, SOCKET_POSE):
        np.testing.assert_array_equal(a0.observation[key], b0.observation[key])
        np.testing.assert_array_equal(a1.observation[key], b1.observation[key])
    assert not np.allclose(a0.observation[PEG_POSE], c0.observation[PEG_POSE])  # another seed
    assert a0.instruction == (INSTRUCTION, INSTRUCTION) and not a0.success.any()
    assert a0.observation[JOINTS].shape == (2, 14) and a0.observation[PEG_POSE].shape == (2, 7)
    # Env 1 of a worker holding envs 1.. gets env 1's episodes; task k is the same in any env.
    with AlohaInsertionEnv(cfg, 1, 3, first_env=1) as env:
        np.testing.assert_array_equal(env.reset().observation[PEG_POSE][0], a0.observation[PEG_POSE][1])
        by_task = env.reset(tasks=np.array([7])).observation[SOCKET_POSE][0]
    with AlohaInsertionEnv(cfg, 2, 3) as env:
        np.testing.assert_array_equal(env.reset(tasks=np.array([0, 7])).observation[SOCKET_POSE][1], by_task)


def test_ground_truth_success_in_the_scene() -> None:
    with AlohaInsertionEnv(aloha_env_config(), 1, 0) as env:
        assert not env.reset().success[0]
        physics = env.physics(0)
        socket = np.array([0.0, 0.5, 0.15, 1.0, 0.0, 0.0, 0.0])
        peg_in = socket + np.array([0.095, 0, 0, 0, 0, 0, 0])  # its end pressed on the pin
        peg_out = socket + np.array([0.2, 0, 0, 0, 0, 0, 0])  # beside the socket's mouth
        for peg, expected in ((peg_in, True), (peg_out, False)):
            scene.set_state(physics, scene.start_joints(), peg, socket)
            physics.forward()
            assert inserted(scene.contact_pairs(physics)) is expected


def test_four_cameras_render_into_two_stacked_images() -> None:
    cfg = aloha_env_config(render_images=True, view_height=12, view_width=16, band_height=2)
    with AlohaInsertionEnv(cfg, 1, 0) as env:
        obs = env.reset().observation
        top = env.physics(0).render(height=12, width=16, camera_id="top")
        right_wrist = env.physics(0).render(height=12, width=16, camera_id="right_wrist")
    assert obs[RGB].shape == obs[RGB_WRIST].shape == (1, 26, 16, 3) and obs[RGB].dtype == np.uint8
    np.testing.assert_array_equal(obs[RGB][0, :12], top)
    np.testing.assert_array_equal(obs[RGB_WRIST][0, 14:], right_wrist)
    assert (obs[RGB][0, 12:14] == 0).all() and (obs[RGB_WRIST][0, 12:14] == 0).all()
    assert obs[RGB][0, :12].std() > 0  # a rendered scene, not a blank frame


def test_demonstrator_writes_a_small_successful_state_dataset(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = default_config("aloha-insertion")
    cfg = base.replace(data=dataclasses.replace(base.data, num_episodes=2, validation_episodes=1))

    def demonstrator_failing_once(*args):  # one unstable plan, counted in the dataset's statistics
        demo = AlohaDemonstrator(*args)
        monkeypatch.setattr(demo._planner, "run", _failing_once(demo._planner.run))
        return demo

    monkeypatch.setattr("efm.stages.make_demonstrator", demonstrator_failing_once)
    stats = dataset_stage(cfg, tmp_path / "ds", progress=False)
    episodes = rlds.read_episodes(tmp_path / "ds")
    assert len(episodes) == 2 and stats["demonstrations_attempted"] >= 2
    assert stats["planning_failures"] == 1 and stats["rejected_chunks"] == 0
    for e in episodes:
        assert e.success and e.instruction == INSTRUCTION
        assert e.actions.shape == (e.length, 70) and np.abs(e.actions).max() <= 1.0
        assert set(e.observations) == {JOINTS, PEG_POSE, SOCKET_POSE}
        assert e.observations[SOCKET_POSE][-1, 2] > 0.06 and e.observations[PEG_POSE][-1, 2] > 0.06  # lifted
        assert lift_progress(e.observations) == {"peg_lifted": True, "socket_lifted": True}
        assert lift_progress({k: v[:1] for k, v in e.observations.items()}) == {"peg_lifted": False,
                                                                              "socket_lifted": False}


def _failing_once(real, after: int = 0):
    """`real` that raises MuJoCo's instability error on call number `after` (0-based), once."""
    calls = []

    def call(*args):
        calls.append(1)
        if len(calls) == after + 1:
            raise PhysicsError("Physics state is invalid. Warning(s) raised: mjWARN_BADQACC")
        return real(*args)

    return call


def test_an_unstable_plan_is_a_failed_attempt_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = aloha_env_config()
    demo = AlohaDemonstrator(cfg, 1, 0)
    monkeypatch.setattr(demo._planner, "run", _failing_once(demo._planner.run))
    with AlohaInsertionEnv(cfg, 1, 0) as env:
        ts = env.reset()
        demo.reset(np.ones(1, bool))
        for _ in range(80):
            ts = env.step(demo.act(ts)["action"])
            if ts.success[0]:
                break
    assert demo.counters() == {"planning_failures": 1} and demo._plans[0].retries >= 1
    assert ts.success[0]  # it planned again from what it saw and inserted the peg


def test_an_unstable_chunk_is_refused_and_the_episode_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    with AlohaInsertionEnv(aloha_env_config(), 2, 0) as env:
        first = env.reset()
        physics = env.physics(0)
        monkeypatch.setattr(physics, "step", _failing_once(physics.step, after=30))
        actions = np.tile(np.linspace(-0.3, 0.3, 70, dtype=np.float32), (2, 1))
        refused = env.step(actions)
        assert env.rejected_chunks == 1
        np.testing.assert_allclose(refused.observation[JOINTS][0], first.observation[JOINTS][0], atol=1e-6)
        assert not np.allclose(refused.observation[JOINTS][1], first.observation[JOINTS][1], atol=1e-3)
        moved = env.step(actions)  # the next chunk runs as usual
    assert env.counters() == {"rejected_chunks": 1}
    np.testing.assert_allclose(moved.observation[JOINTS][0], refused.observation[JOINTS][1], atol=1e-5)
