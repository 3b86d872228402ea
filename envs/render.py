"""Episode videos for reports and MLflow artifacts: camera frames with the instruction as caption.

GIF only, written with Pillow (already installed through matplotlib): MP4 would need ffmpeg or
an encoder library, which this project does not depend on.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from efm.envs.base import Episode

RGB = "rgb"
CAPTION_RGB = (255, 255, 255)
BAND_RGB = (24, 24, 24)
SUCCESS_RGB = (60, 200, 90)
FAILURE_RGB = (230, 70, 60)
LINE_HEIGHT = 12  # pixels per caption line with Pillow's default bitmap font
CHAR_WIDTH = 6
MIN_WIDTH = 192  # narrower images are centred on a frame this wide, so the caption fits
STRIPE = 4  # pixels of the success / failure stripe under the last frame's caption


def _episode_images(episode: Episode) -> np.ndarray:
    if RGB not in episode.observations:
        raise ValueError(
            f"episode {episode.episode_id!r} has no {RGB!r} observations "
            f"(keys: {sorted(episode.observations)}); render it with images enabled"
        )
    images = np.asarray(episode.observations[RGB])
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"episode {episode.episode_id!r}: {RGB!r} must be [T, H, W, 3] with T >= 1, "
            f"got shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"episode {episode.episode_id!r}: {RGB!r} must be uint8, got {images.dtype}"
        )
    return images


def episode_frames(episode: Episode, scale: int = 3) -> list[Image.Image]:
    """One captioned frame per observation: the image enlarged `scale` times (nearest
    neighbour, so pixels stay visible), the instruction below it, and the step counter; the
    last frame also says whether the episode succeeded, in words and with a coloured stripe."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    images = _episode_images(episode)
    t_max, h, w = images.shape[0] - 1, images.shape[1] * scale, images.shape[2] * scale
    width = max(w, MIN_WIDTH)
    lines = textwrap.wrap(episode.instruction or "(no instruction)", width=width // CHAR_WIDTH - 1)
    band = LINE_HEIGHT * (len(lines) + 1) + 6 + STRIPE
    font = ImageFont.load_default()
    frames = []
    for t, image in enumerate(images):
        frame = Image.new("RGB", (width, h + band), BAND_RGB)
        frame.paste(Image.fromarray(image).resize((w, h), Image.NEAREST), ((width - w) // 2, 0))
        draw = ImageDraw.Draw(frame)
        for k, line in enumerate(lines):
            draw.text((4, h + 3 + k * LINE_HEIGHT), line, fill=CAPTION_RGB, font=font)
        status, color = f"t={t}/{t_max}", CAPTION_RGB
        if t == t_max:
            status += "  success" if episode.success else "  failure"
            color = SUCCESS_RGB if episode.success else FAILURE_RGB
            draw.rectangle((0, h + band - STRIPE, width - 1, h + band - 1), fill=color)
        draw.text((4, h + 3 + len(lines) * LINE_HEIGHT), status, fill=color, font=font)
        frames.append(frame)
    return frames


def write_episode_gif(episode: Episode, path: str | Path, fps: float = 10, scale: int = 3) -> Path:
    """Write the episode's "rgb" observations as a looping, captioned GIF; returns the path."""
    return write_episodes_gif([episode], path, fps, scale)


def write_episodes_gif(episodes: Sequence[Episode], path: str | Path, fps: float = 10, scale: int = 3) -> Path:
    """Several episodes one after another in one looping GIF (e.g. a dataset's first few)."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not episodes:
        raise ValueError("no episodes to render")
    frames = [f for e in episodes for f in episode_frames(e, scale)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=max(round(1000 / fps), 20),
        loop=0,
    )
    return path
