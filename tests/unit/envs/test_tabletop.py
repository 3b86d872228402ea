"""The tabletop domain: geometry, instructions, success, dynamics, determinism, demonstrator."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pybullet as pb
import pytest

from efm.config import EnvConfig, RunConfig, TabletopConfig, default_config
from efm.domains import make_demonstrator, make_env
from efm.envs.tabletop import (
    BLOCK2BLOCK,
    BLOCK2LOCATION,
    BLOCK2RELATIVE,
    BLOCK_HALF_HEIGHT,
    BLOCK_TRANSLATION,
    BLOCKS,
    BOARD_CENTER,
    BOARD_RGBA,
    COLOR_RGBA,
    DIRECTIONS,
    EFFECTOR_TRANSLATION,
    EFFECTOR_Z,
    LOCATIONS,
    RELATIVE_DISTANCES,
    RGB,
    WALL_MARGIN,
    WORKSPACE,
    X_MAX,
    X_MIN,
    Y_MAX,
    Y_MIN,
    TabletopDemonstrator,
    TabletopEnv,
    Task,
    all_instructions,
    arc_shape,
    block_mentions,
    block_text,
    extrude,
    image_position,
    instruction_for,
    location_target,
    parse_instruction,
    point_in_polygon,
    polygon_area_centroid,
    push_steps_estimate,
    ray_exit_distance,
    relative_offset,
    table_position,
    task_satisfied,
    task_target,
)
from efm.rollout import rollout

FAMILIES = (BLOCK2BLOCK, BLOCK2LOCATION, BLOCK2RELATIVE)
TT = TabletopConfig()


def env_cfg(**tabletop: object) -> EnvConfig:
    return EnvConfig(
        domain="tabletop",
        tabletop=dataclasses.replace(TabletopConfig(render_images=False), **tabletop),
    )


def all_tasks() -> list[Task]:
    tasks = [Task(BLOCK2BLOCK, a, target_block=b) for a, b in itertools.permutations(BLOCKS, 2)]
    tasks += [Task(BLOCK2LOCATION, b, location=loc) for b in BLOCKS for loc in LOCATIONS]
    tasks += [
        Task(BLOCK2RELATIVE, b, direction=d, distance=m)
        for b in BLOCKS
        for d in DIRECTIONS
        for m in RELATIVE_DISTANCES
    ]
    return tasks


# --- Geometry --------------------------------------------------------------------------------


def test_polygon_geometry() -> None:
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    area, centroid = polygon_area_centroid(square)
    assert area == pytest.approx(4.0)
    np.testing.assert_allclose(centroid, [1.0, 1.0])
    assert polygon_area_centroid(square[::-1])[0] == pytest.approx(-4.0)  # clockwise: negative
    centred = square - 1.0
    assert ray_exit_distance(centred, np.array([1.0, 0.0])) == pytest.approx(1.0)
    assert ray_exit_distance(centred, np.array([1.0, 1.0]) / math.sqrt(2)) == pytest.approx(
        math.sqrt(2)
    )
    assert point_in_polygon(np.array([0.5, 0.5]), centred)
    assert not point_in_polygon(np.array([1.5, 0.0]), centred)


def test_arc_shape_is_centred_and_meshes_are_closed() -> None:
    moon = arc_shape(0.017, 1.3, 0.02, 0.004, 0.015, num_boxes=3)
    _, centroid = polygon_area_centroid(moon.outline)
    np.testing.assert_allclose(centroid, 0.0, atol=1e-12)
    assert polygon_area_centroid(moon.outline)[0] > 0  # counter-clockwise
    assert not point_in_polygon(np.array([-0.01, 0.0]), moon.outline)  # the concave bay
    vertices, indices = extrude(moon)
    assert len(indices) % 3 == 0 and max(indices) < len(vertices)
    # Closed surface: every edge is shared by exactly two triangles, in opposite directions.
    edges: dict[tuple[int, int], int] = {}
    for t in range(0, len(indices), 3):
        a, b, c = indices[t : t + 3]
        for e in ((a, b), (b, c), (c, a)):
            edges[e] = edges.get(e, 0) + 1
    assert all(edges.get((b, a), 0) == n == 1 for (a, b), n in edges.items())


def test_push_steps_estimate() -> None:
    # Effector already behind the block: only the push counts.
    steps = push_steps_estimate(
        np.array([0.3, 0.0]), np.array([0.35, 0.0]), np.array([0.55, 0.0]), 0.05, 0.05, 0.03
    )
    assert steps == math.ceil(0.15 / 0.03)
    # Diagonal pushes cover max(|dx|, |dy|) per step; a detour to get behind adds travel.
    diag = push_steps_estimate(
        np.array([0.3, -0.05]),
        np.array([0.35, 0.0]),
        np.array([0.45, 0.1]),
        0.0,
        0.05 * math.sqrt(2),
        0.03,
    )
    assert diag == math.ceil(0.1 / 0.03)
    far = push_steps_estimate(
        np.array([0.55, 0.2]),
        np.array([0.35, 0.0]),
        np.array([0.45, 0.1]),
        0.0,
        0.05 * math.sqrt(2),
        0.03,
    )
    assert far > diag
    assert push_steps_estimate(np.zeros(2), np.ones(2), np.ones(2) + 0.01, 0.05, 0.05, 0.03) == 0


# --- Instructions ----------------------------------------------------------------------------


def test_sampled_instructions_round_trip() -> None:
    rng = np.random.default_rng(0)
    tasks = all_tasks()
    for k in rng.choice(len(tasks), 3000):
        task = tasks[k]
        text = instruction_for(task, rng)
        assert parse_instruction(text) == task, text
        assert parse_instruction(f"  {text.capitalize()}. ") == task  # case, spacing, full stop


def test_block_mentions_name_the_task_blocks_in_order() -> None:
    """Stage-1 grounding supervises these spans: the task's block, then a Block2Block target."""
    for task in all_tasks()[::97]:
        for text in all_instructions(task)[::5]:
            mentions = block_mentions(text.capitalize())
            assert [m[0] for m in mentions] == list(task.blocks), text
            assert [text[a:b] for _, a, b in mentions] == [block_text(b) for b in task.blocks]


def test_every_phrasing_parses_back_and_none_is_ambiguous() -> None:
    owner: dict[str, Task] = {}
    for task in all_tasks():
        for text in all_instructions(task):
            assert owner.setdefault(text, task) == task, f"{text!r} names two tasks"
            assert parse_instruction(text) == task, text
    assert len(owner) > 40000
    verbs = {t.split()[0] for t in owner} | {
        t.split()[1] for t in owner if t.startswith("slightly")
    }
    assert {"push", "move", "slide", "nudge"} <= verbs
    assert "push the red moon to the blue cube" in owner
    assert "move the green star next to the yellow pentagon" in owner
    assert "push the red moon to the top left corner" in owner
    assert "move the blue cube to the center of the board" in owner
    assert "move the blue cube slightly to the left" in owner


@pytest.mark.parametrize(
    "text",
    [
        "dance the red moon to the blue cube",
        "push the purple moon to the blue cube",
        "push the red moon to the red moon",
        "push the red moon to the kitchen",
        "push the red moon",
        "",
    ],
)
def test_parse_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_instruction(text)


def test_task_validation() -> None:
    with pytest.raises(ValueError, match="family"):
        Task("block2nowhere", "red_moon")
    with pytest.raises(ValueError, match="needs exactly"):
        Task(BLOCK2BLOCK, "red_moon", location="center")
    with pytest.raises(ValueError, match="unknown block"):
        Task(BLOCK2LOCATION, "red_circle", location="center")
    with pytest.raises(ValueError, match="needs exactly"):
        Task(BLOCK2RELATIVE, "red_moon", direction="up")


def test_targets() -> None:
    np.testing.assert_allclose(location_target("center"), WORKSPACE.mean(axis=0))
    tl, br = location_target("top_left"), location_target("bottom_right")
    assert (
        (tl > WORKSPACE[0]).all() and (br < WORKSPACE[1]).all() and (tl < br).all()
    )  # top = small x
    np.testing.assert_allclose(relative_offset("up", "far"), [-0.2, 0.0])
    np.testing.assert_allclose(np.linalg.norm(relative_offset("down_right", "near")), 0.1)
    positions = {"red_moon": np.array([0.3, 0.1]), "blue_cube": np.array([0.4, 0.0])}
    np.testing.assert_allclose(
        task_target(Task(BLOCK2BLOCK, "red_moon", target_block="blue_cube"), positions), [0.4, 0.0]
    )
    relative = Task(BLOCK2RELATIVE, "red_moon", direction="left", distance="near")
    np.testing.assert_allclose(task_target(relative, positions, np.array([0.3, 0.2])), [0.3, 0.1])
    assert task_satisfied(relative, positions, TT, np.array([0.3, 0.2]))
    assert not task_satisfied(relative, positions, TT, np.array([0.3, 0.1]))  # never moved
    with pytest.raises(ValueError, match="start"):
        task_target(relative, positions)


# --- The environment -------------------------------------------------------------------------


def clear_effector(env: TabletopEnv, i: int) -> None:
    """Park the effector in the workspace corner farthest from every block."""
    blocks = np.array(
        [
            env.timestep().observation[BLOCK_TRANSLATION][i][BLOCKS.index(b)]
            for b in env.blocks_on_board[i]
        ]
    )
    corners = [np.array([x, y]) for x in WORKSPACE[:, 0] for y in WORKSPACE[:, 1]]
    env.place_effector(i, max(corners, key=lambda c: np.linalg.norm(blocks - c, axis=-1).min()))


def free_spots(env: TabletopEnv, i: int, moving: str) -> list[np.ndarray]:
    """Grid points of the workspace clear of every block but `moving`."""
    obs = env.timestep().observation[BLOCK_TRANSLATION][i]
    others = [obs[BLOCKS.index(b)] for b in env.blocks_on_board[i] if b != moving]
    grid = itertools.product(
        np.linspace(WORKSPACE[0][0] + 0.03, WORKSPACE[1][0] - 0.03, 12),
        np.linspace(WORKSPACE[0][1] + 0.03, WORKSPACE[1][1] - 0.03, 16),
    )
    return [
        np.array(p) for p in grid if all(np.linalg.norm(np.array(p) - q) > 0.075 for q in others)
    ]


def make_room(env: TabletopEnv, i: int, point: np.ndarray, keep: tuple[str, ...]) -> None:
    """Move the blocks not in `keep` that sit near `point` out of the way."""
    for b in env.blocks_on_board[i]:
        xy = env.timestep().observation[BLOCK_TRANSLATION][i][BLOCKS.index(b)]
        if b not in keep and np.linalg.norm(xy - point) < 0.09:
            env.place_block(
                i, b, next(p for p in free_spots(env, i, b) if np.linalg.norm(p - point) > 0.2)
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_success_iff_block_at_target_and_at_rest(family: str) -> None:
    env = TabletopEnv(env_cfg(task_families=(family,)), 1, seed=7)
    ts = env.reset()
    assert not ts.success[0]
    task = env.tasks[0]
    assert task is not None and task.family == family
    assert parse_instruction(ts.instruction[0]) == task
    positions = {
        b: ts.observation[BLOCK_TRANSLATION][0][BLOCKS.index(b)] for b in env.blocks_on_board[0]
    }
    target = task_target(task, positions, env.start_position(0))
    threshold = {
        BLOCK2BLOCK: TT.block2block_threshold,
        BLOCK2LOCATION: TT.location_threshold,
        BLOCK2RELATIVE: TT.relative_threshold,
    }[family]
    if family == BLOCK2BLOCK:  # beside the target block (both square to the axes: no overlap)
        env.place_block(0, task.target_block, target, yaw=0.0)
        others = [positions[b] for b in positions if b not in task.blocks]
        sides = [target + 0.055 * np.array(d) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        spot = next(
            p
            for p in sides
            if (p > WORKSPACE[0]).all()
            and (p < WORKSPACE[1]).all()
            and all(np.linalg.norm(p - q) > 0.075 for q in others)
        )
    else:
        make_room(env, 0, target, task.blocks)
        spot = target
    env.place_block(0, task.block, spot, yaw=0.0)
    clear_effector(env, 0)
    ts = env.step(np.zeros((1, 2)))
    assert ts.success[0], (task, spot, target)
    # Moving through the target is not success.
    scene = env._scenes[0]
    pb.resetBaseVelocity(
        scene._ids[task.block], [0.2, 0.0, 0.0], [0, 0, 0], physicsClientId=scene.client
    )
    assert not env.timestep().success[0]
    # Away from the target: no success.
    away = next(
        p for p in free_spots(env, 0, task.block) if np.linalg.norm(p - target) > threshold + 0.05
    )
    env.place_block(0, task.block, away)
    clear_effector(env, 0)
    assert not env.step(np.zeros((1, 2))).success[0]
    env.close()


def test_reset_samples_unsolved_tasks_on_clear_boards() -> None:
    env = TabletopEnv(env_cfg(num_blocks=5), 16, seed=3)
    ts = env.reset()
    assert not ts.success.any()
    assert ts.goal == {}
    assert ts.observation[EFFECTOR_TRANSLATION].dtype == np.float32
    blocks = ts.observation[BLOCK_TRANSLATION]
    assert blocks.shape == (16, len(BLOCKS), 2) and blocks.dtype == np.float32
    families = set()
    for i in range(16):
        on = env.blocks_on_board[i]
        assert len(on) == 5 and env.tasks[i] is not None and set(env.tasks[i].blocks) <= set(on)
        families.add(env.tasks[i].family)
        xy = np.array([blocks[i, BLOCKS.index(b)] for b in on])
        assert (xy >= WORKSPACE[0]).all() and (xy <= WORKSPACE[1]).all()
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(5)
        assert gaps.min() >= 0.069  # no overlapping blocks
        off = [k for k, b in enumerate(BLOCKS) if b not in on]
        np.testing.assert_array_equal(blocks[i, off], 0.0)
    assert families == set(FAMILIES)
    optimal = env.optimal_length()
    assert optimal.shape == (16,) and (optimal >= 1).all() and (optimal < 60).all()
    env.close()


def test_action_bounds_and_workspace_clipping() -> None:
    cfg = env_cfg(num_blocks=1, task_families=(BLOCK2LOCATION,))
    md = cfg.tabletop.max_delta
    env = TabletopEnv(cfg, 3, seed=0)
    env.reset()
    for i in range(3):
        env.place_block(i, env.blocks_on_board[i][0], (0.57, 0.28))
        env.place_effector(i, (0.3, -0.1))
    ts = env.step(np.array([[1.0, -1.0], [5.0, 0.5], [-0.2, 0.0]]))
    disp = (ts.observation[EFFECTOR_TRANSLATION] - np.array([0.3, -0.1])) / md
    np.testing.assert_allclose(
        disp, [[1.0, -1.0], [1.0, 0.5], [-0.2, 0.0]], atol=0.02
    )  # per-axis clip
    for _ in range(15):  # push against the top-left corner of the workspace
        ts = env.step(np.array([[-1.0, -1.0]] * 3))
    np.testing.assert_allclose(ts.observation[EFFECTOR_TRANSLATION], [WORKSPACE[0]] * 3, atol=0.003)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full((3, 2), np.nan))
    env.close()


def test_effector_pushes_blocks() -> None:
    env = TabletopEnv(env_cfg(num_blocks=1, task_families=(BLOCK2LOCATION,)), 1, seed=0)
    env.reset()
    block = env.blocks_on_board[0][0]
    env.place_block(0, block, (0.3, 0.0))
    env.place_effector(0, (0.24, 0.0))
    for _ in range(6):
        ts = env.step(np.array([[1.0, 0.0]]))
    moved = ts.observation[BLOCK_TRANSLATION][0, BLOCKS.index(block)]
    assert moved[0] > 0.4 and abs(moved[1]) < 0.05
    env.close()


def test_same_seed_same_episode_including_images() -> None:
    def run(seed: int) -> list:
        cfg = env_cfg(render_images=True, image_height=24, image_width=40)
        env = TabletopEnv(cfg, 2, seed)
        out = [env.reset()]
        for a in np.random.default_rng(0).uniform(-1, 1, (8, 2, 2)):
            out.append(env.step(a))
        out.append(env.reset(np.array([True, False])))
        env.close()
        return out

    a, b, c = run(5), run(5), run(6)
    for x, y in zip(a, b, strict=True):
        assert x.instruction == y.instruction
        np.testing.assert_array_equal(x.success, y.success)
        for k in x.observation:
            np.testing.assert_array_equal(x.observation[k], y.observation[k])
    assert (
        a[-1].observation[RGB].shape == (2, 24, 40, 3) and a[-1].observation[RGB].dtype == np.uint8
    )
    assert a[0].instruction != c[0].instruction or not np.array_equal(
        a[0].observation[RGB], c[0].observation[RGB]
    )


def test_reset_mask_only_resets_masked_envs() -> None:
    env = TabletopEnv(env_cfg(), 3, seed=1)
    env.reset()
    for _ in range(3):
        before = env.step(np.random.default_rng(1).uniform(-1, 1, (3, 2)))
    tasks = env.tasks
    after = env.reset(np.array([False, True, False]))
    for i in (0, 2):
        assert after.instruction[i] == before.instruction[i] and env.tasks[i] == tasks[i]
        for k in (EFFECTOR_TRANSLATION, BLOCK_TRANSLATION):
            np.testing.assert_array_equal(after.observation[k][i], before.observation[k][i])
    changed = not np.array_equal(
        after.observation[BLOCK_TRANSLATION][1], before.observation[BLOCK_TRANSLATION][1]
    )
    assert changed and env.start_position(1) is not None
    env.close()


def test_a_masked_reset_renders_only_the_envs_it_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The others keep their last observation: the same as observing every env again, at the
    cost of the reset envs' frames only; and arrays already handed out are never changed."""
    from efm.envs.tabletop.scene import TableScene

    env = TabletopEnv(env_cfg(render_images=True, image_height=24, image_width=40), 4, seed=3)
    env.reset()
    held = env.step(np.random.default_rng(0).uniform(-1, 1, (4, 2)))
    kept = {k: v.copy() for k, v in held.observation.items()}
    renders = []
    original = TableScene.render
    monkeypatch.setattr(TableScene, "render", lambda self: renders.append(self) or original(self))
    after = env.reset(np.array([False, True, False, True]))
    assert len(renders) == 2
    for k, v in held.observation.items():
        np.testing.assert_array_equal(v, kept[k])  # a rollout's buffered views of the last step
    full = env.timestep()  # every env observed again
    assert len(renders) == 6 and after.instruction == full.instruction
    np.testing.assert_array_equal(after.success, full.success)
    for k in full.observation:
        np.testing.assert_array_equal(after.observation[k], full.observation[k])
    for i in (0, 2):
        np.testing.assert_array_equal(after.observation[RGB][i], held.observation[RGB][i])
    env.close()


def test_a_masked_step_moves_and_renders_only_the_envs_it_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Envs outside the mask (their episode ended) keep their state and rows; those inside move
    as in a step of every env (each scene is its own simulation)."""
    from efm.envs.tabletop.scene import TableScene

    cfg = env_cfg(render_images=True, image_height=24, image_width=40)
    env, twin = TabletopEnv(cfg, 4, seed=3), TabletopEnv(cfg, 4, seed=3)
    before, _ = env.reset(), twin.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 2))
    renders = []
    original = TableScene.render
    monkeypatch.setattr(TableScene, "render", lambda self: renders.append(self) or original(self))
    mask = np.array([True, False, False, True])
    after = env.step(actions, mask)
    assert len(renders) == 2
    every = twin.step(actions)
    for k in after.observation:
        np.testing.assert_array_equal(after.observation[k][mask], every.observation[k][mask], err_msg=k)
        np.testing.assert_array_equal(after.observation[k][~mask], before.observation[k][~mask], err_msg=k)
    assert not np.array_equal(after.observation[EFFECTOR_TRANSLATION], before.observation[EFFECTOR_TRANSLATION])
    with pytest.raises(ValueError, match="mask"):
        env.step(actions, np.ones(3, bool))
    env.close()
    twin.close()


def test_observation_switches() -> None:
    env = TabletopEnv(env_cfg(state_observation=False), 1, seed=0)
    ts = env.reset()
    assert set(ts.observation) == {EFFECTOR_TRANSLATION}
    with pytest.raises(ValueError, match="state_observation"):
        TabletopDemonstrator(env_cfg(), 1, 0).act(ts)
    env.close()


def test_blocks_visible_in_camera_image_by_colour() -> None:
    env = TabletopEnv(env_cfg(render_images=True, num_blocks=4), 1, seed=2)
    env.reset()
    image = env.timestep().observation[RGB][0].astype(float)
    colors = {b.split("_")[0] for b in env.blocks_on_board[0]}
    for color, rgba in COLOR_RGBA.items():
        ref = np.array(rgba[:3]) * 255
        near = np.linalg.norm(image - ref, axis=-1) < 70  # lit faces stay close to the colour
        assert (near.sum() >= 4) == (color in colors), color
    env.close()


@pytest.mark.parametrize("camera", ["oblique", "top_down"])
def test_image_position_lands_on_each_object(camera: str) -> None:
    env = TabletopEnv(env_cfg(render_images=True, num_blocks=5, camera=camera), 2, seed=4)
    env.reset()
    obs = env.timestep().observation
    h, w = obs[RGB].shape[1:3]
    palette = {**{c: rgba[:3] for c, rgba in COLOR_RGBA.items()}, "board": BOARD_RGBA[:3]}
    names, refs = list(palette), np.array(list(palette.values()))
    refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)

    def around(xy: np.ndarray, z: float, image: np.ndarray) -> np.ndarray:  # the 3x3 pixels there
        row, col = image_position(np.array([*xy, z]), w / h, camera)
        r, c = round((row + 1) / 2 * h - 0.5), round((col + 1) / 2 * w - 0.5)
        return image[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].reshape(-1, 3).astype(float)

    for i in range(2):
        image = obs[RGB][i]
        for block in env.blocks_on_board[i]:
            patch = around(obs[BLOCK_TRANSLATION][i][BLOCKS.index(block)], BLOCK_HALF_HEIGHT, image)
            hue = np.argmax(patch @ refs.T / np.linalg.norm(patch, axis=1, keepdims=True), axis=1)  # shading aside
            assert block.split("_")[0] in {names[k] for k in hue}, block
        patch = around(obs[EFFECTOR_TRANSLATION][i], EFFECTOR_Z, image)
        assert np.linalg.norm(patch, axis=1).min() < 0.5 * np.linalg.norm(np.array(BOARD_RGBA[:3]) * 255)
    env.close()


@pytest.mark.parametrize("camera", ["oblique", "top_down"])
def test_table_position_inverts_image_position(camera: str) -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(WORKSPACE[0], WORKSPACE[1], (50, 2))
    for z in (BLOCK_HALF_HEIGHT, EFFECTOR_Z):
        rc = image_position(np.concatenate([xy, np.full((50, 1), z)], axis=1), 16 / 9, camera)
        np.testing.assert_allclose(table_position(rc, z, 16 / 9, camera), xy, atol=1e-5)


def test_the_top_down_camera_frames_the_board_with_the_robot_at_the_top() -> None:
    """Rows along x (the robot's base, small x, at the top, as in the oblique view), columns
    along y; the walls' inner edges at the image's top and bottom; a block the same size in
    pixels at the workspace's far and near edges (it shrinks toward the far edge obliquely)."""
    edges = np.array([[X_MIN - WALL_MARGIN, 0, 0], [X_MAX + WALL_MARGIN, 0, 0], [BOARD_CENTER[0], Y_MIN, 0],
                      [BOARD_CENTER[0], Y_MAX, 0]])
    rc = image_position(edges, 128 / 72, "top_down")
    np.testing.assert_allclose(rc[:2, 0], [-1, 1], atol=1e-6)
    assert rc[2, 1] < 0 < rc[3, 1] and abs(rc[2, 1]) < 1
    span = np.array([[0, -0.02, BLOCK_HALF_HEIGHT], [0, 0.02, BLOCK_HALF_HEIGHT]])

    def width(x: float, camera: str) -> float:
        p = image_position(span + np.array([x, 0, 0]), 128 / 72, camera)
        return float(p[1, 1] - p[0, 1])

    assert width(X_MIN, "top_down") == pytest.approx(width(X_MAX, "top_down"))
    assert width(X_MIN, "oblique") < 0.8 * width(X_MAX, "oblique")


def test_the_config_knows_the_scenes_cameras_and_the_top_down_framing() -> None:
    """The config validates camera names and the top-down view's image shape without importing
    PyBullet: its constants must be the scene's. The narrowest image that shows the board's
    width is the board's y extent over its x extent (the rows' framing)."""
    from efm.config import TABLE_CAMERAS, TOP_DOWN_MIN_ASPECT
    from efm.envs.tabletop import CAMERAS

    assert set(TABLE_CAMERAS) == set(CAMERAS)
    need = (Y_MAX - Y_MIN + 2 * WALL_MARGIN) / (X_MAX - X_MIN + 2 * WALL_MARGIN)
    assert need <= TOP_DOWN_MIN_ASPECT < need + 0.01
    rc = image_position(np.array([[BOARD_CENTER[0], Y_MIN - WALL_MARGIN, 0], [BOARD_CENTER[0], Y_MAX + WALL_MARGIN, 0]]),
                        TOP_DOWN_MIN_ASPECT, "top_down")
    assert np.all(np.abs(rc[:, 1]) <= 1)  # the walls' inner edges are in the image
    with pytest.raises(ValueError, match=r"tabletop\.image_width"):
        TabletopConfig(camera="top_down", image_height=96, image_width=96)


def test_config_validation_and_round_trip() -> None:
    for bad, field in [
        (dict(num_blocks=0), "tabletop.num_blocks"),
        (dict(task_families=()), "tabletop.task_families"),
        (dict(task_families=("block2moon",)), "tabletop.task_families"),
        (dict(num_blocks=1), "tabletop.num_blocks"),
        (dict(max_delta=0.0), "tabletop.max_delta"),
        (dict(image_height=2), "tabletop.image_height"),
        (dict(block2block_threshold=0.5), "tabletop.block2block_threshold"),
    ]:
        with pytest.raises(ValueError, match=rf"invalid config: {field}="):
            TabletopConfig(**bad)
    TabletopConfig(
        num_blocks=1, task_families=(BLOCK2LOCATION,)
    )  # one block is fine without block2block
    cfg = default_config("tabletop")
    cfg = cfg.replace(
        env=dataclasses.replace(
            cfg.env,
            tabletop=TabletopConfig(
                num_blocks=6, task_families=(BLOCK2BLOCK,), render_images=False
            ),
        )
    )
    back = RunConfig.from_json(cfg.to_json())
    assert back == cfg and isinstance(back.env.tabletop.task_families, tuple)


# --- The demonstrator ------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_demonstrator_succeeds_imperfectly(family: str) -> None:
    cfg = env_cfg(task_families=(family,))
    env, demo = make_env(cfg, 4, 0), make_demonstrator(cfg, 4, 1)
    assert isinstance(env, TabletopEnv) and isinstance(demo, TabletopDemonstrator)
    episodes = list(rollout(env, demo, max_steps=cfg.max_episode_steps, episodes_per_env=4))
    assert len(episodes) == 16
    assert sum(e.success for e in episodes) >= 15
    lengths = np.array([e.length for e in episodes if e.success])
    optimal = np.array([e.optimal_length for e in episodes if e.success])
    assert lengths.max() <= cfg.max_episode_steps
    assert lengths.mean() > optimal.mean()  # imperfect on purpose
    for e in episodes:  # success recorded at the last observation only
        assert e.observation_extras["success"][-1] == e.success
        assert not e.observation_extras["success"][:-1].any()
        assert np.abs(e.actions).max() <= 1.0
    env.close()


def test_demonstrator_deterministic() -> None:
    def run() -> list[np.ndarray]:
        cfg = env_cfg()
        env = TabletopEnv(cfg, 2, 4)
        eps = rollout(env, TabletopDemonstrator(cfg, 2, 5), max_steps=30, episodes_per_env=1)
        out = [e.actions for e in sorted(eps, key=lambda e: e.episode_id)]
        env.close()
        return out

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_reset_with_task_indices_is_a_pure_function_of_seed_and_index() -> None:
    a = TabletopEnv(env_cfg(), 2, seed=3)
    ts_a = a.reset(tasks=np.array([5, 2]))
    b = TabletopEnv(env_cfg(), 2, seed=3)
    b.reset()
    b.step(np.zeros((2, 2)))
    ts_b = b.reset(np.array([True, True]), tasks=np.array([2, 5]))
    assert ts_a.instruction == ts_b.instruction[::-1]
    assert a.tasks == b.tasks[::-1]
    np.testing.assert_array_equal(ts_a.observation[BLOCK_TRANSLATION], ts_b.observation[BLOCK_TRANSLATION][::-1])
    a.close()
    b.close()


def demonstrated_episodes(num_episodes: int, steps_after_end: int) -> list[np.ndarray]:
    """One env's demonstrated episodes (state observations per step), the last action repeated
    `steps_after_end` times after each episode ends, before the next reset."""
    cfg = env_cfg()
    env, demo, one = TabletopEnv(cfg, 1, seed=0), TabletopDemonstrator(cfg, 1, seed=1), np.ones(1, bool)
    episodes = []
    for _ in range(num_episodes):
        ts, rows = env.reset(one), []
        demo.reset(one)
        for _ in range(cfg.max_episode_steps):
            demo.observe(ts)
            action = demo.act(ts)["action"]
            ts = env.step(action)
            rows.append(np.concatenate([ts.observation[EFFECTOR_TRANSLATION][0], ts.observation[BLOCK_TRANSLATION][0].ravel()]))
            if ts.success[0]:
                break
        for _ in range(steps_after_end):
            env.step(action)
        episodes.append(np.stack(rows))
    env.close()
    return episodes


def test_an_episode_does_not_depend_on_the_steps_before_its_reset() -> None:
    # Bullet keeps state across a teleport: pushing on after an episode ended changed later
    # episodes' block positions (by up to 1.8e-6 m here, enough to change what a policy does
    # next) until each episode started in a fresh world.
    for a, b in zip(demonstrated_episodes(40, 0), demonstrated_episodes(40, 3), strict=True):
        np.testing.assert_array_equal(a, b)
