"""The scripted demonstrator: end-effector waypoints through the mocap scene, replayed as joints.

As ACT's scripted policies do, each arm follows piecewise-linear gripper waypoints in the
end-effector (mocap) variant of the scene, and the joint positions that simulation passes
through become joint targets at 10 Hz, replayed in the joint-controlled environment. Unlike a
single open-loop script, the plan is made in phases from what the demonstrator observes (the
privileged peg and socket poses and the arms' joints): both arms grasp and lift their object;
once both hold one, the peg is aligned with the socket as it sits in the hand and pushed in.
An arm whose object is not lifted re-grasps it where it lies, a failed insertion is retried,
and after `demo_max_retries` failures the demonstrator gives up: it holds still and `gave_up`
lets the rollout end the episode, a failure the dataset drops (the paper keeps only successful
rollouts).

Noise makes it imperfect: each grasp point is offset by `demo_grasp_noise` metres per axis
(some grasps miss or hold the object askew), and every joint target by `demo_joint_noise`.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np
from dm_control.rl.control import PhysicsError

from efm.config import EnvConfig
from efm.envs.aloha import scene
from efm.envs.aloha.env import JOINTS, PEG_POSE, SOCKET_POSE
from efm.envs.base import Array, TimeStep

# Waypoint timing, in 50 Hz control steps (multiples of scene.INTERPOLATION).
GRASP_TIMES = (0, 100, 150, 200, 260)  # start, above the object, down, closed, lifted to the meet point
ALIGN_TIMES = (0, 30, 40)  # start, peg beside the socket's mouth, settled
PUSH_TIMES = (0, 50, 90)  # start, pushed in, held
ALIGN_TOLERANCE = 0.003  # m: the peg's centre this close to the socket's axis, then push
MAX_ALIGN_ITERS = 3
MEET = np.array([0.0, 0.5, 0.15])  # where the hands bring peg and socket together
MEET_GAP = (0.1, 0.05)  # x distance from MEET: each grasp point after lifting; the socket's centre
# Peg centre ahead of the socket centre (x): before insertion, and pushed in. The pin spans the
# socket centre +-0.04 and the peg is 0.12 long, so at 0.10 the peg's end touches the pin.
PEG_PRE_X, PEG_IN_X = 0.18, 0.095
ABOVE = 0.08  # m above the object before descending
GRASP_DZ = {"peg": 0.01, "socket": -0.002}  # grasp point height relative to the object's centre
PICK_TILT_DEG = (60.0, -60.0)  # gripper pitch about y while picking (left, right), as ACT
LIFTED_Z = 0.06  # an object above this is held
LEFT, RIGHT = 0, 1
WELD_SOLIMP = (0.95, 0.99, 0.001)  # arm index; left holds the socket, right the peg


# --- Quaternions (w, x, y, z), pure -----------------------------------------------------------


def quat_mul(a: Array, b: Array) -> Array:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def quat_conj(q: Array) -> Array:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def quat_rotate(q: Array, v: Array) -> Array:
    return quat_mul(quat_mul(q, np.array([0.0, *v])), quat_conj(q))[1:]


def quat_about_y(degrees: float) -> Array:
    h = np.deg2rad(degrees) / 2
    return np.array([np.cos(h), 0.0, np.sin(h), 0.0])


def mocap_from_gripper(pos: Array, quat: Array, rel_pos: Array, rel_quat: Array) -> tuple[Array, Array]:
    """The mocap pose that the weld (gripper = mocap * relpose) holds the gripper at `pos, quat`."""
    mq = quat_mul(quat, quat_conj(rel_quat))
    return pos - quat_rotate(mq, rel_pos), mq


@dataclass(frozen=True)
class Waypoint:
    t: int  # 50 Hz control step
    pos: Array  # mocap (grasp point) position
    quat: Array
    gripper: float  # normalised: 0 closed, 1 open


def interpolate(waypoints: list[Waypoint], t: int) -> tuple[Array, Array, float]:
    """Linear between the surrounding waypoints; the last one holds after it."""
    for a, b in itertools.pairwise(waypoints):
        if a.t <= t <= b.t:
            f = (t - a.t) / max(b.t - a.t, 1)
            q = a.quat + f * (b.quat - a.quat)
            return a.pos + f * (b.pos - a.pos), q / np.linalg.norm(q), a.gripper + f * (b.gripper - a.gripper)
    w = waypoints[-1]
    return w.pos, w.quat, w.gripper


# --- Planning in the mocap scene ------------------------------------------------------------


class MocapPlanner:
    """Runs waypoints in the end-effector scene from an observed state; returns 10 Hz joint targets."""

    def __init__(self) -> None:
        self.physics = scene.load_physics(mocap=True)
        # The shipped weld is soft (impedance 0.25): against the arms' joint friction the grippers
        # trail their mocap targets by centimetres. The planner only needs the joint path that
        # reaches the waypoints, so its welds are stiff.
        self.physics.model.eq_solimp[:, :3] = WELD_SOLIMP
        eq = np.asarray(self.physics.model.eq_data)
        self._rel = [(eq[k, 3:6].copy(), eq[k, 6:10].copy()) for k in (LEFT, RIGHT)]

    def reset_to(self, joints: Array, peg: Array, socket: Array) -> list[tuple[Array, Array]]:
        """Copies the observed state in; the current mocap (grasp point) pose of each arm."""
        p = self.physics
        scene.set_state(p, joints, peg, socket)
        poses = []
        for k, arm in enumerate(scene.ARMS):
            pos, quat = mocap_from_gripper(np.array(p.named.data.xpos[f"{arm}/gripper_link"]),
                                           np.array(p.named.data.xquat[f"{arm}/gripper_link"]), *self._rel[k])
            p.data.mocap_pos[k], p.data.mocap_quat[k] = pos, quat
            poses.append((pos, quat))
        p.data.ctrl[:] = scene.joints_to_qpos(joints)[[6, 7, 14, 15]]
        return poses

    def run(self, left: list[Waypoint], right: list[Waypoint]) -> Array:
        """[K, 14] raw joint targets at 10 Hz: the arm joints reached, the grippers commanded."""
        p, end = self.physics, max(left[-1].t, right[-1].t)
        targets = []
        for t in range(1, end + 1):
            grip = []
            for k, wps in ((LEFT, left), (RIGHT, right)):
                pos, quat, g = interpolate(wps, t)
                p.data.mocap_pos[k], p.data.mocap_quat[k] = pos, quat
                f = scene.unnormalize_finger(g)
                p.data.ctrl[2 * k: 2 * k + 2] = (f, -f)
                grip.append(g)
            for _ in range(scene.SUBSTEPS):
                p.step()
            if t % scene.INTERPOLATION == 0:
                j = scene.arm_joints(p)
                j[list(scene.GRIPPER_INDEX)] = grip
                targets.append(j)
        return np.array(targets)


def held(peg: Array, socket: Array) -> tuple[bool, bool]:
    """(socket lifted, peg lifted): the left hand's object, the right hand's."""
    return bool(socket[2] > LIFTED_Z), bool(peg[2] > LIFTED_Z)


class _Plan:
    """One env's demonstration state: queued 10 Hz targets, the phase they belong to, failures so
    far, and the learnt offset of the right hand (the joint replay sags a few millimetres)."""

    def __init__(self) -> None:
        self.queue: deque[Array] = deque()
        self.phase = "start"  # start, grasp, align, insert
        self.retries = 0
        self.align_iters = 0
        self.bias = np.zeros(3)
        self.last = scene.start_joints()


class AlohaDemonstrator:
    """Agent for the rollout loop: 14 * chunk joint targets per step; reads privileged state."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int):
        self.cfg = cfg.aloha
        if not self.cfg.state_observation:
            raise ValueError("the aloha demonstrator reads the peg and socket poses: set env.aloha.state_observation")
        self._rng = np.random.default_rng(seed)
        self._planner = MocapPlanner()
        self._plans = [_Plan() for _ in range(num_envs)]
        self.planning_failures = 0  # plans whose simulation went unstable (each a failed attempt)

    def reset(self, mask: Array) -> None:
        for i in np.flatnonzero(mask):
            self._plans[i] = _Plan()

    def counters(self) -> dict[str, int]:
        return {"planning_failures": self.planning_failures}

    def observe(self, ts: TimeStep) -> dict[str, Array]:
        return {}

    def gave_up(self) -> Array:
        """[N] bool: more than `demo_max_retries` failed attempts (efm.rollout.GivesUp)."""
        return np.array([p.retries > self.cfg.demo_max_retries for p in self._plans])

    def act(self, ts: TimeStep) -> dict[str, Array]:
        n, c = len(self._plans), self.cfg.chunk_length
        out = np.zeros((n, c, scene.NUM_JOINTS))
        for i, plan in enumerate(self._plans):
            if len(plan.queue) == 0:
                joints = scene.unnormalize_joints(np.asarray(ts.observation[JOINTS][i], np.float64))
                self._replan(plan, joints, np.asarray(ts.observation[PEG_POSE][i], np.float64),
                             np.asarray(ts.observation[SOCKET_POSE][i], np.float64))
            for k in range(c):
                if plan.queue:
                    plan.last = plan.queue.popleft()
                out[i, k] = plan.last
        actions = scene.normalize_joints(out) + self._rng.normal(0.0, self.cfg.demo_joint_noise, out.shape)
        return {"action": np.clip(actions, -1.0, 1.0).reshape(n, -1).astype(np.float32)}

    # -- Phases --

    def _replan(self, plan: _Plan, joints: Array, peg: Array, socket: Array) -> None:
        """The next phase from what is observed now (see the module docstring)."""
        has_socket, has_peg = held(peg, socket)
        both = has_socket and has_peg
        if (plan.phase == "grasp" and not both) or plan.phase == "insert" or (plan.phase == "align" and not both):
            plan.retries += 1  # a grasp that did not lift, an insertion that did not succeed, a drop
        if plan.retries > self.cfg.demo_max_retries:
            plan.queue.extend([plan.last] * scene.INTERPOLATION)  # give up: hold still
            return
        poses = self._planner.reset_to(joints, peg, socket)
        if not both:
            plan.phase = "grasp"
            left = self._grasp_waypoints(LEFT, poses[LEFT], joints[6], socket, "socket") if not has_socket else \
                self._hold(poses[LEFT], 0.0, GRASP_TIMES[-1])
            right = self._grasp_waypoints(RIGHT, poses[RIGHT], joints[13], peg, "peg") if not has_peg else \
                self._hold(poses[RIGHT], 0.0, GRASP_TIMES[-1])
        else:
            if plan.phase == "align":  # how far the peg ended from where it was sent
                error = socket[:3] + PEG_PRE_X * socket_axis(socket) - peg[:3]
                plan.bias += error
                plan.align_iters += 1
                done = np.linalg.norm(error) < ALIGN_TOLERANCE or plan.align_iters >= MAX_ALIGN_ITERS
            else:
                plan.align_iters, done = 0, False
            plan.phase = "insert" if done else "align"
            left, right = self._insert_waypoints(poses, peg, socket, plan.bias, push=done)
        try:
            plan.queue.extend(self._planner.run(left, right))
        except PhysicsError:
            # The stiff welds drove a gripper into something and the planning simulation blew
            # up (a noisy grasp point can lie inside the table): a failed attempt. Hold still
            # for one step, then plan afresh from what is observed.
            self.planning_failures += 1
            plan.retries += 1
            plan.phase = "start"
            plan.queue.extend([plan.last] * scene.INTERPOLATION)

    @staticmethod
    def _hold(pose: tuple[Array, Array], gripper: float, until: int) -> list[Waypoint]:
        return [Waypoint(0, pose[0], pose[1], gripper), Waypoint(until, pose[0], pose[1], gripper)]

    def _grasp_waypoints(self, arm: int, start: tuple[Array, Array], gripper: float, obj: Array, name: str
                         ) -> list[Waypoint]:
        q = quat_about_y(PICK_TILT_DEG[arm])
        point = obj[:3] + np.array([0.0, 0.0, GRASP_DZ[name]]) + self._rng.normal(0.0, self.cfg.demo_grasp_noise, 3)
        side = -1.0 if arm == LEFT else 1.0
        t = GRASP_TIMES
        return [Waypoint(t[0], start[0], start[1], gripper),
                Waypoint(t[1], point + np.array([0.0, 0.0, ABOVE]), q, 1.0),
                Waypoint(t[2], point, q, 1.0),
                Waypoint(t[3], point, q, 0.0),
                Waypoint(t[4], MEET + np.array([side * MEET_GAP[0], 0.0, 0.0]), q, 0.0)]

    @staticmethod
    def _insert_waypoints(poses: list[tuple[Array, Array]], peg: Array, socket: Array, bias: Array, push: bool
                          ) -> tuple[list[Waypoint], list[Waypoint]]:
        """Align: the socket to the meet point, the peg's centre on the socket's axis beside it (as
        each object sits in its hand, plus the right hand's learnt offset). Push: the peg along
        that axis until its end presses on the pin, then hold."""
        (lp, lq), (rp, rq) = poses
        axis, peg_off = socket_axis(socket), peg[:3] - rp
        if push:
            t = PUSH_TIMES
            right_in = socket[:3] + PEG_IN_X * axis - peg_off + bias
            return ([Waypoint(t[0], lp, lq, 0.0), Waypoint(t[-1], lp, lq, 0.0)],
                    [Waypoint(t[0], rp, rq, 0.0), Waypoint(t[1], right_in, rq, 0.0), Waypoint(t[2], right_in, rq, 0.0)])
        t = ALIGN_TIMES
        socket_at = MEET - np.array([MEET_GAP[1], 0.0, 0.0])
        left_at = socket_at - (socket[:3] - lp)
        right_pre = socket_at + PEG_PRE_X * axis - peg_off + bias
        return ([Waypoint(t[0], lp, lq, 0.0), Waypoint(t[1], left_at, lq, 0.0), Waypoint(t[2], left_at, lq, 0.0)],
                [Waypoint(t[0], rp, rq, 0.0), Waypoint(t[1], right_pre, rq, 0.0), Waypoint(t[2], right_pre, rq, 0.0)])


def socket_axis(socket: Array) -> Array:
    """The socket's long axis as it sits now, pointing towards the right hand."""
    axis = quat_rotate(socket[3:], np.array([1.0, 0.0, 0.0]))
    return axis if axis[0] > 0 else -axis
