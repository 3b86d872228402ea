"""The image tower: a ViT with big_vision's parameter names (`models/vit.py`, unscanned).

Names follow big_vision so a PaliGemma-style checkpoint's `img/...` tree maps onto this one:
embedding (patch conv), pos_embedding, Transformer/encoderblock_<i>/{LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}, Transformer/encoder_norm, and head,
which projects image tokens to the text tower's width.
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


class ViT(nn.Module):
    """uint8 frames [B, H, W, C] -> image tokens [B, N, out_width], one per `patch` pixels."""

    patch: tuple[int, int]
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    out_width: int
    dtype: Dtype = jnp.float32
    stem: tuple[int, ...] = ()  # channels of stride-2 3x3 convs before the patch embedding

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = image.astype(self.dtype) / 127.5 - 1.0  # big_vision's value range
        for i, channels in enumerate(self.stem):
            x = nn.gelu(nn.Conv(channels, (3, 3), strides=2, padding="SAME", dtype=self.dtype, name=f"stem_{i}")(x))
        down = 2 ** len(self.stem)
        patch = (self.patch[0] // down, self.patch[1] // down)
        x = nn.Conv(self.width, patch, strides=patch, padding="VALID", dtype=self.dtype, name="embedding")(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / c**0.5), (1, h * w, c), jnp.float32)
        x = x + pos.astype(self.dtype)
        x = Encoder(self.depth, self.mlp_dim, self.num_heads, self.dtype, name="Transformer")(x)
        return nn.Dense(self.out_width, dtype=self.dtype, name="head")(x)
