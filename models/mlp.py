"""The state-based EFMs (pointmass, Section 3; Aloha's state mode): an observation MLP and a token decoder.

They read state vectors and goal arrays (`observation/<key>`, `goal/<key>`); uint8 arrays are
camera images, read by a small conv net. Decoding is autoregressive. `MlpEFM`'s decoder is an
MLP: output position k sees the tokens before it through a zero-padded copy of them.
`StateTransformerEFM`'s is a causal transformer after a few context tokens made from the
observation (`prefix_lm.PrefixLM`), for long outputs such as Aloha's 70-token chunks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from efm.config import OBJECTIVES, STAGE1_OBJECTIVES, MlpVariant
from efm.models.llm import LLM
from efm.models.prefix_lm import STATE, PrefixLM, state_ids

Inputs = dict[str, jax.Array]
Cache = dict[str, jax.Array]


class VisionEncoder(nn.Module):
    """A small conv net for uint8 camera images (frozen in Stage 2 by name)."""

    width: int

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = image.astype(jnp.float32) / 255.0
        for features in (32, 64):
            x = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2))(x))
        return nn.Dense(self.width)(jnp.mean(x, axis=(-3, -2)))


def encode_observation(inputs: Inputs, vision_encoder: nn.Module, layers: list[nn.Module]) -> jax.Array:
    """Every input array (images through `vision_encoder`), in key order, through the MLP `layers`. [B, width]"""
    parts = []
    for key in sorted(inputs):
        x = inputs[key]
        if x.dtype == jnp.uint8:  # camera image [B, H, W, C]
            parts.append(vision_encoder(x))
        else:
            parts.append(x.reshape(x.shape[0], -1).astype(jnp.float32))
    h = jnp.concatenate(parts, axis=-1)
    for layer in layers:
        h = nn.gelu(layer(h))
    return h


class MlpEFM(nn.Module):
    variant: MlpVariant
    vocab_size: int
    max_target_length: int

    def setup(self) -> None:
        v = self.variant
        self.vision_encoder = VisionEncoder(v.width)
        self.observation_encoder = [nn.Dense(v.width) for _ in range(v.depth)]
        self.token_embedding = nn.Embed(self.vocab_size, v.token_embed)
        self.objective_embedding = nn.Embed(len(STAGE1_OBJECTIVES), v.token_embed)  # it reads no text: never pretrained
        self.position_embedding = nn.Embed(self.max_target_length, v.token_embed)
        self.decoder = [nn.Dense(v.width) for _ in range(v.depth)]
        self.head = nn.Dense(self.vocab_size)

    def encode(self, inputs: Inputs) -> jax.Array:
        """Observation + goal -> context [B, width]."""
        return encode_observation(inputs, self.vision_encoder, self.observation_encoder)

    def decode(self, context: jax.Array, objective: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced logits: position k sees tokens[:, :k]. [B, L] -> [B, L, V] (L <= max)"""
        e = self.variant.token_embed
        b, given = tokens.shape
        length = self.max_target_length  # the decoder's input width is fixed: pad, then cut
        tokens = jnp.pad(tokens, ((0, 0), (0, length - given)))
        emb = self.token_embedding(tokens)  # [B, L, E]
        causal = jnp.tril(jnp.ones((length, length), bool), k=-1)  # [k, j]: j < k
        prefix = jnp.where(causal[None, :, :, None], emb[:, None, :, :], 0.0)  # [B, L, L, E]
        prefix = prefix.reshape(b, length, length * e)
        pos = jnp.broadcast_to(self.position_embedding(jnp.arange(length)), (b, length, e))
        obj = jnp.broadcast_to(self.objective_embedding(objective)[:, None], (b, length, e))
        ctx = jnp.broadcast_to(context[:, None], (b, length, context.shape[-1]))
        h = jnp.concatenate([ctx, obj, pos, prefix], axis=-1)
        for layer in self.decoder:
            h = nn.gelu(layer(h))
        return self.head(h[:, :given])

    def position_logits(self, context: jax.Array, objective: jax.Array, tokens: jax.Array, q: jax.Array) -> jax.Array:
        """Logits of output position q alone [B, V] (q may be traced): `decode`'s position q,
        without the other positions, so a decoding step costs one position, not all of them
        (70 for Aloha's action chunks). tokens [B, <= max length]."""
        e, length = self.variant.token_embed, self.max_target_length
        b = tokens.shape[0]
        tokens = jnp.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))
        seen = (jnp.arange(length) < q)[None, :, None]  # tokens before q
        prefix = jnp.where(seen, self.token_embedding(tokens), 0.0).reshape(b, length * e)
        pos = jnp.broadcast_to(self.position_embedding(q), (b, e))
        h = jnp.concatenate([context, self.objective_embedding(objective), pos, prefix], axis=-1)
        for layer in self.decoder:
            h = nn.gelu(layer(h))
        return self.head(h)

    def __call__(self, inputs: Inputs, objective: jax.Array, tokens: jax.Array) -> jax.Array:
        return self.decode(self.encode(inputs), objective, tokens)

    def first_logits(self, inputs: Inputs, objective: jax.Array) -> jax.Array:
        """Logits of the first output token. [B, V]"""
        b = objective.shape[0]
        return self.decode(self.encode(inputs), objective, jnp.zeros((b, 1), jnp.int32))[:, 0]

    def prefill(self, inputs: Inputs, objective: jax.Array, length: int) -> tuple[jax.Array, Cache]:
        """(first logits [B, V], decoding state) for `length` output tokens."""
        context = self.encode(inputs)
        tokens = jnp.zeros((objective.shape[0], length), jnp.int32)
        logits = self.decode(context, objective, tokens[:, :1])[:, 0]
        return logits, {"context": context, "objective": objective, "tokens": tokens}

    def decode_step(self, cache: Cache, token: jax.Array, k: jax.Array) -> tuple[jax.Array, Cache]:
        """Output token k [B] in; logits of token k + 1 [B, V] out."""
        tokens = cache["tokens"].at[:, k].set(token)
        logits = self.position_logits(cache["context"], cache["objective"], tokens, k + 1)
        return logits, {**cache, "tokens": tokens}


class StateTransformerEFM(PrefixLM):
    """The observation MLP, then a causal transformer decoder (MlpVariant.decoder_depth > 0).

    Prefix: `context_tokens` tokens projected from the observation MLP's output, the
    proprioception tokens where the tokenizer gives them (STATE; E.2's joints, which the first
    target of a chunk nearly copies), and the objective's token. The decoder's vocabulary is
    the EFM's plus its begin token (the last id), which no output predicts: logits are cut back
    to the EFM's vocabulary.
    """

    variant: MlpVariant
    vocab_size: int
    state_offset: int = 0  # global id of state token 1
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        v = self.variant
        self.vision_encoder = VisionEncoder(v.width)
        self.observation_encoder = [nn.Dense(v.width) for _ in range(v.depth)]
        self.context = nn.Dense(v.context_tokens * v.width)
        self.objective_embedding = nn.Embed(len(OBJECTIVES), v.width)
        self.llm = LLM(self.vocab_size + 1, v.width, v.decoder_depth, v.decoder_heads, v.width // v.decoder_heads,
                       4 * v.width, self.dtype)

    @property
    def begin_token(self) -> int:
        return self.vocab_size

    def prefix(self, inputs: Inputs, objective: jax.Array) -> tuple[jax.Array, jax.Array]:
        arrays = {k: v for k, v in inputs.items() if k != STATE}  # the tokens are read as tokens
        h = encode_observation(arrays, self.vision_encoder, self.observation_encoder)
        b, w = h.shape[0], self.variant.width
        parts = [self.context(h).reshape(b, self.variant.context_tokens, w)]
        valid = [jnp.ones((b, self.variant.context_tokens), bool)]
        if STATE in inputs:
            state = inputs[STATE]
            parts.append(self.llm.embed(state_ids(state, self.state_offset)))
            valid.append(state != 0)
        parts.append(self.objective_embedding(objective)[:, None])
        valid.append(jnp.ones((b, 1), bool))
        return jnp.concatenate(parts, axis=1), jnp.concatenate(valid, axis=1)

    def output_logits(self, h: jax.Array) -> jax.Array:
        return self.llm.logits(h)[..., :self.vocab_size]
