"""How many pixels the table's camera gives a block: the question behind a sharper reward model.

Projects the workspace corners and 4 cm spans at the workspace's near edge, centre and far edge
through the cameras the env renders with (`envs.tabletop.image_position`: the oblique default
and `env.tabletop.camera` "top_down", framed on the board inside its walls), at the configured
image size and at larger ones, and compares with a top-down camera framed on the workspace
alone (a pinhole looking straight down: pixels per cm are the image rows over the framed extent
along x). Prints a table, writes benchmarks/results/table_camera_pixels.json and renders one
board through both cameras at the largest size to benchmarks/results/table_cameras.png.

    .venv/bin/python benchmarks/table_camera_pixels.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from efm.config import TabletopConfig
from efm.envs.tabletop import (
    BLOCK_HALF_HEIGHT,
    WALL_MARGIN,
    X_MAX,
    X_MIN,
    Y_MAX,
    Y_MIN,
    image_position,
)

RESULTS = Path(__file__).parent / "results" / "table_camera_pixels.json"
SPAN = 0.04  # metres: about a block's width


def block_pixels(x: float, height: int, width: int, camera: str = "oblique") -> tuple[float, float]:
    """(rows, columns) a SPAN-wide square at board depth x (centre column) covers."""
    z = BLOCK_HALF_HEIGHT
    p = image_position(np.array([[x - SPAN / 2, 0, z], [x + SPAN / 2, 0, z], [x, -SPAN / 2, z], [x, SPAN / 2, z]]),
                       width / height, camera)
    return float(abs(p[1, 0] - p[0, 0]) / 2 * height), float(abs(p[3, 1] - p[2, 1]) / 2 * width)


def workspace_extent(height: int, width: int) -> dict[str, float]:
    """Fractions of the image's rows and columns (near and far edge) the workspace covers."""
    corners = np.array([[x, y, 0.0] for x in (X_MIN, X_MAX) for y in (Y_MIN, Y_MAX)])
    rc = image_position(corners, width / height)
    return {"rows": float(abs(rc[2, 0] - rc[0, 0]) / 2), "columns_far": float(abs(rc[1, 1] - rc[0, 1]) / 2),
            "columns_near": float(abs(rc[3, 1] - rc[2, 1]) / 2)}


def top_down(height: int, width: int, x_extent: float, y_extent: float) -> float:
    """Pixels per metre of a top-down camera that fits x_extent (rows) and y_extent (columns)."""
    return min(height / x_extent, width / y_extent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = TabletopConfig()
    board = (X_MAX - X_MIN + 2 * WALL_MARGIN, Y_MAX - Y_MIN + 2 * WALL_MARGIN)
    rows = []
    print("| image | camera | 4 cm block at the far / centre / near edge (rows x columns) | workspace: rows, columns far-near |")
    print("|---|---|---|---|")
    for scale in args.scales:
        h, w = round(cfg.image_height * scale), round(cfg.image_width * scale)
        blocks = {name: block_pixels(x, h, w) for name, x in (("far", X_MIN), ("centre", (X_MIN + X_MAX) / 2),
                                                                ("near", X_MAX))}
        extent = workspace_extent(h, w)
        rows.append({"image": [h, w], "camera": "the env's (LanguageTable's oblique view)", "block_px": blocks,
                     "workspace_fraction": extent})
        cells = " / ".join(f"{r:.1f} x {c:.1f}" for r, c in blocks.values())
        print(f"| {h}x{w} | the env's | {cells} | {extent['rows']:.2f}, "
              f"{extent['columns_far']:.2f}-{extent['columns_near']:.2f} |")
        top = {name: block_pixels(x, h, w, "top_down") for name, x in (("far", X_MIN), ("centre", (X_MIN + X_MAX) / 2),
                                                                        ("near", X_MAX))}
        rows.append({"image": [h, w], "camera": "the env's top_down", "block_px": top})
        print(f"| {h}x{w} | the env's top_down | {' / '.join(f'{r:.1f} x {c:.1f}' for r, c in top.values())} | |")
        for name, (ex, ey) in (("top-down on the board inside its walls", board),
                               ("top-down on the workspace", (X_MAX - X_MIN, Y_MAX - Y_MIN))):
            px = top_down(h, w, ex, ey) * SPAN
            rows.append({"image": [h, w], "camera": name, "block_px": px})
            print(f"| {h}x{w} | {name} | {px:.1f} x {px:.1f} everywhere | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"span_m": SPAN, "rows": rows}, indent=1))
    render_both(h, w, args.out.parent / "table_cameras.png")


def render_both(height: int, width: int, path: Path) -> None:
    """One board (seed 3) through the oblique and the top-down camera, side by side."""
    from PIL import Image

    from efm.config import EnvConfig
    from efm.envs.tabletop import RGB, TabletopEnv

    frames = []
    for camera in ("oblique", "top_down"):
        cfg = EnvConfig(domain="tabletop", tabletop=TabletopConfig(camera=camera, image_height=height,
                                                                   image_width=width))
        env = TabletopEnv(cfg, 1, seed=3)
        env.reset()
        frames.append(env.timestep().observation[RGB][0])
        env.close()
    Image.fromarray(np.concatenate(frames, axis=1)).save(path)


if __name__ == "__main__":
    main()
