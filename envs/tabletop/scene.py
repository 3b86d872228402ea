"""One PyBullet world per environment: the board, bodies, the effector and the camera.

Each scene owns one headless PyBullet client (DIRECT), so nothing is shared and a seed fixes
everything; images come from the CPU TinyRenderer. Bodies get large roll/pitch inertia (as
LanguageTable's block URDFs do): a stiff effector otherwise tips and drives small blocks into
the table; yaw inertia is the real one, so blocks and the banana still rotate when pushed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pybullet as pb

from efm.config import BananaTableConfig, TabletopConfig
from efm.envs.base import Array
from efm.envs.tabletop.geometry import (
    BOARD_CENTER,
    CONTROL_PERIOD,
    EFFECTOR_ERP,
    EFFECTOR_FRICTION,
    EFFECTOR_HALF_HEIGHT,
    EFFECTOR_MASS,
    EFFECTOR_MAX_FORCE,
    EFFECTOR_RADIUS,
    EFFECTOR_Z,
    SOLVER_ITERATIONS,
    TIP_INERTIA,
    WALL_MARGIN,
    WORKSPACE,
    ShapeSpec,
    extrude,
)

# --- One PyBullet world ----------------------------------------------------------------------


@dataclass(frozen=True)
class SceneParams:
    image_height: int
    image_width: int
    render_images: bool
    max_delta: float
    physics_substeps: int
    camera: str = "oblique"  # a key of CAMERAS


def scene_params(cfg: TabletopConfig | BananaTableConfig) -> SceneParams:
    return SceneParams(
        cfg.image_height, cfg.image_width, cfg.render_images, cfg.max_delta, cfg.physics_substeps, cfg.camera
    )


@dataclass(frozen=True)
class BodySpec:
    name: str
    shape: ShapeSpec
    rgba: tuple[float, float, float, float]
    mass: float
    friction: float


@dataclass(frozen=True)
class BodyMesh:
    """What building a body reads of its spec's geometry: computed once per spec, not per episode."""

    vertices: list[list[float]]  # the visual mesh
    indices: list[int]
    hull: list[list[float]]  # the convex collision mesh's points, for outlines without boxes
    yaw_inertia: float


def body_mesh(spec: BodySpec) -> BodyMesh:
    vertices, indices = extrude(spec.shape)
    hull = [v for v in vertices if abs(v[0]) + abs(v[1]) > 0]  # every vertex but a fan cap's centre
    return BodyMesh(vertices, indices, hull, spec.shape.yaw_inertia(spec.mass))


@dataclass(frozen=True)
class Camera:
    """A pinhole look-at camera, as PyBullet renders it: eye, target, up, vertical FOV (degrees)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fov: float


# The camera looks down at the board from beyond its bottom edge, as LanguageTable's does.
CAMERA_EYE = (0.92, 0.0, 0.62)
CAMERA_TARGET = (0.4, 0.0, 0.0)
CAMERA_UP = (-1.0, 0.0, 0.0)
CAMERA_FOV = 43.0  # vertical, degrees: the whole board and its walls
TOP_DOWN_HEIGHT = 1.0  # metres above the board
# Straight down on the board's centre, image rows along x (the robot's base at the top, as in
# the oblique view), framing the board inside its walls along x (so the image must be at least
# TOP_DOWN_MIN_ASPECT times as wide as high for its y extent): a block spans the same number of
# pixels everywhere (4.8 at 72x128 against 2.4 to 4.9 obliquely; table_camera_pixels.py).
CAMERAS = {
    "oblique": Camera(CAMERA_EYE, CAMERA_TARGET, CAMERA_UP, CAMERA_FOV),
    "top_down": Camera((float(BOARD_CENTER[0]), float(BOARD_CENTER[1]), TOP_DOWN_HEIGHT),
                       (float(BOARD_CENTER[0]), float(BOARD_CENTER[1]), 0.0), CAMERA_UP,
                       math.degrees(2 * math.atan((WORKSPACE[1, 0] - WORKSPACE[0, 0] + 2 * WALL_MARGIN)
                                                  / 2 / TOP_DOWN_HEIGHT))),
}
BOARD_RGBA = (0.82, 0.76, 0.62, 1.0)
TABLE_RGBA = (0.33, 0.33, 0.36, 1.0)
WALL_RGBA = (0.25, 0.22, 0.2, 1.0)
EFFECTOR_RGBA = (0.2, 0.2, 0.22, 1.0)


def _camera(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """A render camera: eye, unit forward, right and down vectors, tan(vertical FOV / 2)."""
    cam = CAMERAS[name]
    eye, target, up = (np.asarray(v, np.float64) for v in (cam.eye, cam.target, cam.up))
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = -np.cross(right, forward)
    return eye, forward, right, down, math.tan(math.radians(cam.fov) / 2)


def image_position(points: np.ndarray, aspect: float, camera: str = "oblique") -> np.ndarray:
    """Where world points [..., 3] appear in the camera's image (width / height = `aspect`):
    (row, column) [..., 2], the image spanning [-1, 1] top to bottom and left to right (pixel
    centres at +-(1 - 1/n)). The pinhole camera PyBullet renders with (look-at and vertical
    field of view), so a model's image positions can be supervised with the objects' poses."""
    eye, forward, right, down, half = _camera(camera)
    d = np.asarray(points, np.float64) - eye
    depth = d @ forward
    return np.stack([(d @ down) / (depth * half), (d @ right) / (depth * half * aspect)], axis=-1).astype(np.float32)


def table_position(rc: np.ndarray, z: float, aspect: float, camera: str = "oblique") -> np.ndarray:
    """`image_position` inverted on the horizontal plane at height z: the (x, y) [..., 2] that
    an image position (row, column) [..., 2] sees there, to read a model's image positions in
    board centimetres."""
    eye, forward, right, down, half = _camera(camera)
    rc = np.asarray(rc, np.float64)
    ray = forward + rc[..., :1] * half * down + rc[..., 1:] * half * aspect * right  # [..., 3]
    s = (z - eye[2]) / ray[..., 2:]
    return (eye[:2] + s * ray[..., :2]).astype(np.float32)


def planar_pose(position: Sequence[float], quaternion: Sequence[float]) -> tuple[Array, float]:
    """(x, y) and yaw of a body's pose."""
    x, y, z, w = quaternion
    return np.array(position[:2], float), math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class TableScene:
    """One PyBullet client: table, board walls, the effector and the given movable bodies.

    Every episode starts in a fresh world (`start`) holding only that episode's bodies (idle ones
    would cost physics). Reusing the world carried the last episode into the next: Bullet keeps
    state across a teleport that `restoreState` does not clear (likely its contact manifolds and
    warm starts), so an extra step before a reset changed the next episode's pushes. With a fresh
    world, an episode is a function of its start and its actions only.
    """

    def __init__(self, params: SceneParams, bodies: Sequence[BodySpec]):
        self.params = params
        self.client = pb.connect(pb.DIRECT)
        self._specs = {spec.name: spec for spec in bodies}
        self._meshes = {spec.name: body_mesh(spec) for spec in bodies}
        self._ids: dict[str, int] = {}  # bodies in the world
        cam = CAMERAS[params.camera]
        self._view = pb.computeViewMatrix(cam.eye, cam.target, cam.up, physicsClientId=self.client)
        self._projection = pb.computeProjectionMatrixFOV(
            cam.fov, params.image_width / params.image_height, 0.05, 5.0, physicsClientId=self.client
        )
        self.start({}, BOARD_CENTER)

    def start(self, bodies: Mapping[str, tuple[Sequence[float], float]], effector_xy: Sequence[float]) -> None:
        """A new episode in a fresh world: `bodies` (name -> (x, y), yaw) at rest on the table and
        the effector at `effector_xy`."""
        c = self.client
        pb.resetSimulation(physicsClientId=c)
        pb.setGravity(0, 0, -9.81, physicsClientId=c)
        pb.setPhysicsEngineParameter(
            fixedTimeStep=CONTROL_PERIOD / self.params.physics_substeps,
            numSolverIterations=SOLVER_ITERATIONS,
            erp=EFFECTOR_ERP,
            deterministicOverlappingPairs=1,
            physicsClientId=c,
        )
        table = self._build_table()
        self._effector = self._build_effector()
        # The effector hovers over the table: skip that (never touching) pair in the physics.
        pb.setCollisionFilterPair(self._effector, table, -1, -1, 0, physicsClientId=c)
        self._command = np.array(effector_xy, float)
        self._constraint = pb.createConstraint(
            self._effector,
            -1,
            -1,
            -1,
            pb.JOINT_FIXED,
            [0, 0, 0],
            [0, 0, 0],
            [*self._command, EFFECTOR_Z],
            physicsClientId=c,
        )
        self.reset_effector(self._command)
        self._ids = {name: self._build_body(self._specs[name], self._meshes[name]) for name in bodies}
        for name, (xy, yaw) in bodies.items():
            self.place(name, xy, yaw)

    def _build_table(self) -> int:
        """The table top, the board and its walls; returns the table's body id."""
        c = self.client
        # An infinite collision plane, drawn as a table top.
        plane = pb.createCollisionShape(pb.GEOM_PLANE, physicsClientId=c)
        table = pb.createVisualShape(
            pb.GEOM_BOX,
            halfExtents=[1.0, 1.0, 0.02],
            rgbaColor=TABLE_RGBA,
            visualFramePosition=[*BOARD_CENTER, -0.022],
            physicsClientId=c,
        )
        table_id = pb.createMultiBody(0, plane, table, physicsClientId=c)
        lo, hi = WORKSPACE[0] - WALL_MARGIN, WORKSPACE[1] + WALL_MARGIN
        half = (hi - lo) / 2
        board = pb.createVisualShape(
            pb.GEOM_BOX, halfExtents=[*half, 0.001], rgbaColor=BOARD_RGBA, physicsClientId=c
        )
        pb.createMultiBody(0, -1, board, basePosition=[*BOARD_CENTER, -0.001], physicsClientId=c)
        t, h = 0.01, 0.02  # wall half thickness, half height
        cx, cy = BOARD_CENTER
        frames = [[lo[0] - t, cy, h], [hi[0] + t, cy, h], [cx, lo[1] - t, h], [cx, hi[1] + t, h]]
        extents = [[t, half[1] + 2 * t, h]] * 2 + [[half[0] + 2 * t, t, h]] * 2
        col = pb.createCollisionShapeArray(
            [pb.GEOM_BOX] * 4,
            halfExtents=extents,
            collisionFramePositions=frames,
            physicsClientId=c,
        )
        vis = pb.createVisualShapeArray(
            [pb.GEOM_BOX] * 4, halfExtents=extents, visualFramePositions=frames, physicsClientId=c
        )
        walls = pb.createMultiBody(0, col, vis, physicsClientId=c)
        pb.changeVisualShape(walls, -1, rgbaColor=WALL_RGBA, physicsClientId=c)
        return table_id

    def _build_effector(self) -> int:
        c = self.client
        col = pb.createCollisionShape(
            pb.GEOM_CYLINDER,
            radius=EFFECTOR_RADIUS,
            height=2 * EFFECTOR_HALF_HEIGHT,
            physicsClientId=c,
        )
        vis = pb.createVisualShape(
            pb.GEOM_CYLINDER,
            radius=EFFECTOR_RADIUS,
            length=2 * EFFECTOR_HALF_HEIGHT,
            rgbaColor=EFFECTOR_RGBA,
            physicsClientId=c,
        )
        body = pb.createMultiBody(
            EFFECTOR_MASS, col, vis, basePosition=[*BOARD_CENTER, EFFECTOR_Z], physicsClientId=c
        )
        pb.changeDynamics(body, -1, lateralFriction=EFFECTOR_FRICTION, physicsClientId=c)
        return body

    def _build_shapes(self, spec: BodySpec, mesh: BodyMesh) -> tuple[int, int]:
        c, shape = self.client, spec.shape
        if len(shape.boxes) == 1 and shape.boxes[0][:3] == (0.0, 0.0, 0.0):
            _, _, _, hl, hw = shape.boxes[0]
            col = pb.createCollisionShape(
                pb.GEOM_BOX, halfExtents=[hl, hw, shape.half_height], physicsClientId=c
            )
        elif shape.boxes:
            col = pb.createCollisionShapeArray(
                [pb.GEOM_BOX] * len(shape.boxes),
                halfExtents=[[hl, hw, shape.half_height] for _, _, _, hl, hw in shape.boxes],
                collisionFramePositions=[[x, y, 0.0] for x, y, _, _, _ in shape.boxes],
                collisionFrameOrientations=[
                    pb.getQuaternionFromEuler([0, 0, yaw]) for _, _, yaw, _, _ in shape.boxes
                ],
                physicsClientId=c,
            )
        else:  # the convex hull of the outline's prism
            col = pb.createCollisionShape(pb.GEOM_MESH, vertices=mesh.hull, physicsClientId=c)
        vis = pb.createVisualShape(
            pb.GEOM_MESH, vertices=mesh.vertices, indices=mesh.indices, rgbaColor=spec.rgba, physicsClientId=c
        )
        return col, vis

    def _build_body(self, spec: BodySpec, mesh: BodyMesh) -> int:
        col, vis = self._build_shapes(spec, mesh)
        body = pb.createMultiBody(spec.mass, col, vis, physicsClientId=self.client)
        pb.changeDynamics(
            body,
            -1,
            lateralFriction=spec.friction,
            restitution=0.0,
            localInertiaDiagonal=[TIP_INERTIA, TIP_INERTIA, mesh.yaw_inertia],
            physicsClientId=self.client,
        )
        return body

    def place(self, name: str, xy: Sequence[float], yaw: float) -> None:
        """Teleport a body in the world to rest on the table at (x, y) with the given yaw."""
        body = self._ids[name]
        z = self._specs[name].shape.half_height
        pb.resetBasePositionAndOrientation(
            body,
            [float(xy[0]), float(xy[1]), z],
            pb.getQuaternionFromEuler([0, 0, float(yaw)]),
            physicsClientId=self.client,
        )
        pb.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def reset_effector(self, xy: Sequence[float]) -> None:
        self._command = np.array(xy, float)
        pos = [*self._command, EFFECTOR_Z]
        pb.resetBasePositionAndOrientation(
            self._effector, pos, [0, 0, 0, 1], physicsClientId=self.client
        )
        pb.resetBaseVelocity(self._effector, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)
        pb.changeConstraint(
            self._constraint, pos, maxForce=EFFECTOR_MAX_FORCE, physicsClientId=self.client
        )

    def move_effector(self, target_xy: Array) -> None:
        """One control step: the effector's command moves linearly to `target_xy` while the
        physics runs, so the effector pushes whatever is in the way."""
        start, n = self._command, self.params.physics_substeps
        for s in range(1, n + 1):
            q = start + (target_xy - start) * (s / n)
            pb.changeConstraint(
                self._constraint,
                [float(q[0]), float(q[1]), EFFECTOR_Z],
                maxForce=EFFECTOR_MAX_FORCE,
                physicsClientId=self.client,
            )
            pb.stepSimulation(physicsClientId=self.client)
        self._command = np.array(target_xy, float)

    @property
    def command(self) -> Array:
        return self._command.copy()

    def effector_xy(self) -> Array:
        return np.array(
            pb.getBasePositionAndOrientation(self._effector, physicsClientId=self.client)[0][:2]
        )

    def pose(self, name: str) -> tuple[Array, float]:
        return planar_pose(
            *pb.getBasePositionAndOrientation(self._ids[name], physicsClientId=self.client)
        )

    def speed(self, name: str) -> float:
        """Planar speed (m/s)."""
        v = pb.getBaseVelocity(self._ids[name], physicsClientId=self.client)[0]
        return math.hypot(v[0], v[1])

    def render(self) -> Array:
        h, w = self.params.image_height, self.params.image_width
        _, _, rgba, _, _ = pb.getCameraImage(
            w,
            h,
            self._view,
            self._projection,
            renderer=pb.ER_TINY_RENDERER,
            flags=pb.ER_NO_SEGMENTATION_MASK,
            physicsClientId=self.client,
        )
        return np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3]

    def close(self) -> None:
        if self.client >= 0:
            try:
                pb.disconnect(physicsClientId=self.client)
            finally:
                self.client = -1
