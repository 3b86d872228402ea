"""The image tower: a ViT with big_vision's parameter names (`models/vit.py`, unscanned).

Names follow big_vision so a PaliGemma-style checkpoint's `img/...` tree maps onto this one:
embedding (patch conv), pos_embedding, Transformer/encoderblock_<i>/{LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}, Transformer/encoder_norm, and head,
which projects image tokens to the text tower's width. Optionally (`keypoints`), spatial-softmax
keypoint tokens after the patch tokens (see `spatial_keypoints`), and (`grounding`) where each
text token's query fires in the frames, added to the text tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class FrameCodes(NamedTuple):
    """What the tower computes for each frame on its own: the frame's image tokens [M, N (+
    keypoints), out_width] and, for grounding, where each token of its sample's text fires in it
    [M, L, 2] (None otherwise). An actor's previous frame is the one it encoded a control step
    earlier, for the same instruction, so acting keeps these (`models.frame_cache`) instead of
    running the tower over it again; what mixes a sample's frames is all that is left."""

    tokens: jax.Array
    where: jax.Array | None


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x))
        return nn.Dense(d, dtype=self.dtype, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
    mlp_dim: int
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            name="MultiHeadDotProductAttention_0")(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_1")(x)
        return x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.dtype, name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


def spatial_keypoints(features: jax.Array) -> jax.Array:
    """Spatial softmax (Levine et al. 2016): each channel's softmax over the pixels, and the
    expected (row, column) under it, the image spanning [-1, 1] (pixel centres at
    +-(1 - 1/n), as `envs.tabletop.image_position` gives them). [B, H, W, K] -> [B, K, 2]"""
    b, h, w, k = features.shape
    attention = jax.nn.softmax(features.reshape(b, h * w, k).astype(jnp.float32), axis=1)
    rows, cols = jnp.meshgrid(jnp.linspace(1 / h - 1, 1 - 1 / h, h), jnp.linspace(1 / w - 1, 1 - 1 / w, w),
                              indexing="ij")
    grid = jnp.stack([rows.ravel(), cols.ravel()], axis=-1)  # [H*W, 2]
    return jnp.einsum("bnk,nd->bkd", attention, grid)


def fourier_features(xy: jax.Array, frequencies: int) -> jax.Array:
    """[..., 2] in [-1, 1] -> [..., 2 + 4 * frequencies]: the coordinates and their sines and
    cosines at octave frequencies, from which a bin of the position is one layer away."""
    scaled = xy[..., None] * (jnp.pi * 2.0 ** jnp.arange(frequencies))  # [..., 2, F]
    return jnp.concatenate([xy, *(f(scaled).reshape(*xy.shape[:-1], 2 * frequencies) for f in (jnp.sin, jnp.cos))],
                           axis=-1)


class ViT(nn.Module):
    """uint8 frames [B, H, W, C] -> image tokens [B, N (+ keypoints), out_width], one per `patch`
    pixels, then one per keypoint."""

    patch: tuple[int, int]
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    out_width: int
    dtype: Dtype = jnp.float32
    stem: tuple[int, ...] = ()  # channels of stride-2 3x3 convs before the patch embedding
    keypoints: int = 0  # spatial-softmax keypoint tokens read off the stem's features
    grounding: bool = False  # where each text token's query fires (`text` given to __call__)
    feature_convs: int = 0  # stride-1 3x3 convs on the stem's features for keypoints and grounding

    @nn.compact
    def __call__(self, image: jax.Array | None, text: jax.Array | None = None, text_valid: jax.Array | None = None,
                 codes: FrameCodes | None = None, encode_only: bool = False,
                 ) -> jax.Array | FrameCodes | tuple[jax.Array, jax.Array, jax.Array]:
        """With `grounding`, `text` [B, L, D] (embeddings of the text tokens of the B samples
        whose F frames each are `image`'s B*F) and `text_valid` [B, L]: also returns, per text
        token, where its query fires in each of its sample's frames, as [B, L, out_width] to add
        to the token, and as an image position [B*F, L, 2] (row, column in [-1, 1], for the
        pretraining loss that supervises it, `sft.grounding_weight`).

        `encode_only`: each frame's own part (`FrameCodes`; `text_valid` not read). `codes`:
        that part, done earlier for these frames (`image` and `text` are then not read)."""
        if codes is None:
            codes = self._encode(image, text)
        if encode_only:
            return codes
        if not self.grounding:
            return codes.tokens
        if text_valid is None or codes.where is None:
            raise ValueError("a grounding ViT reads the text: pass text and text_valid")
        return codes.tokens, self._mix_where(codes.where, text_valid), codes.where

    def _encode(self, image: jax.Array, text: jax.Array | None) -> FrameCodes:
        x = image.astype(self.dtype) / 127.5 - 1.0  # big_vision's value range
        for i, channels in enumerate(self.stem):
            x = nn.gelu(nn.Conv(channels, (3, 3), strides=2, padding="SAME", dtype=self.dtype, name=f"stem_{i}")(x))
        features = x
        for i in range(self.feature_convs):
            features = nn.gelu(nn.Conv(x.shape[-1], (3, 3), padding="SAME", dtype=self.dtype,
                                       name=f"feature_{i}")(features))
        down = 2 ** len(self.stem)
        patch = (self.patch[0] // down, self.patch[1] // down)
        x = nn.Conv(self.width, patch, strides=patch, padding="VALID", dtype=self.dtype, name="embedding")(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / c**0.5), (1, h * w, c), jnp.float32)
        x = x + pos.astype(self.dtype)
        x = Encoder(self.depth, self.mlp_dim, self.num_heads, self.dtype, name="Transformer")(x)
        x = nn.Dense(self.out_width, dtype=self.dtype, name="head")(x)
        if self.keypoints:
            x = jnp.concatenate([x, self._keypoints(features)], axis=1)
        if not self.grounding:
            return FrameCodes(x, None)
        if text is None:
            raise ValueError("a grounding ViT reads the text: pass text and text_valid")
        return FrameCodes(x, self._locate(features, text))

    def _keypoints(self, features: jax.Array) -> jax.Array:
        # Where each of K learned detectors fires, as tokens: an object's position is then read
        # off one token instead of being assembled from patches by attention, which a small
        # model trained from scratch finds only after thousands of steps (README, Results).
        # Each keypoint has its own projection: even attention spread evenly over the tokens
        # (as at initialisation) then reads every detector's position apart, not their sum.
        heat = nn.Conv(self.keypoints, (3, 3), padding="SAME", dtype=self.dtype, name="keypoint_conv")(features)
        xy = fourier_features(spatial_keypoints(heat), 4).astype(self.dtype)  # [B, K, F]
        k, f = xy.shape[1:]
        kernel = self.param("keypoint_kernel", nn.initializers.lecun_normal(batch_axis=(0,)), (k, f, self.out_width),
                            jnp.float32)
        bias = self.param("keypoint_bias", nn.initializers.normal(stddev=1 / self.out_width**0.5),
                          (k, self.out_width), jnp.float32)
        return jnp.einsum("bkf,kfd->bkd", xy, kernel.astype(self.dtype)) + bias.astype(self.dtype)

    def _locate(self, features: jax.Array, text: jax.Array) -> jax.Array:
        # Text-conditioned keypoints (as RT-1 conditions its image tower on the instruction with
        # FiLM): each text token, read with its neighbours ("red" + "moon"), makes a query over
        # the stem's features; where it fires (row, column in [-1, 1]) is later added to that
        # token (`_mix_where`). A named block is then found by a learned query, instead of by one
        # of K fixed detectors the answer must pick. features [B*F, h, w, C], text [B, L, D] ->
        # [B*F, L, 2]
        c = features.shape[-1]
        frames = features.shape[0] // text.shape[0]
        query = nn.Conv(c, (3,), padding="SAME", dtype=self.dtype, name="grounding_query")(text)  # [B, L, C]
        # Normalised: text embeddings start at 1/sqrt(width), and a query that small leaves
        # every heat map flat. With the 1/sqrt(C) below the heat maps start as smooth as those of
        # named_block_probe.py, which finds named blocks by regression from step 300.
        query = nn.LayerNorm(dtype=self.dtype, name="grounding_norm")(query)
        query = jnp.repeat(query, frames, axis=0)  # [B*F, L, C]: a sample's query for each of its frames
        heat = jnp.einsum("bhwc,blc->bhwl", features, query) / c**0.5
        return spatial_keypoints(heat)

    def _mix_where(self, rc: jax.Array, valid: jax.Array) -> jax.Array:
        # Where each token fires in each of its sample's frames, one vector per token to add to it.
        # rc [B*F, L, 2], valid [B, L] -> [B, L, out_width]
        b, length = valid.shape
        frames = rc.shape[0] // b
        xy = fourier_features(rc, 4)  # [B*F, L, 18]
        # explicit sizes: a text may have no tokens (the instruction objective hides it)
        f = xy.shape[-1]
        xy = xy.reshape(b, frames, length, f).transpose(0, 2, 1, 3).reshape(b, length, frames * f).astype(self.dtype)
        where = nn.Dense(self.out_width, dtype=self.dtype, name="grounding_out")(xy)
        return where * valid[..., None].astype(self.dtype)
