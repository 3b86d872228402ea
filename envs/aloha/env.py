"""N ALOHA insertion scenes stepped together, behind the project's VectorEnv interface.

One step is one action chunk (Appendix D.3): `chunk_length` joint targets at 10 Hz, flattened
to [N, 14 * chunk_length] in [-1, 1], executed whole; between consecutive targets the low-level
controller interpolates at 50 Hz. Observations: JOINTS (the 14 current joints, normalised as
the actions), with `render_images` the four cameras stacked into RGB (top over angle) and
RGB_WRIST (left wrist over right wrist), with `state_observation` the privileged PEG_POSE and
SOCKET_POSE (state-based runs, and the scripted demonstrator). The goal is the instruction.

Each env owns its dm-control Physics and its random stream (seed, env index), so a seed fixes
every episode whatever the number of worker processes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import numpy as np
from dm_control.rl.control import PhysicsError

from efm.config import AlohaConfig, EnvConfig
from efm.envs.aloha import scene
from efm.envs.aloha.tasks import INSTRUCTION, LIFT_BANDS, held_up, inserted, sample_poses
from efm.envs.base import Array, ObservedEnv, TimeStep, step_rows

JOINTS = "joints"
PEG_POSE = "peg_pose"
SOCKET_POSE = "socket_pose"
RGB = "rgb"  # top over angle (the key the camera domains' previews and models read)
RGB_WRIST = "rgb_wrist"  # left wrist over right wrist
NOMINAL_LENGTH = 17  # chunks the noise-free scripted demonstration takes (8.5 s): optimal_length


def figure_frames(cfg: AlohaConfig, observations: dict[str, Array], steps: Array) -> Array | None:
    """Frames of recorded observations `steps` for figures (Figures 2-3, 7): the two stacked
    images side by side, [len(steps), 2 * view_height + band, 2 * view_width + band, 3]. Recorded
    images where the episode has them; else the scene rendered from the recorded state (joints,
    peg and socket poses: a kinematic render, objects and arms where they were, at rest); None
    when the episode has neither (no state observation, no images)."""
    steps = np.asarray(steps, int)
    if RGB in observations and RGB_WRIST in observations:
        pairs = [(observations[RGB][t], observations[RGB_WRIST][t]) for t in steps]
    elif all(k in observations for k in (JOINTS, PEG_POSE, SOCKET_POSE)):
        physics = scene.load_physics()
        try:
            pairs = []
            for t in steps:
                scene.set_state(physics, scene.unnormalize_joints(observations[JOINTS][t]),
                                observations[PEG_POSE][t], observations[SOCKET_POSE][t])
                pairs.append(scene.stacked_images(scene.render_views(physics, cfg.view_height, cfg.view_width),
                                                  cfg.band_height))
        finally:
            physics.free()
    else:
        return None
    gap = cfg.band_height
    return np.stack([np.concatenate([a, np.zeros((a.shape[0], gap, 3), a.dtype), b], axis=1) for a, b in pairs])


def lift_progress(observations: dict[str, Array]) -> dict[str, bool]:
    """How far an episode got towards the insertion, from its recorded object poses:
    {"peg_lifted", "socket_lifted"}, each held up (`held_up`); {} without the poses (camera
    runs without the state). Ground truth, for reporting only: no policy or reward reads it."""
    poses = {"peg": PEG_POSE, "socket": SOCKET_POSE}
    if not all(k in observations for k in poses.values()):
        return {}
    return {f"{name}_lifted": held_up(np.asarray(observations[key])[:, 2], LIFT_BANDS[name])
            for name, key in poses.items()}


def validated_chunks(actions: Array, num_envs: int, chunk_length: int) -> Array:
    """[N, 14 * chunk] actions -> [N, chunk, 14] joint targets, clipped to [-1, 1]."""
    a = np.asarray(actions, np.float64)
    if a.shape != (num_envs, scene.NUM_JOINTS * chunk_length):
        raise ValueError(f"actions must have shape {(num_envs, scene.NUM_JOINTS * chunk_length)}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("actions must be finite")
    return np.clip(a, -1.0, 1.0).reshape(num_envs, chunk_length, scene.NUM_JOINTS)


class AlohaInsertionEnv(ObservedEnv):
    """The bimanual peg-in-socket task; see the module docstring."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int, first_env: int = 0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.cfg: AlohaConfig = cfg.aloha
        self.num_envs = num_envs
        self.action_dim = self.cfg.action_dim
        self._seed_envs(seed, first_env)
        self._physics = [scene.load_physics() for _ in range(num_envs)]
        self._command = np.tile(scene.start_joints(), (num_envs, 1))  # last 10 Hz target, raw joints
        self.rejected_chunks = 0  # chunks refused because the simulation went unstable (see step)
        self._closed = False

    # -- VectorEnv --

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        chunks = validated_chunks(actions, self.num_envs, self.cfg.chunk_length)
        rows = step_rows(mask, self.num_envs)
        for i in range(self.num_envs) if rows is None else rows:
            physics = self._physics[i]
            targets = scene.unnormalize_joints(chunks[i])  # [chunk, 14]
            state, ctrl = physics.get_state(), physics.data.ctrl.copy()
            try:
                for target in scene.interpolate_targets(self._command[i], targets):
                    physics.data.ctrl[:] = scene.joints_to_ctrl(target)
                    for _ in range(scene.SUBSTEPS):
                        physics.step()
            except PhysicsError as e:
                # The simulation went unstable (MuJoCo has reset its data): refuse the chunk, as
                # a robot's safety controller would, so hours of practice do not end on one bad
                # contact. The episode goes on from where it was.
                self.rejected_chunks += 1
                logging.warning("aloha env %d: action chunk rejected, %s", i, e)
                with physics.reset_context():
                    physics.set_state(state)
                    physics.data.ctrl[:] = ctrl
                continue
            self._command[i] = targets[-1]
        return self._timestep(rows)

    def counters(self) -> dict[str, int]:
        return {"rejected_chunks": self.rejected_chunks}

    def optimal_length(self) -> Array:
        """The noise-free scripted demonstration's length: a reference, not a proven optimum."""
        return np.full(self.num_envs, float(NOMINAL_LENGTH))

    def close(self) -> None:
        if not self._closed:
            for p in self._physics:
                with contextlib.suppress(Exception):
                    p.free()
            self._closed = True

    # -- Inspection (demonstrator, tests, rendering) --

    def physics(self, i: int):
        return self._physics[i]

    def render(self, rows: Sequence[int] | None = None) -> tuple[Array, Array]:
        """([N, H, W, 3], [N, H, W, 3]) the two stacked images now (of envs `rows` only, if
        given), whatever `render_images`."""
        physics = self._physics if rows is None else [self._physics[i] for i in rows]
        pairs = [scene.stacked_images(scene.render_views(p, self.cfg.view_height, self.cfg.view_width),
                                      self.cfg.band_height) for p in physics]
        return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])

    def __enter__(self) -> AlohaInsertionEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Internals --

    def _reset_one(self, i: int, rng: np.random.Generator) -> None:
        peg, socket = sample_poses(rng, self.cfg)
        physics, joints = self._physics[i], scene.start_joints()
        scene.set_state(physics, joints, peg, socket)
        for _ in range(round(self.cfg.settle_seconds / scene.PHYSICS_TIMESTEP)):
            physics.step()
        self._command[i] = joints

    def _observe(self, rows: Sequence[int]) -> TimeStep:
        physics = [self._physics[i] for i in rows]
        joints = np.stack([scene.arm_joints(p) for p in physics])
        obs = {JOINTS: scene.normalize_joints(joints).astype(np.float32)}
        if self.cfg.state_observation:
            obs[PEG_POSE] = np.stack([scene.object_pose(p, scene.PEG_JOINT) for p in physics]).astype(np.float32)
            obs[SOCKET_POSE] = np.stack([scene.object_pose(p, scene.SOCKET_JOINT) for p in physics]).astype(np.float32)
        if self.cfg.render_images:
            obs[RGB], obs[RGB_WRIST] = self.render(rows)
        success = np.array([inserted(scene.contact_pairs(p)) for p in physics], bool)
        return TimeStep(observation=obs, goal={}, instruction=(INSTRUCTION,) * len(physics), success=success)
