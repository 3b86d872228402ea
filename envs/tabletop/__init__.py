"""A LanguageTable-like tabletop domain in PyBullet (the paper's Appendix D.1).

A cylindrical end effector moves in the table plane by bounded 2-D deltas and pushes blocks of
4 colours x 4 shapes around a board; tasks are language instructions with ground-truth success:
Block2Block ("push the red moon to the blue cube"), block to an absolute board location ("slide
the green star to the top left corner") and block to a location relative to where it started
("move the blue cube slightly to the left").

Coordinates follow LanguageTable: x grows from the top of the camera image (the robot's base) to
the bottom, y from left to right, in metres; the effector's workspace is
[X_MIN, X_MAX] x [Y_MIN, Y_MAX]. Each of the N environments owns one headless PyBullet client
(DIRECT), so nothing is shared and a seed fixes everything. Images come from the CPU
TinyRenderer, so no GPU or display is needed.

The blocks get large roll/pitch inertia (as LanguageTable's block URDFs do): a stiff effector
otherwise tips and drives small blocks into the table. Yaw inertia is the real one, so blocks
and the banana still rotate when pushed off-centre.

Success is ground truth at every step: the task's block within the family's threshold of its
target and every block of the task at rest (planar speed below `stable_speed`), so a block
sliding through the target does not count.

Besides the camera image, observations carry the privileged block positions when
`state_observation` is on: the scripted demonstrator reads them (as LanguageTable's oracle reads
the simulator) and state-based models may; image-based models should ignore them.

The package reads as the domain does: `geometry` (board, blocks, shapes), `tasks` (task families,
instructions, success, board sampling), `scene` (one PyBullet world), `env` (the vectorized
environments) and `demonstrator` (scripted pushing). Every name stays importable from
`efm.envs.tabletop`.
"""

from __future__ import annotations

from efm.envs.tabletop.demonstrator import (
    BLOCK_FOOTPRINT,
    PushController,
    PushingDemonstrator,
    PushParams,
    TabletopDemonstrator,
    displacement_to_action,
    in_workspace,
    segment_hits,
)
from efm.envs.tabletop.env import (
    TableEnvBase,
    TabletopEnv,
    effector_targets,
)
from efm.envs.tabletop.geometry import (
    BLOCK_FRICTION,
    BLOCK_HALF_HEIGHT,
    BLOCK_MASS,
    BLOCK_RADIUS,
    BLOCK_SHAPES,
    BLOCK_TRANSLATION,
    BLOCKS,
    BOARD_CENTER,
    COLOR_RGBA,
    COLORS,
    CONTROL_PERIOD,
    EFFECTOR_ERP,
    EFFECTOR_FRICTION,
    EFFECTOR_HALF_HEIGHT,
    EFFECTOR_MASS,
    EFFECTOR_MAX_FORCE,
    EFFECTOR_RADIUS,
    EFFECTOR_TRANSLATION,
    EFFECTOR_Z,
    RGB,
    SHAPES,
    SOLVER_ITERATIONS,
    TIP_INERTIA,
    WALL_MARGIN,
    WORKSPACE,
    X_MAX,
    X_MIN,
    Y_MAX,
    Y_MIN,
    ShapeSpec,
    arc_shape,
    distance_to_boundary,
    extrude,
    fan_shape,
    point_in_polygon,
    polygon_area_centroid,
    polygon_polar_moment,
    ray_exit_distance,
    regular_polygon,
    rotate,
    star_polygon,
)
from efm.envs.tabletop.scene import (
    BOARD_RGBA,
    CAMERA_EYE,
    CAMERA_FOV,
    CAMERA_TARGET,
    CAMERA_UP,
    CAMERAS,
    EFFECTOR_RGBA,
    TABLE_RGBA,
    WALL_RGBA,
    BodySpec,
    Camera,
    SceneParams,
    TableScene,
    image_position,
    planar_pose,
    scene_params,
    table_position,
)
from efm.envs.tabletop.tasks import (
    BLOCK2BLOCK,
    BLOCK2BLOCK_PREPOSITIONS,
    BLOCK2LOCATION,
    BLOCK2RELATIVE,
    DIAGONAL_TEMPLATES,
    DIRECTION_WORDS,
    DIRECTIONS,
    EFFECTOR_CLEARANCE,
    LOCATION_INSET,
    LOCATION_PHRASES,
    LOCATIONS,
    MIN_BLOCK_SPACING,
    RELATIVE_DISTANCES,
    SLIGHTLY,
    SPAWN_MARGIN,
    VERBS,
    Task,
    all_instructions,
    block_mentions,
    block_text,
    chebyshev,
    direction_phrases,
    instruction_for,
    location_target,
    normalize_instruction,
    parse_instruction,
    push_steps_estimate,
    relative_offset,
    sample_positions,
    sample_task,
    success_threshold,
    task_satisfied,
    task_target,
)

__all__ = ['BLOCK2BLOCK', 'BLOCK2BLOCK_PREPOSITIONS', 'BLOCK2LOCATION', 'BLOCK2RELATIVE', 'BLOCKS', 'BLOCK_FOOTPRINT', 'BLOCK_FRICTION', 'BLOCK_HALF_HEIGHT', 'BLOCK_MASS', 'BLOCK_RADIUS', 'BLOCK_SHAPES', 'BLOCK_TRANSLATION', 'BOARD_CENTER', 'BOARD_RGBA', 'CAMERAS', 'CAMERA_EYE', 'CAMERA_FOV', 'CAMERA_TARGET', 'CAMERA_UP', 'COLORS', 'COLOR_RGBA', 'CONTROL_PERIOD', 'DIAGONAL_TEMPLATES', 'DIRECTIONS', 'DIRECTION_WORDS', 'EFFECTOR_CLEARANCE', 'EFFECTOR_ERP', 'EFFECTOR_FRICTION', 'EFFECTOR_HALF_HEIGHT', 'EFFECTOR_MASS', 'EFFECTOR_MAX_FORCE', 'EFFECTOR_RADIUS', 'EFFECTOR_RGBA', 'EFFECTOR_TRANSLATION', 'EFFECTOR_Z', 'LOCATIONS', 'LOCATION_INSET', 'LOCATION_PHRASES', 'MIN_BLOCK_SPACING', 'RELATIVE_DISTANCES', 'RGB', 'SHAPES', 'SLIGHTLY', 'SOLVER_ITERATIONS', 'SPAWN_MARGIN', 'TABLE_RGBA', 'TIP_INERTIA', 'VERBS', 'WALL_MARGIN', 'WALL_RGBA', 'WORKSPACE', 'X_MAX', 'X_MIN', 'Y_MAX', 'Y_MIN', 'BodySpec', 'Camera', 'PushController', 'PushParams', 'PushingDemonstrator', 'SceneParams', 'ShapeSpec', 'TableEnvBase', 'TableScene', 'TabletopDemonstrator', 'TabletopEnv', 'Task', 'all_instructions', 'arc_shape', 'block_mentions', 'block_text', 'chebyshev', 'direction_phrases', 'displacement_to_action', 'distance_to_boundary', 'effector_targets', 'extrude', 'fan_shape', 'image_position', 'in_workspace', 'instruction_for', 'location_target', 'normalize_instruction', 'parse_instruction', 'planar_pose', 'point_in_polygon', 'polygon_area_centroid', 'polygon_polar_moment', 'push_steps_estimate', 'ray_exit_distance', 'regular_polygon', 'relative_offset', 'rotate', 'sample_positions', 'sample_task', 'scene_params', 'segment_hits', 'star_polygon', 'success_threshold', 'table_position', 'task_satisfied', 'task_target']
