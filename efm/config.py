"""Run configuration: one frozen dataclass per concern, composed into `RunConfig`.

Every default lives here. Configs validate themselves on construction (`__post_init__`), so a
bad value fails before any data or device is touched, and round-trip through JSON so a kfp
component can take the whole config as one string and MLflow can log it as params.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DOMAINS = ("pointmass", "tabletop", "bananatable", "aloha-insertion")


def _check(cond: bool, name: str, value: Any, rule: str) -> None:
    if not cond:
        raise ValueError(f"invalid config: {name}={value!r} ({rule})")


@dataclass(frozen=True)
class PointmassConfig:
    """The paper's pointmass navigation domain (Section 3, Figure 4)."""

    arena_half_size: float = 1.0  # positions live in [-h, h]^2
    max_speed: float = 0.1  # displacement per step for an action of norm 1
    success_radius: float = 0.1
    min_start_target_distance: float = 0.6
    num_waypoints: int = 5  # demonstrator detours before heading to the target
    waypoint_radius: float = 0.1
    pd_kp: float = 0.6  # demonstrator gains (on position error, in units of max_speed)
    pd_kd: float = 0.2
    action_noise: float = 0.05

    def __post_init__(self) -> None:
        _check(self.arena_half_size > 0, "pointmass.arena_half_size", self.arena_half_size, "> 0")
        _check(self.max_speed > 0, "pointmass.max_speed", self.max_speed, "> 0")
        _check(self.success_radius > 0, "pointmass.success_radius", self.success_radius, "> 0")
        _check(
            0 <= self.min_start_target_distance < 2 * self.arena_half_size,
            "pointmass.min_start_target_distance",
            self.min_start_target_distance,
            "in [0, arena diameter)",
        )
        _check(self.num_waypoints >= 0, "pointmass.num_waypoints", self.num_waypoints, ">= 0")
        _check(self.action_noise >= 0, "pointmass.action_noise", self.action_noise, ">= 0")


TABLETOP_TASK_FAMILIES = ("block2block", "block2location", "block2relative")


@dataclass(frozen=True)
class TabletopConfig:
    """LanguageTable-like block pushing in PyBullet (Appendix D.1). Lengths in metres."""

    image_height: int = 72  # the 360x640 camera aspect, scaled down
    image_width: int = 128
    # "oblique": LanguageTable's view from beyond the board's bottom edge; "top_down": straight
    # down, the board inside its walls framed along x (more pixels per block at the far edge)
    camera: str = "oblique"
    render_images: bool = True  # False: no "rgb" observation (fast, state-based runs)
    state_observation: bool = True  # privileged block positions (the demonstrator reads them)
    num_blocks: int = 4  # on the board, of the 16 colour x shape blocks
    max_delta: float = 0.03  # effector displacement per step for an action of 1 on an axis
    physics_substeps: int = 10  # simulation steps per 0.1 s control step
    block2block_threshold: float = 0.06  # block centres closer than this: success
    location_threshold: float = 0.1  # block centre within this of a board location
    relative_threshold: float = 0.05  # block centre within this of its offset target
    stable_speed: float = 0.02  # m/s: success also needs the task blocks at rest
    task_families: tuple[str, ...] = TABLETOP_TASK_FAMILIES
    demo_action_noise: float = 0.1  # scripted demonstrator, in action units
    demo_detour_prob: float = 0.2  # chance per episode of a random waypoint first

    def __post_init__(self) -> None:
        _check_scene("tabletop", self)
        _check(1 <= self.num_blocks <= 8, "tabletop.num_blocks", self.num_blocks, "in [1, 8]")
        _check(len(self.task_families) > 0, "tabletop.task_families", self.task_families, "non-empty")
        for f in self.task_families:
            _check(f in TABLETOP_TASK_FAMILIES, "tabletop.task_families", self.task_families,
                   f"each in {TABLETOP_TASK_FAMILIES}")
        _check(self.num_blocks >= 2 or "block2block" not in self.task_families, "tabletop.num_blocks",
               self.num_blocks, ">= 2 for block2block")
        for name in ("block2block_threshold", "location_threshold", "relative_threshold"):
            value = getattr(self, name)
            _check(0 < value < 0.15, f"tabletop.{name}", value, "in (0, 0.15)")


@dataclass(frozen=True)
class BananaTableConfig:
    """BananaTable (Appendix D.2): one banana pushed to one of 9 regions of the table."""

    image_height: int = 72
    image_width: int = 128
    camera: str = "oblique"  # as the table's: a policy transferred from it sees the same view
    render_images: bool = True
    state_observation: bool = True  # privileged banana pose (the demonstrator reads it)
    max_delta: float = 0.03
    physics_substeps: int = 10
    stable_speed: float = 0.02
    banana_mass: float = 0.12  # kg
    banana_friction: float = 0.5  # lateral friction against the table
    demo_action_noise: float = 0.1
    demo_detour_prob: float = 0.2

    def __post_init__(self) -> None:
        _check_scene("bananatable", self)
        _check(self.banana_mass > 0, "bananatable.banana_mass", self.banana_mass, "> 0")
        _check(self.banana_friction > 0, "bananatable.banana_friction", self.banana_friction, "> 0")


TABLE_CAMERAS = ("oblique", "top_down")  # envs.tabletop.scene.CAMERAS (a test keeps them equal)
# The top-down camera frames the board inside its walls along x (0.61 m); its y extent (0.77 m)
# fits only in an image this much wider than high (a test derives it from the geometry).
TOP_DOWN_MIN_ASPECT = 1.27


def _check_scene(prefix: str, cfg: TabletopConfig | BananaTableConfig) -> None:
    """Fields shared by the PyBullet table domains."""
    _check(cfg.camera in TABLE_CAMERAS, f"{prefix}.camera", cfg.camera, f"one of {TABLE_CAMERAS}")
    _check(cfg.camera != "top_down" or cfg.image_width >= TOP_DOWN_MIN_ASPECT * cfg.image_height,
           f"{prefix}.image_width", cfg.image_width,
           f">= {TOP_DOWN_MIN_ASPECT} x image_height with the top_down camera (the board's width must fit)")
    _check(cfg.image_height >= 8, f"{prefix}.image_height", cfg.image_height, ">= 8")
    _check(cfg.image_width >= 8, f"{prefix}.image_width", cfg.image_width, ">= 8")
    _check(0 < cfg.max_delta <= 0.1, f"{prefix}.max_delta", cfg.max_delta, "in (0, 0.1]")
    _check(cfg.physics_substeps >= 1, f"{prefix}.physics_substeps", cfg.physics_substeps, ">= 1")
    _check(cfg.stable_speed > 0, f"{prefix}.stable_speed", cfg.stable_speed, "> 0")
    _check(cfg.demo_action_noise >= 0, f"{prefix}.demo_action_noise", cfg.demo_action_noise, ">= 0")
    _check(0 <= cfg.demo_detour_prob <= 1, f"{prefix}.demo_detour_prob", cfg.demo_detour_prob, "in [0, 1]")


def _check_range(name: str, r: tuple[float, float]) -> None:
    _check(len(r) == 2 and r[0] <= r[1], name, r, "(low, high) with low <= high")


@dataclass(frozen=True)
class AlohaConfig:
    """The bimanual ALOHA Single-Insertion task in MuJoCo (Section 4.1.3, Appendix D.3).

    One env step is one action chunk: `chunk_length` joint targets at 10 Hz (14 each, in
    [-1, 1]), executed whole. Lengths in metres; views in pixels.
    """

    chunk_length: int = 5  # N: 10 Hz targets per policy step (action_dim = 14 * N)
    # The four cameras, stacked into two images (Appendix D.3). Off by default: CPU rendering gives
    # only a few four-camera frames/s and the state-based model ignores them; on a GPU use EGL.
    render_images: bool = False
    state_observation: bool = True  # privileged peg and socket poses (the demonstrator reads them)
    view_height: int = 60  # one camera view; each stacked image is 2 * view_height + band_height tall
    view_width: int = 80
    band_height: int = 4  # black band between two stacked views
    peg_x_range: tuple[float, float] = (0.1, 0.2)  # gym-aloha's ranges
    peg_y_range: tuple[float, float] = (0.4, 0.6)
    socket_x_range: tuple[float, float] = (-0.2, -0.1)
    socket_y_range: tuple[float, float] = (0.4, 0.6)
    settle_seconds: float = 0.3  # objects drop onto the table before the first observation
    demo_joint_noise: float = 0.002  # scripted demonstrator: noise on its joint targets, in [-1, 1] units
    demo_grasp_noise: float = 0.006  # m, per axis on each grasp point (misses make it re-grasp)
    demo_max_retries: int = 4  # re-grasps / re-insertions before the demonstrator gives up

    def __post_init__(self) -> None:
        _check(1 <= self.chunk_length <= 50, "aloha.chunk_length", self.chunk_length, "in [1, 50]")
        _check(self.view_height >= 8, "aloha.view_height", self.view_height, ">= 8")
        _check(self.view_width >= 8, "aloha.view_width", self.view_width, ">= 8")
        _check(self.band_height >= 0, "aloha.band_height", self.band_height, ">= 0")
        for name in ("peg_x_range", "peg_y_range", "socket_x_range", "socket_y_range"):
            _check_range(f"aloha.{name}", getattr(self, name))
        _check(self.settle_seconds >= 0, "aloha.settle_seconds", self.settle_seconds, ">= 0")
        _check(self.demo_joint_noise >= 0, "aloha.demo_joint_noise", self.demo_joint_noise, ">= 0")
        _check(self.demo_grasp_noise >= 0, "aloha.demo_grasp_noise", self.demo_grasp_noise, ">= 0")
        _check(self.demo_max_retries >= 0, "aloha.demo_max_retries", self.demo_max_retries, ">= 0")

    @property
    def action_dim(self) -> int:
        return 14 * self.chunk_length


@dataclass(frozen=True)
class EnvConfig:
    domain: str = "pointmass"
    max_episode_steps: int = 100
    pointmass: PointmassConfig = field(default_factory=PointmassConfig)
    tabletop: TabletopConfig = field(default_factory=TabletopConfig)
    bananatable: BananaTableConfig = field(default_factory=BananaTableConfig)
    aloha: AlohaConfig = field(default_factory=AlohaConfig)
    # Worker processes that step a vectorized env's N copies (efm.envs.subprocess): 0 picks
    # (every core for the PyBullet domains once N is large enough, see efm.domains.env_workers),
    # 1 steps them in this process. Results are the same either way.
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.domain in DOMAINS, "env.domain", self.domain, f"one of {DOMAINS}")
        _check(self.max_episode_steps > 0, "env.max_episode_steps", self.max_episode_steps, "> 0")
        _check(self.num_workers >= 0, "env.num_workers", self.num_workers, ">= 0 (0: automatic)")
        _check(self.domain != "pointmass" or self.num_workers <= 1, "env.num_workers", self.num_workers,
               "0 or 1 for pointmass: its numpy step takes microseconds, less than a message to a worker")


@dataclass(frozen=True)
class DataConfig:
    num_episodes: int = 40000  # the full dataset
    validation_episodes: int = 250  # held out once, shared by every fraction
    fractions: tuple[float, ...] = (0.1, 0.2, 0.8)  # of the episodes left after validation
    seed: int = 0  # demonstration generation

    def __post_init__(self) -> None:
        _check(self.num_episodes > 0, "data.num_episodes", self.num_episodes, "> 0")
        _check(
            0 < self.validation_episodes < self.num_episodes,
            "data.validation_episodes",
            self.validation_episodes,
            "in (0, num_episodes)",
        )
        _check(len(self.fractions) > 0, "data.fractions", self.fractions, "non-empty")
        for f in self.fractions:
            _check(0 < f <= 1, "data.fractions", self.fractions, "each in (0, 1]")


@dataclass(frozen=True)
class TokenizerConfig:
    """Appendix E. A tokenizer is data: which scheme and its bins, per domain."""

    action_scheme: Literal["sign_magnitude", "uniform"] = "sign_magnitude"
    action_dim: int = 2
    action_max_abs: float = 1.0
    magnitude_bins: int = 11  # sign_magnitude: magnitudes 0..10 (LanguageTable)
    uniform_bins: int = 256  # uniform: bins over [-max_abs, max_abs] (Aloha)
    steps_to_go_bins: int = 100
    steps_to_go_max: float = 100.0
    text_tokens: int = 0  # instruction tokens the model reads; 0: it reads no text
    # Whole words as single text tokens (the rest stays UTF-8 bytes); learned from a dataset's
    # instructions by `efm data train-tokenizer`. Empty: bytes only.
    text_words: tuple[str, ...] = ()
    # Proprioception as input tokens after the instruction (E.2's joint tokens; the table's
    # effector position): the observation key, and per dimension `state_bins` uniform bins over
    # [low, high]. "" : the model reads no state (it never reads privileged object poses).
    state_key: str = ""
    state_low: tuple[float, ...] = ()
    state_high: tuple[float, ...] = ()
    state_bins: int = 256
    # The state tokens are the action tokens of the same bins (RT-2's numbers are one set of
    # tokens, E.2's joints and joint targets alike): the joint token a target nearly copies is
    # then that target's own token. Needs uniform action bins over the state's range.
    state_shares_action_tokens: bool = False
    # The camera observations a vision-language model reads, in order, each as its current and
    # previous frame (image tokens from the ViT; every camera's frames of one shape): the
    # table's one camera, Aloha's two stacked images (D.3). State models ignore it.
    cameras: tuple[str, ...] = ("rgb",)

    def __post_init__(self) -> None:
        _check(
            self.action_scheme in ("sign_magnitude", "uniform"),
            "tokenizer.action_scheme",
            self.action_scheme,
            "sign_magnitude or uniform",
        )
        _check(self.action_dim > 0, "tokenizer.action_dim", self.action_dim, "> 0")
        _check(self.action_max_abs > 0, "tokenizer.action_max_abs", self.action_max_abs, "> 0")
        _check(self.magnitude_bins >= 2, "tokenizer.magnitude_bins", self.magnitude_bins, ">= 2")
        _check(self.uniform_bins >= 2, "tokenizer.uniform_bins", self.uniform_bins, ">= 2")
        _check(self.steps_to_go_bins >= 2, "tokenizer.steps_to_go_bins", self.steps_to_go_bins, ">= 2")
        _check(self.steps_to_go_max > 0, "tokenizer.steps_to_go_max", self.steps_to_go_max, "> 0")
        _check(0 <= self.text_tokens <= 512, "tokenizer.text_tokens", self.text_tokens, "in [0, 512]")
        _check(self.state_bins >= 2, "tokenizer.state_bins", self.state_bins, ">= 2")
        _check(len(self.state_low) == len(self.state_high), "tokenizer.state_high", self.state_high,
               f"as many values as state_low ({len(self.state_low)})")
        _check(bool(self.state_key) == bool(self.state_low), "tokenizer.state_low", self.state_low,
               "one range per dimension of state_key's observation, given exactly when state_key is")
        _check(all(lo < hi for lo, hi in zip(self.state_low, self.state_high, strict=True)), "tokenizer.state_high",
               self.state_high, "above state_low in every dimension")
        m = self.action_max_abs
        _check(not self.state_shares_action_tokens
               or (bool(self.state_key) and self.action_scheme == "uniform" and self.state_bins == self.uniform_bins
                   and set(self.state_low) == {-m} and set(self.state_high) == {m}),
               "tokenizer.state_shares_action_tokens", self.state_shares_action_tokens,
               "only with state tokens in the uniform action bins: action_scheme 'uniform', state_bins == "
               "uniform_bins, state_low/state_high -/+ action_max_abs")
        _check(len(self.cameras) > 0 and len(set(self.cameras)) == len(self.cameras)
               and all(isinstance(c, str) and c for c in self.cameras), "tokenizer.cameras", self.cameras,
               "one or more distinct observation keys")


@dataclass(frozen=True)
class MlpVariant:
    """State-based EFM (pointmass, Section 3): an observation MLP and a small token decoder.

    The decoder is an MLP over the zero-padded earlier tokens, or with `decoder_depth` > 0 a
    causal transformer of that depth reading `context_tokens` tokens made from the observation:
    Aloha's 70-token chunks need each token to read the ones it depends on (the same joint one
    target earlier), which the MLP decoder cannot route (README, Aloha).
    """

    width: int
    depth: int
    token_embed: int = 16  # the MLP decoder's token embedding
    decoder_depth: int = 0
    decoder_heads: int = 4
    context_tokens: int = 4

    def __post_init__(self) -> None:
        _check(self.decoder_depth >= 0, "model variant decoder_depth", self.decoder_depth, ">= 0")
        _check(self.decoder_depth == 0 or self.width % self.decoder_heads == 0, "model variant decoder_heads",
               self.decoder_heads, f"dividing width {self.width}")


@dataclass(frozen=True)
class TransformerVariant:
    """Vision-language EFM (RT-2 / PaliGemma): a ViT image tower and a decoder-only text tower.

    The ViT cuts each camera frame into `patch` patches (fewer image tokens are what makes a
    CPU-sized model fast); its tokens are projected to the text tower's `width`. `stem`: the
    channels of stride-2 3x3 convolutions before the patch embedding (a hybrid ViT, as
    big_vision's ResNet-stem variants): small objects in a large patch are found by local
    filters rather than one linear map of the whole patch, which a small model trained briefly
    needs. Empty: PaliGemma's plain ViT. `keypoints`: K spatial-softmax keypoint tokens per
    frame after the patch tokens (where each of K learned detectors fires, as coordinates).
    `grounding`: each text token, with its neighbours, queries the stem's features of every
    frame, and where the query fires is added to that token (text-conditioned keypoints).
    `feature_convs`: stride-1 3x3 convolutions on the stem's features before the keypoints and
    the grounding read them (a wider receptive field, to tell one colour's shapes apart).
    """

    patch: tuple[int, int]
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp: int
    width: int
    depth: int
    heads: int
    head_dim: int
    mlp: int
    stem: tuple[int, ...] = ()
    keypoints: int = 0
    grounding: bool = False
    feature_convs: int = 0

    def __post_init__(self) -> None:
        _check(self.feature_convs == 0 or (self.stem and (self.keypoints or self.grounding)),
               "model variant feature_convs", self.feature_convs, "0 without a stem read by keypoints or grounding")
        down = 2 ** len(self.stem)
        _check(all(p % down == 0 for p in self.patch), "model variant patch", self.patch,
               f"divisible by the stem's downsampling ({down})")


MODEL_VARIANTS: dict[str, MlpVariant | TransformerVariant] = {
    "mlp-tiny": MlpVariant(width=64, depth=2, token_embed=16),
    "mlp-small": MlpVariant(width=128, depth=3, token_embed=16),
    "mlp-base": MlpVariant(width=256, depth=3, token_embed=32),
    # the observation MLP and a causal transformer decoder (Aloha's long action chunks)
    "mlp-tx-tiny": MlpVariant(width=32, depth=2, decoder_depth=1, decoder_heads=2, context_tokens=2),
    "mlp-tx-small": MlpVariant(width=128, depth=3, decoder_depth=2, decoder_heads=4),
    # trains in seconds (tests)
    "vl-tiny": TransformerVariant(patch=(18, 32), vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64,
                                  width=32, depth=1, heads=2, head_dim=16, mlp=64),
    # vl-tiny with a stem and grounded text (tests of the grounding path, seconds)
    "vl-tiny-g": TransformerVariant(patch=(18, 32), stem=(8,), vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64,
                                    width=32, depth=1, heads=2, head_dim=16, mlp=64, grounding=True),
    # the 2-core CPU benchmarks: 6x4 = 24 tokens per 72x128 frame from a 2-conv stem
    "vl-cpu": TransformerVariant(patch=(12, 32), stem=(16, 32), vit_width=64, vit_depth=1, vit_heads=2, vit_mlp=128,
                                 width=128, depth=2, heads=4, head_dim=32, mlp=384),
    # vl-cpu and 16 keypoint tokens per frame
    "vl-cpu-kp": TransformerVariant(patch=(12, 32), stem=(16, 32), vit_width=64, vit_depth=1, vit_heads=2,
                                    vit_mlp=128, width=128, depth=2, heads=4, head_dim=32, mlp=384, keypoints=16),
    # vl-cpu-kp and grounded text: named objects found by text-conditioned keypoints
    "vl-cpu-gkp": TransformerVariant(patch=(12, 32), stem=(16, 32), vit_width=64, vit_depth=1, vit_heads=2,
                                     vit_mlp=128, width=128, depth=2, heads=4, head_dim=32, mlp=384, keypoints=16,
                                     grounding=True),
    # vl-cpu-gkp with two more convs on the stem's features before keypoints and grounding
    "vl-cpu-gkp2": TransformerVariant(patch=(12, 32), stem=(16, 32), vit_width=64, vit_depth=1, vit_heads=2,
                                      vit_mlp=128, width=128, depth=2, heads=4, head_dim=32, mlp=384, keypoints=16,
                                      grounding=True, feature_convs=2),
    # Aloha's stacked 124x80 images (two 60x80 views and a 4-pixel band): 4x4 = 16 tokens per
    # frame, 64 for the two cameras' current and previous frames; trains in seconds (tests)
    "vl-aloha-tiny": TransformerVariant(patch=(31, 20), vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64,
                                        width=32, depth=1, heads=2, head_dim=16, mlp=64),
    # accelerators: 6x8 = 48 tokens per frame
    "vl-base": TransformerVariant(patch=(12, 16), vit_width=384, vit_depth=6, vit_heads=6, vit_mlp=1536,
                                  width=512, depth=8, heads=8, head_dim=64, mlp=2048),
    "vl-large": TransformerVariant(patch=(12, 16), vit_width=768, vit_depth=12, vit_heads=12, vit_mlp=3072,
                                   width=1024, depth=18, heads=8, head_dim=128, mlp=4096),
}

MODEL_INITS = ("scratch", "big_vision", "orbax", "pretrain")
MODEL_PARTS = ("vision_encoder", "llm")  # the towers a starting checkpoint may provide


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and what it starts from.

    init: "scratch", or the parts in `init_parts` loaded from `init_path`: a big_vision .npz
    (PaliGemma's published layout), one of this project's Orbax params checkpoints, or
    ("pretrain") an `efm pretrain` output directory. In the pipeline "pretrain" with an empty
    init_path adds the pretraining step and SFT starts from its output; with an init_path every
    branch starts from that earlier pretraining, and no step pretrains.
    """

    variant: str = "mlp-small"
    init: str = "scratch"
    init_path: str = ""
    init_parts: tuple[str, ...] = MODEL_PARTS
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # params stay float32

    def __post_init__(self) -> None:
        _check(self.variant in MODEL_VARIANTS, "model.variant", self.variant, f"one of {sorted(MODEL_VARIANTS)}")
        _check(self.init in MODEL_INITS, "model.init", self.init, f"one of {MODEL_INITS}")
        _check(self.init in ("scratch", "pretrain") or bool(self.init_path), "model.init_path", self.init_path,
               f"required with init={self.init!r}")
        for part in self.init_parts:
            _check(part in MODEL_PARTS, "model.init_parts", self.init_parts, f"each in {MODEL_PARTS}")
        _check(self.compute_dtype in ("float32", "bfloat16"), "model.compute_dtype", self.compute_dtype,
               "float32 or bfloat16")

    @property
    def reads_text(self) -> bool:
        return isinstance(MODEL_VARIANTS[self.variant], TransformerVariant)

    @property
    def reads_tokens(self) -> bool:
        """Its prefix can hold input tokens (proprioception): every transformer."""
        v = MODEL_VARIANTS[self.variant]
        return isinstance(v, TransformerVariant) or v.decoder_depth > 0

    @property
    def grounded(self) -> bool:
        """Its text tokens query the image (what sft/pretrain.grounding_weight supervise)."""
        v = MODEL_VARIANTS[self.variant]
        return isinstance(v, TransformerVariant) and v.grounding


# bc: action tokens; steps_to_go: one token; instruction: LanguageTable's auxiliary objective
# (Appendix A.3), the instruction predicted from an episode's first and last frame.
STAGE1_OBJECTIVES = ("bc", "steps_to_go", "instruction")
# locate: pretraining on rendered image-text data without actions (`efm pretrain`): "where is
# the red moon" answered in the position tokens the model reads the effector in.
PRETRAIN_OBJECTIVES = ("locate",)
MAX_LOCATE_OBJECTS = 9  # objects one locate question may name: up to 8 blocks and the effector
OBJECTIVES = STAGE1_OBJECTIVES + PRETRAIN_OBJECTIVES


@dataclass(frozen=True)
class SftConfig:
    """Stage 1 (Section 2.1, Appendix A.3): each batch split uniformly over the objectives."""

    objectives: tuple[str, ...] = ("bc", "steps_to_go")
    batch_size: int = 128
    num_steps: int = 6000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    eval_every: int = 500
    checkpoint_every: int = 500
    # Early stopping: end training once neither loss the best_* selection rules read (BC for the
    # policy, steps-to-go for the reward) has reached a new minimum in this many evaluations in a
    # row (0: train all num_steps). Small data overfits long before num_steps (README, "Early stopping").
    patience: int = 0
    max_checkpoints: int = 20
    shuffle_buffer: int = 20000  # samples (still encoded); memory is bounded by it, not the dataset
    data_threads: int = 2  # tf.data's thread pool; small on 2 cores so it does not starve XLA
    validation_batch_size: int = 512
    fsdp: int = 1  # devices per parameter shard group; the rest of the mesh is data-parallel
    # Training targets of ordered bins (positions, action magnitudes) spread as a Gaussian of
    # this standard deviation, as a fraction of the bins of the quantity (0: one-hot); validation
    # losses stay the true tokens' NLL. Steps-to-go stays one-hot: d(o, g) is its mean, and
    # smoothing cut off at bin 0 keeps that mean off zero at success (Vocabulary.ordinal_runs).
    ordinal_sigma: float = 0.0
    # Grounding variants: weight of the squared error between where each name token's query
    # fires and where the named object is in the image. Pretraining supervises its questions'
    # names (PretrainConfig sets it); Stage 1 on the table the block names of the instruction,
    # from the dataset's privileged block positions (training targets only, never an input).
    grounding_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.grounding_weight >= 0, "sft.grounding_weight", self.grounding_weight, ">= 0")
        if tuple(self.objectives) != PRETRAIN_OBJECTIVES:  # what PretrainConfig.as_sft makes
            for o in self.objectives:
                _check(o in STAGE1_OBJECTIVES, "sft.objectives", self.objectives, f"each in {STAGE1_OBJECTIVES}")
            _check("bc" in self.objectives and "steps_to_go" in self.objectives, "sft.objectives",
                   self.objectives, "must include bc and steps_to_go")
        _check(self.batch_size % len(self.objectives) == 0, "sft.batch_size", self.batch_size,
               "divisible by the number of objectives")
        _check(self.num_steps > 0, "sft.num_steps", self.num_steps, "> 0")
        _check(self.learning_rate > 0, "sft.learning_rate", self.learning_rate, "> 0")
        _check(self.eval_every > 0, "sft.eval_every", self.eval_every, "> 0")
        _check(self.checkpoint_every > 0 and self.checkpoint_every % self.eval_every == 0,
               "sft.checkpoint_every", self.checkpoint_every, "a positive multiple of eval_every")
        _check(self.patience >= 0, "sft.patience", self.patience, ">= 0 (0: no early stopping)")
        _check(self.shuffle_buffer > 0, "sft.shuffle_buffer", self.shuffle_buffer, "> 0")
        _check(self.data_threads > 0, "sft.data_threads", self.data_threads, "> 0")
        _check(self.validation_batch_size > 0, "sft.validation_batch_size", self.validation_batch_size, "> 0")
        _check(self.fsdp > 0, "sft.fsdp", self.fsdp, "> 0")
        _check(self.ordinal_sigma >= 0, "sft.ordinal_sigma", self.ordinal_sigma, ">= 0")


@dataclass(frozen=True)
class PretrainConfig:
    """`efm pretrain`: the towers trained on image-text data rendered from the table simulator
    (no actions), to start Stage 1 from (`model.init`), as the paper starts from PaLI.

    Each step renders `batch_size / questions_per_scene` random boards and asks "where is X"
    about the blocks and the effector; the answer is X's board position in the position tokens
    of `tokenizer.state_*` (the tokens the model reads the effector in). The validation boards
    are fixed by the seed and never trained on.
    """

    num_steps: int = 4000
    batch_size: int = 32
    questions_per_scene: int = 4
    objects_per_question: int = 1  # >1: "red moon blue cube arm" answered with each one's position, in order
    ordinal_sigma: float = 0.0  # as sft.ordinal_sigma: answers spread over neighbouring position bins
    # Grounding variants: also regress where each name token's query fires onto where the object
    # it names is in the image (squared error in 20ths of the image, this weight); 0: the
    # answers alone teach it
    grounding_weight: float = 0.0
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 500
    validation_scenes: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.num_steps > 0, "pretrain.num_steps", self.num_steps, "> 0")
        _check(self.questions_per_scene >= 1, "pretrain.questions_per_scene", self.questions_per_scene, ">= 1")
        _check(1 <= self.objects_per_question <= MAX_LOCATE_OBJECTS, "pretrain.objects_per_question",
               self.objects_per_question, f"in [1, {MAX_LOCATE_OBJECTS}]")
        _check(self.batch_size > 0 and self.batch_size % self.questions_per_scene == 0, "pretrain.batch_size",
               self.batch_size, "a positive multiple of questions_per_scene")
        _check(self.learning_rate > 0, "pretrain.learning_rate", self.learning_rate, "> 0")
        _check(self.eval_every > 0, "pretrain.eval_every", self.eval_every, "> 0")
        _check(self.validation_scenes > 0, "pretrain.validation_scenes", self.validation_scenes, "> 0")
        _check(self.grounding_weight >= 0, "pretrain.grounding_weight", self.grounding_weight, ">= 0")

    def as_sft(self) -> SftConfig:
        """The trainer's settings for this run (one trainer for both)."""
        return SftConfig(objectives=PRETRAIN_OBJECTIVES, batch_size=self.batch_size, num_steps=self.num_steps,
                         learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
                         eval_every=self.eval_every, checkpoint_every=self.eval_every, max_checkpoints=2,
                         validation_batch_size=self.batch_size * 4, ordinal_sigma=self.ordinal_sigma,
                         grounding_weight=self.grounding_weight, seed=self.seed)


@dataclass(frozen=True)
class SelectConfig:
    """Appendix B: policy and reward checkpoints are chosen separately.

    policy_rule: "best_bc" (lowest BC validation loss), "last", "step:N", or "past_best_bc:F",
    the last evaluated step at or before F (>= 1) times the best BC step: Stage 1 trained well
    past the best BC validation loss, as the paper's Aloha policy needed (there ~5-10K -> 100-300K
    steps); the last step when training ended sooner.
    """

    policy_rule: str = "best_bc"
    reward_rule: str = "best_steps_to_go"

    def __post_init__(self) -> None:
        ok = self.policy_rule in ("best_bc", "best_steps_to_go", "last") or (
            self.policy_rule.startswith("step:") and self.policy_rule[5:].isdigit()
        ) or (self.policy_rule.startswith("past_best_bc:") and _factor(self.policy_rule[13:]) >= 1)
        _check(ok, "select.policy_rule", self.policy_rule,
               "best_bc, best_steps_to_go, last, step:N or past_best_bc:F with F >= 1")
        _check(self.reward_rule in ("best_steps_to_go", "last"), "select.reward_rule",
               self.reward_rule, "best_steps_to_go or last")


def _factor(text: str) -> float:
    """A finite number, or nan (which fails every comparison)."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


@dataclass(frozen=True)
class RoleResources:
    """What one Ray actor of a fleet role asks of the cluster: CPUs, GPUs, and custom resources
    such as {"robot": 1} offered by the nodes wired to a robot station."""

    num_cpus: float = 0.0  # 0: the role packs onto any node (a 2-core machine holds a whole fleet)
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.num_cpus >= 0, "num_cpus", self.num_cpus, ">= 0")
        _check(self.num_gpus >= 0, "num_gpus", self.num_gpus, ">= 0")
        for k, v in self.resources.items():
            _check(isinstance(k, str) and float(v) >= 0, "resources", self.resources, "names to amounts >= 0")


FLEET_POLICY_INFERENCE = ("actor", "learner")


@dataclass(frozen=True)
class FleetConfig:
    """Stage 2 as a fleet of Ray actors (Appendix J); used when self_improve.runtime is "ray".

    policy_inference: "actor" is Version 2 (each actor runs the policy; weights broadcast after
    every round), "learner" is Version 1 (the learner's devices serve actions between updates).
    ray_address: "" starts Ray embedded on this machine; "ray://host:10001" or "auto" joins a
    running cluster. bind_host: where Ray listens (loopback unless configured); the Reverb
    server listens on every interface (Reverb 0.14 takes no host) and advertises
    `advertise_host` ("" = bind_host when embedded, this node's IP on a cluster).
    """

    policy_inference: Literal["actor", "learner"] = "actor"
    ray_address: str = ""
    bind_host: str = "127.0.0.1"
    advertise_host: str = ""
    actor: RoleResources = field(default_factory=RoleResources)
    service: RoleResources = field(default_factory=RoleResources)
    learner: RoleResources = field(default_factory=RoleResources)
    max_actor_restarts: int = 10  # per actor, over the run: a dead actor is restarted and rejoins
    service_retries: int = 20  # times an actor resends a steps-to-go request once a restarted service answers
    retry_delay_s: float = 0.5  # how often an actor asks whether the restarting service answers
    service_batch_wait_s: float = 0.002  # the service waits this long for other actors' requests
    console_port: int = 0  # the operator console on bind_host; 0: no console

    def __post_init__(self) -> None:
        _check(self.policy_inference in FLEET_POLICY_INFERENCE, "self_improve.fleet.policy_inference",
               self.policy_inference, f"one of {FLEET_POLICY_INFERENCE}")
        _check(self.max_actor_restarts >= 0, "self_improve.fleet.max_actor_restarts", self.max_actor_restarts, ">= 0")
        _check(self.service_retries >= 0, "self_improve.fleet.service_retries", self.service_retries, ">= 0")
        _check(self.retry_delay_s > 0, "self_improve.fleet.retry_delay_s", self.retry_delay_s, "> 0")
        _check(self.service_batch_wait_s >= 0, "self_improve.fleet.service_batch_wait_s",
               self.service_batch_wait_s, ">= 0")
        _check(0 <= self.console_port < 65536, "self_improve.fleet.console_port", self.console_port, "a port or 0")


@dataclass(frozen=True)
class SelfImproveConfig:
    """Stage 2, Algorithm 1 and Appendix C."""

    gamma: float = 0.9
    loss_scale: float = 0.05  # c in -c * R_t * log pi(a_t | o_t, g)
    batch_size: int = 64
    updates_per_round: int = 16  # N
    # Swept on pointmass from the same Stage-1 checkpoints (benchmarks/stage2_variants.py, README):
    # 1e-3 / 5e-4 / 2.5e-4 left the Self-Improved paths 1.25 / 1.22 / 1.24 x optimal (9 branches).
    learning_rate: float = 5e-4
    final_learning_rate: float = 5e-5  # cosine decay over the episode budget
    weight_decay: float = 1e-4
    success_threshold: float = 1.0  # s: success when d(o, g) <= s
    max_episodes: int = 4000  # practice budget (10% of the default dataset)
    max_rounds: int = 1000
    num_envs: int = 32  # vectorized environments per actor
    num_actors: int = 1
    runtime: Literal["single_process", "ray"] = "single_process"
    fleet: FleetConfig = field(default_factory=FleetConfig)  # the Ray runtime's roles
    freeze: tuple[str, ...] = ("vision_encoder",)  # module names kept frozen in Stage 2
    # Tabletop: the task families practised and evaluated (the paper's Block2Block); () = all.
    task_families: tuple[str, ...] = ()
    # Practice in other domains from the same Stage-1 checkpoints (Section 4.3.2: BananaTable).
    transfer_domains: tuple[str, ...] = ()
    # Added to r_t while ground-truth success holds at o_{t+1} (Section 4.1.3: Aloha's success,
    # the peg touching the socket's pin, is barely visible to the cameras). 0: off. It reads the
    # env's ground truth (a simulator's); a robot station reports none, so it adds nothing there.
    success_bonus: float = 0.0
    keep_best_round: bool = True  # success is not monotone (Section 6): keep the best round
    # Rounds pooled to score a round's policy (centred; 1 = that round alone). One round's ~70
    # episodes give a noisy mean length, and the best of ~60 noisy scores is optimistic.
    best_round_window: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 < self.gamma <= 1, "self_improve.gamma", self.gamma, "in (0, 1]")
        _check(self.loss_scale > 0, "self_improve.loss_scale", self.loss_scale, "> 0")
        _check(self.batch_size > 0, "self_improve.batch_size", self.batch_size, "> 0")
        _check(self.updates_per_round > 0, "self_improve.updates_per_round", self.updates_per_round, "> 0")
        _check(self.learning_rate > 0, "self_improve.learning_rate", self.learning_rate, "> 0")
        _check(0 < self.final_learning_rate <= self.learning_rate, "self_improve.final_learning_rate",
               self.final_learning_rate, "in (0, learning_rate]")
        _check(self.success_threshold >= 0, "self_improve.success_threshold", self.success_threshold, ">= 0")
        _check(self.success_bonus >= 0, "self_improve.success_bonus", self.success_bonus, ">= 0")
        _check(self.max_episodes > 0, "self_improve.max_episodes", self.max_episodes, "> 0")
        _check(self.max_rounds > 0, "self_improve.max_rounds", self.max_rounds, "> 0")
        _check(self.num_envs > 0, "self_improve.num_envs", self.num_envs, "> 0")
        _check(self.num_actors > 0, "self_improve.num_actors", self.num_actors, "> 0")
        _check(self.best_round_window >= 1 and self.best_round_window % 2 == 1, "self_improve.best_round_window",
               self.best_round_window, "odd and >= 1")
        _check(self.runtime in ("single_process", "ray"), "self_improve.runtime", self.runtime,
               "single_process or ray")
        for f in self.task_families:
            _check(f in TABLETOP_TASK_FAMILIES, "self_improve.task_families", self.task_families,
                   f"each in {TABLETOP_TASK_FAMILIES}")
        for d in self.transfer_domains:
            _check(d in DOMAINS, "self_improve.transfer_domains", self.transfer_domains, f"each in {DOMAINS}")

    @property
    def samples_per_round(self) -> int:
        return self.batch_size * self.updates_per_round

    def learning_rate_at(self, progress: float) -> float:
        """Cosine from learning_rate to final_learning_rate as the budget is spent (progress 0..1)."""
        w = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * w


@dataclass(frozen=True)
class EvalConfig:
    num_episodes: int = 200
    num_envs: int = 50
    plot_episodes: int = 12
    strip_frames: int = 8  # frames in the steps-to-go strips of camera domains (Figures 2-3)
    seed: int = 12345

    def __post_init__(self) -> None:
        _check(self.num_episodes > 0, "eval.num_episodes", self.num_episodes, "> 0")
        _check(self.num_envs > 0, "eval.num_envs", self.num_envs, "> 0")
        _check(self.plot_episodes >= 0, "eval.plot_episodes", self.plot_episodes, ">= 0")
        _check(self.strip_frames >= 1, "eval.strip_frames", self.strip_frames, ">= 1")


VALIDATION_RUNNERS = ("DirectRunner", "DataflowRunner")


@dataclass(frozen=True)
class ValidationConfig:
    """The data validation gate (TFDV) between the dataset and any training.

    accept: anomalies accepted as known drift (a new domain, a deliberate change), by name
    "<table>:<feature>:<TYPE>", a prefix such as "steps:action", a glob, or "*"; they are
    reported and recorded in the run but do not fail the step. runner: where TFDV's Beam
    pipeline runs (the DirectRunner in-process, or Dataflow in dataflow_project/region, which
    `efm submit` fills in from its --project/--region).
    """

    enabled: bool = True
    accept: tuple[str, ...] = ()
    runner: str = "DirectRunner"
    direct_num_workers: int = 1
    dataflow_project: str = ""
    dataflow_region: str = ""
    dataflow_temp_location: str = ""  # gs://...; default: the pipeline root's dataflow/ folder
    dataflow_max_workers: int = 0  # 0: Dataflow decides

    def __post_init__(self) -> None:
        _check(self.runner in VALIDATION_RUNNERS, "validation.runner", self.runner, f"one of {VALIDATION_RUNNERS}")
        _check(self.direct_num_workers >= 1, "validation.direct_num_workers", self.direct_num_workers, ">= 1")
        _check(self.dataflow_max_workers >= 0, "validation.dataflow_max_workers", self.dataflow_max_workers, ">= 0")
        _check(not self.dataflow_temp_location or self.dataflow_temp_location.startswith("gs://"),
               "validation.dataflow_temp_location", self.dataflow_temp_location, "gs://...")
        for a in self.accept:
            _check(isinstance(a, str) and a.strip() != "", "validation.accept", self.accept, "non-empty names")


@dataclass(frozen=True)
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    self_improve: SelfImproveConfig = field(default_factory=SelfImproveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        _check(self.tokenizer.steps_to_go_max >= self.env.max_episode_steps, "tokenizer.steps_to_go_max",
               self.tokenizer.steps_to_go_max, "covers env.max_episode_steps")
        reads_text = self.model.reads_text
        _check(reads_text == (self.tokenizer.text_tokens > 0), "tokenizer.text_tokens", self.tokenizer.text_tokens,
               f"> 0 exactly when the model reads text (model.variant={self.model.variant!r})")
        _check(self.model.reads_tokens or not self.tokenizer.state_key, "tokenizer.state_key",
               self.tokenizer.state_key, f"empty for model.variant={self.model.variant!r}: its MLP decoder reads "
               "every observation array already and no input tokens (a transformer decoder, mlp-tx-*, does)")
        _check(reads_text or "instruction" not in self.sft.objectives, "sft.objectives", self.sft.objectives,
               f"the instruction objective needs a vision-language model, not {self.model.variant!r}")
        _check(self.sft.batch_size % len(self.sft.objectives) == 0, "sft.batch_size", self.sft.batch_size,
               "divisible by the number of objectives")
        for rule in (self.select.policy_rule, self.select.reward_rule):
            _check(self.sft.patience == 0 or rule.startswith("best_"), "sft.patience", self.sft.patience,
                   f"0 with select rule {rule!r}: early stopping ends training at the best_* rules' minima, "
                   "and this rule reads steps past them")
        for d in self.self_improve.transfer_domains:
            _check(d != self.domain and (d in INSTRUCTION_GOAL_DOMAINS) == (self.domain in INSTRUCTION_GOAL_DOMAINS),
                   "self_improve.transfer_domains", self.self_improve.transfer_domains,
                   f"other domains with the same observations and goals as {self.domain!r}")
            if {self.domain, d} == {"tabletop", "bananatable"}:  # one camera: the policy sees the same frames
                own, other = getattr(self.env, self.domain), getattr(self.env, d)
                for view in ("camera", "image_height", "image_width"):
                    _check(getattr(other, view) == getattr(own, view), f"env.{d}.{view}", getattr(other, view),
                           f"{getattr(own, view)!r}, as env.{self.domain}.{view} (practice on {d} transfers from it)")

    @property
    def domain(self) -> str:
        return self.env.domain

    def replace(self, **sections: Any) -> RunConfig:
        return dataclasses.replace(self, **sections)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def overridden(self, changes: dict[str, Any]) -> RunConfig:
        """This config with a partial one merged over it (nested objects merged field by field;
        an unknown field is an error naming it), validated."""
        merged = json.loads(self.to_json())
        _merge(merged, changes, "")
        return RunConfig.from_json(json.dumps(merged))

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid config: not JSON ({e})") from e
        return _from_dict(cls, raw, "")

    def flat(self, sections: Sequence[str] | None = None) -> dict[str, Any]:
        """Dotted keys, for MLflow params: of `sections` only, if given."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict[str, Any]) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = v

        raw = dataclasses.asdict(self)
        walk("", raw if sections is None else {k: raw[k] for k in sections})
        return out


# The sections of the config each step reads (efm.stages, efm.data, efm.envs, efm.sft). The
# pipeline hands these steps `stage_view`, not the whole config, so that a run which changes only
# what a step does not read reuses it from the cache: the data steps survive changes to
# training, practice, evaluation or where the model starts from; Stage 1 (pretrain, sft,
# select) survives changes to practice and evaluation. A step listed here must read nothing
# else: what it reads of another section is that section's default, not the run's.
DATA_SECTIONS = ("env", "data", "tokenizer")
STAGE1_SECTIONS = (*DATA_SECTIONS, "model", "pretrain", "sft", "select")
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "dataset": DATA_SECTIONS, "subsample": DATA_SECTIONS, "validate": (*DATA_SECTIONS, "validation"),
    "pretrain": ("env", "tokenizer", "model", "pretrain"), "sft": STAGE1_SECTIONS, "select": STAGE1_SECTIONS}


def stage_view(cfg: RunConfig, stage: str) -> RunConfig:
    """The config as step `stage` reads it: its STAGE_SECTIONS as given, data.fractions (1.0,)
    (each branch passes its own fraction) and every other section at its defaults. A data step
    reads no model: it gets the first variant that reads text and input tokens exactly when the
    config's does, as the rules between tokenizer and model ask."""
    keep = STAGE_SECTIONS[stage]
    kept = {k: getattr(cfg, k) for k in keep}
    if "model" not in keep:
        def reads(m: ModelConfig) -> tuple[bool, bool]:
            return m.reads_text, m.reads_tokens

        kept["model"] = ModelConfig(variant=next(n for n in MODEL_VARIANTS
                                                 if reads(ModelConfig(variant=n)) == reads(cfg.model)))
    view = RunConfig(**kept)
    return view.replace(data=dataclasses.replace(view.data, fractions=(1.0,)))


def _merge(into: dict, override: dict, path: str) -> None:
    for k, v in override.items():
        if k not in into:
            raise ValueError(f"invalid config: unknown field {path}{k}")
        if isinstance(v, dict) and isinstance(into[k], dict) and into[k]:  # {}: a mapping field, e.g. resources
            _merge(into[k], v, f"{path}{k}.")
        else:
            into[k] = v


def _from_dict(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"invalid config: {path.rstrip('.') or 'config'} must be an object, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"invalid config: unknown field(s) {sorted(unknown)} in {path or 'config'}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{path}{name}.")
        else:
            kwargs[name] = _typed(hint, value, f"{path}{name}")
    return cls(**kwargs)


def _typed(hint: Any, value: Any, path: str) -> Any:
    """`value` as a field of type `hint` holds it, or a ValueError naming the field: a float
    where a count is due (or a string where a list is) fails here, not hours into a run."""
    def bad(expected: str) -> ValueError:
        return ValueError(f"invalid config: {path} must be {expected}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise bad("an integer")
        return int(value)  # 1e3 in JSON is a float
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is Literal:
        if value not in args:
            raise bad(f"one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad("a list")
        if args[-1] is Ellipsis:
            return tuple(_typed(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(_typed(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("an object")
        return {_typed(args[0], k, f"{path} key"): _typed(args[1], v, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"config field {path}: no rule for type {hint!r}")


INSTRUCTION_GOAL_DOMAINS = ("tabletop", "bananatable")  # the goal is the instruction text alone
# The effector's workspace on the table domains, (x, y) low and high in metres (envs.tabletop
# keeps the geometry; config cannot import it, a test checks they agree). 32 bins: 1.4-1.9 cm.
TABLE_WORKSPACE = ((0.15, -0.3048), (0.6, 0.3048))
# The table's text tokenizer words: `efm data train-tokenizer` on the default 4000-episode table
# dataset (every word seen >= 5 times; at most 12 tokens per instruction). BananaTable's new
# words (banana, table, shove) fall back to bytes: at most 25 tokens, hence 32 text tokens.
TABLE_WORDS = (
    "the", "to", "yellow", "cube", "pentagon", "red", "star", "green", "blue", "moon", "move", "push", "slide",
    "right", "left", "nudge", "and", "board", "of", "bottom", "top", "corner", "diagonally", "close", "near",
    "next", "towards", "downwards", "down", "up", "upwards", "side", "then", "edge", "a", "center", "slightly",
    "upper", "bit", "lower", "little", "middle")


def check_trainable(cfg: RunConfig) -> None:
    """Refuses, before any work, what the model cannot learn: a domain whose goal is only an
    instruction needs a model that reads text (and camera frames); starting from pretraining
    needs a config that can pretrain."""
    _check(cfg.domain not in INSTRUCTION_GOAL_DOMAINS or cfg.model.reads_text, "model.variant", cfg.model.variant,
           f"reads no text, and the goal in {cfg.domain!r} is an instruction: use a vision-language variant "
           f"({sorted(k for k, v in MODEL_VARIANTS.items() if isinstance(v, TransformerVariant))})")
    if cfg.sft.grounding_weight > 0:
        _check(cfg.domain == "tabletop", "sft.grounding_weight", cfg.sft.grounding_weight,
               f"0 on {cfg.domain!r}: Stage-1 grounding needs the table's block positions and instructions")
        _check(cfg.model.grounded, "sft.grounding_weight", cfg.sft.grounding_weight,
               f"0 for model.variant={cfg.model.variant!r}, which has no grounded text")
    if cfg.model.init == "pretrain":
        check_pretrainable(cfg)


PRETRAIN_DOMAINS = ("tabletop", "bananatable")  # pretraining renders the table's boards


def check_pretrainable(cfg: RunConfig) -> None:
    """Fails before any work unless the config's model can be pretrained on table questions."""
    _check(cfg.model.reads_text, "model.variant", cfg.model.variant,
           "reads no text, and pretraining asks questions in text: use a vision-language variant")
    _check(cfg.domain in PRETRAIN_DOMAINS, "domain", cfg.domain,
           f"one of {PRETRAIN_DOMAINS} to pretrain (pretraining renders table boards; model.init='pretrain' needs it)")
    _check(cfg.pretrain.grounding_weight == 0 or cfg.model.grounded,
           "pretrain.grounding_weight", cfg.pretrain.grounding_weight,
           f"0 for model.variant={cfg.model.variant!r}, which has no grounded text")


def practice_config(cfg: RunConfig, domain: str = "") -> RunConfig:
    """The config Self-Improvement and its evaluation run with: in `domain` ("" = the data's
    domain, else one of self_improve.transfer_domains) and on the task families practised."""
    if domain and domain != cfg.domain:
        _check(domain in cfg.self_improve.transfer_domains, "practice domain", domain,
               f"one of self_improve.transfer_domains {cfg.self_improve.transfer_domains}")
        cfg = cfg.replace(env=dataclasses.replace(cfg.env, domain=domain),
                          self_improve=dataclasses.replace(cfg.self_improve, transfer_domains=()))
    families = cfg.self_improve.task_families
    if cfg.domain == "tabletop" and families:
        cfg = cfg.replace(env=dataclasses.replace(
            cfg.env, tabletop=dataclasses.replace(cfg.env.tabletop, task_families=families)))
    return cfg


def debug_config(domain: str = "pointmass") -> RunConfig:
    """A seconds-long run: tiny data, tiny model, a few updates. For tests."""
    base = default_config(domain)
    if domain == "aloha-insertion":
        return _aloha_debug_config(base)
    return base.replace(
        data=DataConfig(num_episodes=60, validation_episodes=10, fractions=(0.5,), seed=0),
        # from scratch: a test adds the pretrain step with model.init="pretrain" (a few steps below)
        model=ModelConfig(variant="vl-tiny" if base.model.reads_text else "mlp-tiny"),
        pretrain=PretrainConfig(num_steps=4, batch_size=8, questions_per_scene=1, objects_per_question=2,
                                eval_every=2, warmup_steps=1, validation_scenes=4),
        sft=dataclasses.replace(base.sft, batch_size=16 * len(base.sft.objectives), num_steps=40, eval_every=20, checkpoint_every=20,
                                warmup_steps=5, grounding_weight=0.0),  # vl-tiny has no grounded text
        self_improve=dataclasses.replace(base.self_improve, batch_size=16, updates_per_round=2,
                                         max_episodes=12, num_envs=4),
        eval=EvalConfig(num_episodes=8, num_envs=4, plot_episodes=3),
    )


def _aloha_debug_config(base: RunConfig) -> RunConfig:
    """Aloha's debug run, smaller than the others': its steps are 250 MuJoCo steps and its model
    decodes 70 action tokens, so what costs is episodes. Its demonstrations succeed within ~20
    chunks (58 at most, benchmarks/results/aloha_env.json): 40 keeps an untrained policy's
    practice and evaluation episodes short. 12 demonstrations (~14 simulated) step in this
    process (fewer than 2 x MIN_ENVS_PER_WORKER envs: no worker processes to start); 10 SFT
    steps with a validation every 5 leave Appendix B's past_best_bc:20 the last step; Stage 2
    runs two rounds of two episodes, and the evaluation two episodes per policy (one strip each)."""
    return base.replace(
        env=dataclasses.replace(base.env, max_episode_steps=40),
        data=DataConfig(num_episodes=12, validation_episodes=2, fractions=(0.5,), seed=0),
        model=ModelConfig(variant="mlp-tx-tiny"),
        sft=dataclasses.replace(base.sft, batch_size=16 * len(base.sft.objectives), num_steps=10, eval_every=5,
                                checkpoint_every=5, warmup_steps=2),
        self_improve=dataclasses.replace(base.self_improve, batch_size=16, updates_per_round=2,
                                         max_episodes=4, num_envs=2),
        eval=EvalConfig(num_episodes=2, num_envs=2, plot_episodes=1),
    )


# Demonstration datasets that keep only successful episodes (the paper's Aloha data, D.3).
SUCCESS_ONLY_DOMAINS = ("aloha-insertion",)


TABLE_VARIANT = "vl-cpu-gkp2"  # the table's default model (see default_config)


def default_config(domain: str = "pointmass") -> RunConfig:
    _check(domain in DOMAINS, "domain", domain, f"one of {DOMAINS}")
    if domain == "aloha-insertion":
        # Appendix D.3 / E.2: one step is a chunk of 5 joint targets at 10 Hz (70 actions in
        # [-1, 1], 256 uniform bins each), steps-to-go 0..300 one token per value, a generous
        # 300-chunk limit (1,500 targets, as the paper). Datasets scaled down 10x from the
        # paper's 5K / 10K / 15K successful episodes: thirds of 1,500 plus 50 for validation.
        # Section 4.1.3's differences: the policy starts from Stage 1 trained well past its best
        # BC validation loss (Appendix B; 20x, the last step on shorter runs), and a small reward
        # bonus (half a step's progress) while the peg touches the pin, which the cameras barely see.
        # State mode's model: the observation MLP and a transformer decoder, which also reads the
        # 14 joints as input tokens (E.2), the action tokens of the same bins: a chunk's targets
        # nearly copy them (README, Aloha: the MLP decoder cannot learn that copy).
        return RunConfig(
            env=EnvConfig(domain=domain, max_episode_steps=300),
            data=DataConfig(num_episodes=1550, validation_episodes=50, fractions=(1 / 3, 2 / 3, 1.0)),
            tokenizer=TokenizerConfig(action_scheme="uniform", action_dim=70, uniform_bins=256,
                                      steps_to_go_bins=301, steps_to_go_max=301.0, state_key=ALOHA_JOINTS,
                                      state_low=(-1.0,) * 14, state_high=(1.0,) * 14, state_bins=256,
                                      state_shares_action_tokens=True),
            model=ModelConfig(variant="mlp-tx-small"),
            select=SelectConfig(policy_rule="past_best_bc:20"),
            self_improve=SelfImproveConfig(success_bonus=0.5),
        )
    if domain not in INSTRUCTION_GOAL_DOMAINS:
        return RunConfig(env=EnvConfig(domain=domain))
    # The table domains (Appendix D.1/D.2, E.1): camera frames + instruction in, the paper's
    # 50 steps-to-go bins over 0..100, LanguageTable's auxiliary instruction objective.
    # Sized for the 2-core CPU benchmarks (hours, not days); accelerators take larger variants.
    # LanguageTable starts Stage 1 from the pipeline's own pretraining (the paper starts from
    # PaLI): a grounded-text variant, Gaussian targets over ordered bins, the question's names
    # supervised onto their objects in pretraining and the instruction's block names onto their
    # blocks in Stage 1 (README, "Supervised grounding finds the named blocks" and after: the
    # best start measured, BC 4.98 nats at 4,000 SFT steps against 5.75 input-blind, 10 of 50
    # Block2Block tasks).
    table = domain == "tabletop"
    return RunConfig(
        env=EnvConfig(domain=domain),
        data=DataConfig(num_episodes=4000, validation_episodes=100),
        tokenizer=TokenizerConfig(steps_to_go_bins=50, text_tokens=32, text_words=TABLE_WORDS,
                                  state_key="effector_translation",
                                  state_low=TABLE_WORKSPACE[0], state_high=TABLE_WORKSPACE[1], state_bins=32),
        model=ModelConfig(variant=TABLE_VARIANT, init="pretrain") if table else ModelConfig(variant="vl-cpu"),
        sft=SftConfig(objectives=STAGE1_OBJECTIVES, batch_size=48, num_steps=4000 if table else 2000, warmup_steps=100,
                      eval_every=250, checkpoint_every=250, patience=4, shuffle_buffer=8000, validation_batch_size=256,
                      ordinal_sigma=0.1 if table else 0.0, grounding_weight=1.0 if table else 0.0),
        pretrain=PretrainConfig(num_steps=3000, objects_per_question=5, questions_per_scene=1, ordinal_sigma=0.1,
                                grounding_weight=1.0 if table else 0.0, eval_every=250),
        self_improve=SelfImproveConfig(
            success_threshold=1.5,  # 2-step bins: d(o, g) <= 1.5 needs most mass on the last bin
            max_episodes=400, num_envs=16, learning_rate=3e-4, final_learning_rate=3e-5,
            task_families=("block2block",) if table else (), transfer_domains=("bananatable",) if table else ()),
        eval=EvalConfig(num_episodes=100, num_envs=25, plot_episodes=6),
    )


# Aloha's observation keys and instruction words (envs.aloha.env keeps the keys; config cannot
# import it, a test checks they agree). The one instruction is 8 word tokens.
ALOHA_JOINTS = "joints"
ALOHA_CAMERAS = ("rgb", "rgb_wrist")  # top over angle, left wrist over right wrist (D.3)
ALOHA_WORDS = ("insert", "the", "red", "peg", "into", "blue", "socket")


def aloha_camera_config(base: RunConfig | None = None, variant: str = "vl-aloha-tiny") -> RunConfig:
    """Aloha as the paper feeds it (D.3, E.2) to a vision-language variant: the two stacked
    camera images, the instruction, and the 14 joints as input tokens after it (state mode's:
    256 bins over their normalised range [-1, 1], the action tokens'). The env still records the
    peg and socket poses (the scripted demonstrator reads them, as the table's reads its blocks);
    the model never does (`data/features.py`). `base`: an aloha-insertion config (default: its
    defaults, state mode). One deviation: each stacked image comes as its current and previous
    frame, the table's pair (D.1) kept for every domain by the one input pipeline, where D.3
    gives PaLI the two current images only; it doubles the image tokens."""
    base = default_config("aloha-insertion") if base is None else base
    _check(base.domain == "aloha-insertion", "env.domain", base.domain, "aloha-insertion")
    _check(variant in MODEL_VARIANTS and isinstance(MODEL_VARIANTS[variant], TransformerVariant), "model.variant",
           variant, "a vision-language variant")
    aloha = dataclasses.replace(base.env.aloha, render_images=True)
    return base.replace(
        env=dataclasses.replace(base.env, aloha=aloha),
        tokenizer=dataclasses.replace(base.tokenizer, text_tokens=8, text_words=ALOHA_WORDS, cameras=ALOHA_CAMERAS),
        model=dataclasses.replace(base.model, variant=variant))
