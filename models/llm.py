"""The text tower: a decoder-only transformer with Gemma's parameter names, and a KV cache.

Names follow big_vision's Gemma (`models/ppp/gemma.py`) so a checkpoint's `llm/...` tree maps
onto this one: embedder/input_embedding, layers_<i>/{pre_attention_norm, attn/{q_einsum,
kv_einsum, attn_vec_einsum}, pre_ffw_norm, mlp/{gating_einsum, linear}}, final_norm. RMSNorm,
rotary positions, gated GELU, logits tied to the input embedding. Keys and values have as many
heads as queries: Gemma-2B's one shared key/value head (multi-query attention) does not fit
`kv_einsum`, so from PaliGemma's release only the image tower loads (the loader names the
mismatched shapes); a `num_kv_heads` setting would lift that.

Attention takes an explicit boolean mask [B, T, S] (prefix-LM masks come from the caller) and
an optional cache of keys and values [B, S, H, D]: the new tokens' keys and values are written
at `cache_index` and the queries attend over the whole cache, so a prefix is encoded once and
each output token after it costs one token's work.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
LayerCache = tuple[jax.Array, jax.Array]  # keys, values: [B, S, H, D]
NEG_INF = -2.3819763e38  # what Gemma uses; finite, so a fully masked row gives no NaN


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x.astype(jnp.float32) * jax.lax.rsqrt(var + 1e-6)
        return (normed * (1 + scale)).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: int = 10_000) -> jax.Array:
    """Rotary position embedding. x [B, T, H, D], positions [B, T]."""
    half = x.shape[-1] // 2
    freq = max_wavelength ** (2 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
    angle = positions[..., None, None].astype(jnp.float32) / freq  # [B, T, 1, half]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    a, b = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(x.dtype)


class Einsum(nn.Module):
    shape: tuple[int, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param("w", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=tuple(
            range(len(self.shape) - 2))), self.shape)
        return jnp.einsum(eqn, x, w.astype(self.dtype))


class Attention(nn.Module):
    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: LayerCache | None,
                 cache_index: jax.Array | int) -> tuple[jax.Array, LayerCache | None]:
        d = x.shape[-1]
        q = Einsum((self.num_heads, d, self.head_dim), self.dtype, name="q_einsum")("BTD,NDH->BTNH", x)
        k, v = Einsum((2, self.num_heads, d, self.head_dim), self.dtype, name="kv_einsum")("BSD,CKDH->CBSKH", x)
        q = apply_rope(q, positions) * self.head_dim**-0.5
        k = apply_rope(k, positions)
        if cache is not None:
            idx = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), idx)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), idx)
            cache = (k, v)
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, k).astype(jnp.float32)
        logits = jnp.where(mask[:, None], logits, NEG_INF)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
        return Einsum((self.num_heads, self.head_dim, d), self.dtype, name="attn_vec_einsum")("BTNH,NHD->BTD", out), cache


class FeedForward(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        gate, up = Einsum((2, d, self.hidden), self.dtype, name="gating_einsum")("BTD,CDF->CBTF", x)
        return Einsum((self.hidden, d), self.dtype, name="linear")("BTF,FD->BTD", nn.gelu(gate) * up)


class Block(nn.Module):
    num_heads: int
    head_dim: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: LayerCache | None,
                 cache_index: jax.Array | int) -> tuple[jax.Array, LayerCache | None]:
        y, cache = Attention(self.num_heads, self.head_dim, self.dtype, name="attn")(
            RMSNorm(name="pre_attention_norm")(x), positions, mask, cache, cache_index)
        x = x + y
        return x + FeedForward(self.mlp_dim, self.dtype, name="mlp")(RMSNorm(name="pre_ffw_norm")(x)), cache


class LLM(nn.Module):
    """Embeddings in, hidden states out; `embed` and `logits` share one table."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.embedder = Embedder(self.vocab_size, self.width, self.dtype)
        self.layers = [Block(self.num_heads, self.head_dim, self.mlp_dim, self.dtype)  # layers_<i>
                       for _ in range(self.depth)]
        self.final_norm = RMSNorm()

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embedder.encode(tokens)

    def logits(self, h: jax.Array) -> jax.Array:
        return self.embedder.decode(h)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
                 cache: list[LayerCache] | None = None, cache_index: jax.Array | int = 0,
                 ) -> tuple[jax.Array, list[LayerCache] | None]:
        """x [B, T, D] at `positions` [B, T]; mask [B, T, S] over the keys (S = T without a cache)."""
        x = x.astype(self.dtype)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, mask, None if cache is None else cache[i], cache_index)
            new_cache.append(c)
        return self.final_norm(x), (new_cache if cache is not None else None)


class Embedder(nn.Module):
    vocab_size: int
    width: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.input_embedding = self.param("input_embedding", nn.initializers.normal(stddev=self.width**-0.5),
                                          (self.vocab_size, self.width))

    def encode(self, tokens: jax.Array) -> jax.Array:
        return (self.input_embedding[tokens] * self.width**0.5).astype(self.dtype)

    def decode(self, h: jax.Array) -> jax.Array:
        return jnp.einsum("...D,VD->...V", h.astype(jnp.float32), self.input_embedding)
