"""The ALOHA ViperX bimanual insertion scene (gym-aloha's assets) in MuJoCo through dm-control.

Only the MJCF files and meshes come from gym-aloha; the physics wrapper, joint conventions and
cameras are ours. Two variants of one scene: joint-position control (the environment: 14
position actuators, each arm's 6 joints and one gripper command driving both fingers) and
end-effector control (the demonstrator's planner: each gripper welded to a mocap body).

Joints and joint targets reach the policy normalised to [-1, 1] by per-joint bounds
(`JOINT_LOW`, `JOINT_HIGH`): Appendix E.2 bins both into 256 bins over [-1, 1]. The bounds
cover what the insertion task uses with a margin, tighter than the hardware's limits, so one bin
is a few millimetres at the gripper. Grippers are normalised positions (0 closed, 1 open, as
ACT and gym-aloha) mapped linearly to [-1, 1].

Rendering goes through MuJoCo's OpenGL backends: `MUJOCO_GL=egl` (a GPU, or Mesa's software
EGL on a CPU machine, the default set here), or `osmesa`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # before dm_control picks a GL backend

from dm_control import mujoco

Array = np.ndarray

CONTROL_HZ = 10  # the policy's joint targets (Appendix D.3: 10 Hz instead of ALOHA's 50 Hz)
LOW_LEVEL_HZ = 50  # the interpolated targets the position actuators receive (ALOHA's rate)
PHYSICS_TIMESTEP = 0.002  # the MJCF's default
SUBSTEPS = round(1.0 / (LOW_LEVEL_HZ * PHYSICS_TIMESTEP))  # physics steps per 50 Hz target
INTERPOLATION = LOW_LEVEL_HZ // CONTROL_HZ  # 50 Hz targets per 10 Hz target
NUM_JOINTS = 14  # per arm: waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate, gripper

CAMERAS = ("top", "angle", "left_wrist", "right_wrist")
ARMS = ("vx300s_left", "vx300s_right")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
GRIPPER_INDEX = (6, 13)  # of the 14 joints

# Puppet finger positions (metres; the left finger, the right one mirrors it), from ALOHA.
FINGER_OPEN = 0.05800
FINGER_CLOSED = 0.01844
# The arms' rest pose (ALOHA's START_ARM_POSE): raw qpos of one arm's 6 joints and 2 fingers.
START_ARM_QPOS = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.02239, -0.02239)

# Normalisation bounds of the 14 joints (radians; grippers in normalised position).
JOINT_LOW = np.array([-0.8, -1.85, -0.2, -np.pi, -1.0, -np.pi, 0.0] * 2)
JOINT_HIGH = np.array([0.8, 0.6, 1.6, np.pi, 1.6, np.pi, 1.0] * 2)

JOINT_XML = "bimanual_viperx_insertion.xml"
MOCAP_XML = "bimanual_viperx_end_effector_insertion.xml"
PEG_JOINT = "red_peg_joint"
SOCKET_JOINT = "blue_socket_joint"
PEG_GEOM = "red_peg"
PIN_GEOM = "pin"  # inside the socket: the peg touching it is the insertion (ALOHA's success)


def assets_dir() -> Path:
    """gym-aloha's asset folder (MJCF + meshes), found without importing gym-aloha's envs."""
    import importlib.util

    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or spec.origin is None:
        raise ImportError("the aloha-insertion domain needs gym-aloha's assets: pip install 'gym-aloha>=0.1,<0.2'")
    return Path(spec.origin).parent / "assets"


def load_physics(mocap: bool = False) -> mujoco.Physics:
    """The joint-controlled scene, or the mocap (end-effector) variant."""
    return mujoco.Physics.from_xml_path(str(assets_dir() / (MOCAP_XML if mocap else JOINT_XML)))


# --- Joint conventions (pure) ---------------------------------------------------------------


def normalize_finger(finger: Array) -> Array:
    """Left-finger position (m) -> normalised gripper position (0 closed, 1 open)."""
    return (finger - FINGER_CLOSED) / (FINGER_OPEN - FINGER_CLOSED)


def unnormalize_finger(gripper: Array) -> Array:
    return FINGER_CLOSED + gripper * (FINGER_OPEN - FINGER_CLOSED)


def qpos_to_joints(arm_qpos: Array) -> Array:
    """Raw qpos of both arms [..., 16] (6 joints + 2 fingers each) -> the 14 joints."""
    left, right = arm_qpos[..., :8], arm_qpos[..., 8:16]
    return np.concatenate([left[..., :6], normalize_finger(left[..., 6:7]),
                           right[..., :6], normalize_finger(right[..., 6:7])], axis=-1)


def joints_to_qpos(joints: Array) -> Array:
    """The 14 joints -> raw qpos of both arms [..., 16] (fingers mirrored)."""
    out = []
    for arm in (joints[..., :7], joints[..., 7:]):
        f = unnormalize_finger(arm[..., 6:7])
        out += [arm[..., :6], f, -f]
    return np.concatenate(out, axis=-1)


def normalize_joints(joints: Array) -> Array:
    """[..., 14] joints -> [-1, 1] by the task's bounds (not clipped: observations may leave them)."""
    return 2.0 * (joints - JOINT_LOW) / (JOINT_HIGH - JOINT_LOW) - 1.0


def unnormalize_joints(normalized: Array) -> Array:
    return JOINT_LOW + (np.asarray(normalized) + 1.0) * 0.5 * (JOINT_HIGH - JOINT_LOW)


def joints_to_ctrl(joints: Array) -> Array:
    """14 joint targets -> the 16 position actuators' controls (each gripper drives 2 fingers)."""
    return joints_to_qpos(joints)


def interpolate_targets(previous: Array, targets: Array, steps: int = INTERPOLATION) -> Array:
    """10 Hz joint targets [K, 14] -> 50 Hz targets [K * steps, 14], linear from `previous` [14].

    The low-level controller interpolates between consecutive 10 Hz commands, as a 50 Hz robot
    driver would, so a chunk replays a smooth trajectory instead of five jumps.
    """
    starts = np.concatenate([previous[None], targets[:-1]])
    frac = (np.arange(1, steps + 1) / steps)[None, :, None]  # [1, steps, 1]
    return (starts[:, None] + frac * (targets - starts)[:, None]).reshape(-1, targets.shape[-1])


# --- Cameras (pure layout) ------------------------------------------------------------------


def stack_views(upper: Array, lower: Array, band: int) -> Array:
    """Two [H, W, 3] views -> one [2H + band, W, 3] image, upper over lower, a black band between
    (Appendix D.3: top over angle, left wrist over right wrist)."""
    if upper.shape != lower.shape:
        raise ValueError(f"views must have one shape, got {upper.shape} and {lower.shape}")
    gap = np.zeros((band, *upper.shape[1:]), upper.dtype)
    return np.concatenate([upper, gap, lower], axis=0)


def render_views(physics: mujoco.Physics, height: int, width: int) -> dict[str, Array]:
    """The four cameras, uint8 [H, W, 3] each."""
    return {c: physics.render(height=height, width=width, camera_id=c) for c in CAMERAS}


def stacked_images(views: dict[str, Array], band: int) -> tuple[Array, Array]:
    """The paper's two images: (top over angle, left wrist over right wrist)."""
    return (stack_views(views["top"], views["angle"], band),
            stack_views(views["left_wrist"], views["right_wrist"], band))


# --- State of one scene ---------------------------------------------------------------------


def contact_pairs(physics: mujoco.Physics) -> set[frozenset[str]]:
    """Names of the geom pairs in contact now."""
    name = physics.model.id2name
    return {frozenset((name(c.geom1, "geom"), name(c.geom2, "geom"))) for c in physics.data.contact[: physics.data.ncon]}


def object_pose(physics: mujoco.Physics, joint: str) -> Array:
    """[7] position and quaternion (w, x, y, z) of a free body."""
    return np.array(physics.named.data.qpos[joint], np.float64)


def arm_joints(physics: mujoco.Physics) -> Array:
    """The 14 joints now."""
    return qpos_to_joints(np.asarray(physics.data.qpos[:16]))


def set_state(physics: mujoco.Physics, joints: Array, peg: Array, socket: Array) -> None:
    """Arms at `joints` (14), objects at their [7] poses, at rest, controls holding the arms."""
    with physics.reset_context():
        physics.data.qpos[:16] = joints_to_qpos(joints)
        physics.data.qvel[:] = 0.0
        physics.named.data.qpos[PEG_JOINT] = peg
        physics.named.data.qpos[SOCKET_JOINT] = socket
        if physics.model.nu == 16:
            physics.data.ctrl[:] = joints_to_ctrl(joints)


def start_joints() -> Array:
    """The rest pose as 14 joints."""
    return qpos_to_joints(np.array(START_ARM_QPOS * 2))
