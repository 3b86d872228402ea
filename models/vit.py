"""The image tower: a ViT with big_vision's parameter names (`models/vit.py`, unscanned).

Names follow big_vision so a PaliGemma-style checkpoint's `img/...` tree maps onto this one:
embedding (patch conv), pos_embedding, Transformer/encoderblock_<i>/{LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}, Transformer/encoder_norm, and head,
which projects image tokens to the text tower's width. Optionally (`keypoints`), spatial-softmax
keypoint tokens after the patch tokens (see `spatial_keypoints`), and (`grounding`) where each
text token's query fires in the frames, added to the text tokens.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


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
    def __call__(self, image: jax.Array, text: jax.Array | None = None,
                 text_valid: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
        """With `grounding`, `text` [B, L, D] (embeddings of the text tokens of the B samples
        whose F frames each are `image`'s B*F) and `text_valid` [B, L]: also returns, per text
        token, where its query fires in each of its sample's frames, as [B, L, out_width] to add
        to the token, and as an image position [B*F, L, 2] (row, column in [-1, 1], for the
        pretraining loss that supervises it, `sft.grounding_weight`)."""
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
            return x
        if text is None or text_valid is None:
            raise ValueError("a grounding ViT reads the text: pass text and text_valid")
        return x, *self._grounding(features, text, text_valid)

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

    def _grounding(self, features: jax.Array, text: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Text-conditioned keypoints (as RT-1 conditions its image tower on the instruction with
        # FiLM): each text token, read with its neighbours ("red" + "moon"), makes a query over
        # the stem's features; where it fires is added to that token. A named block is then
        # found by a learned query, instead of by one of K fixed detectors the answer must pick.
        bf, c = features.shape[0], features.shape[-1]
        b, length, _ = text.shape
        frames = bf // b
        query = nn.Conv(c, (3,), padding="SAME", dtype=self.dtype, name="grounding_query")(text)  # [B, L, C]
        # Normalised: text embeddings start at 1/sqrt(width), and a query that small leaves
        # every heat map flat. With the 1/sqrt(C) below the heat maps start as smooth as those of
        # named_block_probe.py, which finds named blocks by regression from step 300.
        query = nn.LayerNorm(dtype=self.dtype, name="grounding_norm")(query)
        query = jnp.repeat(query, frames, axis=0)  # [B*F, L, C]: a sample's query for each of its frames
        heat = jnp.einsum("bhwc,blc->bhwl", features, query) / c**0.5
        rc = spatial_keypoints(heat)  # [B*F, L, 2], (row, column) in [-1, 1]
        xy = fourier_features(rc, 4)  # [B*F, L, 18]
        # explicit sizes: a text may have no tokens (the instruction objective hides it)
        f = xy.shape[-1]
        xy = xy.reshape(b, frames, length, f).transpose(0, 2, 1, 3).reshape(b, length, frames * f).astype(self.dtype)
        where = nn.Dense(self.out_width, dtype=self.dtype, name="grounding_out")(xy)
        return where * valid[..., None].astype(self.dtype), rc
