"""Episode GIFs: frames, caption, success marker, and clear errors without images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efm.config import EnvConfig, TabletopConfig
from efm.envs.base import Episode
from efm.envs.render import FAILURE_RGB, MIN_WIDTH, SUCCESS_RGB, episode_frames, write_episode_gif
from efm.envs.tabletop import TabletopDemonstrator, TabletopEnv
from efm.rollout import rollout


def fake_episode(steps: int = 4, success: bool = True, h: int = 10, w: int = 16) -> Episode:
    rgb = np.zeros((steps + 1, h, w, 3), np.uint8)
    rgb[:, :, :, 0] = np.arange(steps + 1)[:, None, None] * 40  # frames differ
    return Episode(
        observations={"rgb": rgb, "effector_translation": np.zeros((steps + 1, 2), np.float32)},
        actions=np.zeros((steps, 2), np.float32),
        instruction="push the red moon to the blue cube",
        success=success,
        episode_id="ep-0-0",
    )


def band_has(frame: Image.Image, image_height: int, rgb: tuple[int, int, int]) -> bool:
    band = np.asarray(frame)[image_height:]
    return bool((band == np.array(rgb, np.uint8)).all(-1).any())


@pytest.mark.parametrize("success", [True, False])
def test_gif_has_one_captioned_frame_per_observation(tmp_path: Path, success: bool) -> None:
    episode = fake_episode(success=success)
    path = write_episode_gif(episode, tmp_path / "sub" / "ep.gif", fps=5, scale=2)
    assert path == tmp_path / "sub" / "ep.gif" and path.exists()
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size[0] == MIN_WIDTH and gif.size[1] > 20  # image centred above the caption
        assert gif.info["duration"] == 200
        gif.seek(4)
        last = gif.convert("RGB")
    marker, other = (SUCCESS_RGB, FAILURE_RGB) if success else (FAILURE_RGB, SUCCESS_RGB)
    assert band_has(last, 20, marker) and not band_has(last, 20, other)
    frames = episode_frames(episode, scale=2)
    assert not band_has(frames[0], 20, marker)  # the outcome shows on the last frame only
    # Pixels are enlarged, not interpolated: frame t keeps its own red level.
    left = (MIN_WIDTH - 32) // 2
    assert (np.asarray(frames[3])[:20, left : left + 32, 0] == 120).all()


def test_caption_wraps_long_instructions() -> None:
    short = episode_frames(fake_episode(), scale=3)[0]
    long_episode = dataclasses.replace(fake_episode(), instruction="slide the green pentagon " * 6)
    assert episode_frames(long_episode, scale=3)[0].size[1] > short.size[1]


def test_clear_errors() -> None:
    ep = fake_episode()
    no_images = Episode(
        observations={"effector_translation": np.zeros((5, 2), np.float32)},
        actions=np.zeros((4, 2), np.float32),
        instruction="x",
        episode_id="ep-1",
    )
    with pytest.raises(ValueError, match="no 'rgb' observations"):
        write_episode_gif(no_images, "unused.gif")
    floats = dataclasses.replace(
        ep, observations={"rgb": ep.observations["rgb"].astype(np.float32)}
    )
    with pytest.raises(ValueError, match="uint8"):
        episode_frames(floats)
    gray = dataclasses.replace(ep, observations={"rgb": ep.observations["rgb"][..., 0]})
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        episode_frames(gray)
    with pytest.raises(ValueError, match="fps"):
        write_episode_gif(ep, "unused.gif", fps=0)
    with pytest.raises(ValueError, match="scale"):
        episode_frames(ep, scale=0)


def test_gif_of_a_tabletop_episode(tmp_path: Path) -> None:
    cfg = EnvConfig(domain="tabletop", tabletop=TabletopConfig(image_height=18, image_width=32))
    env = TabletopEnv(cfg, 1, 0)
    (episode,) = rollout(env, TabletopDemonstrator(cfg, 1, 0), max_steps=6, episodes_per_env=1)
    env.close()
    path = write_episode_gif(episode, tmp_path / "tabletop.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == episode.length + 1 and gif.size[0] == MIN_WIDTH
    wide = write_episode_gif(episode, tmp_path / "wide.gif", scale=8)
    with Image.open(wide) as gif:
        assert gif.size[0] == 32 * 8
