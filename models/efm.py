"""The embodied foundation model (EFM): one network, every objective, token outputs.

RT-2 style: the model reads an observation (state vectors and/or camera images), the goal, and
an objective prompt, and emits tokens in one shared vocabulary. Behavioural cloning asks for
the action tokens, steps-to-go for one token. Decoding is autoregressive (each output token
sees the ones before it), so log pi(a | o, g) is the sum of the action tokens' log-probs.

The state-based MLP variants here are the pointmass model of the paper's Section 3; an image +
language backbone replaces `encode` without changing the decoder, objectives or callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efm import math
from efm.config import MODEL_VARIANTS, OBJECTIVES, ModelConfig
from efm.models.tokenizers import Vocabulary

Inputs = dict[str, jax.Array]  # "observation/<key>" and "goal/<key>" -> [B, ...]
OBJECTIVE_ID = {name: i for i, name in enumerate(OBJECTIVES)}


class VisionEncoder(nn.Module):
    """A small conv net for uint8 camera images (frozen in Stage 2 by name)."""

    width: int

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = image.astype(jnp.float32) / 255.0
        for features in (32, 64):
            x = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2))(x))
        return nn.Dense(self.width)(jnp.mean(x, axis=(-3, -2)))


class EFM(nn.Module):
    width: int
    depth: int
    token_embed: int
    vocab_size: int
    max_target_length: int

    def setup(self) -> None:
        self.vision_encoder = VisionEncoder(self.width)
        self.observation_encoder = [nn.Dense(self.width) for _ in range(self.depth)]
        self.token_embedding = nn.Embed(self.vocab_size, self.token_embed)
        self.objective_embedding = nn.Embed(len(OBJECTIVES), self.token_embed)
        self.position_embedding = nn.Embed(self.max_target_length, self.token_embed)
        self.decoder = [nn.Dense(self.width) for _ in range(self.depth)]
        self.head = nn.Dense(self.vocab_size)

    def encode(self, inputs: Inputs) -> jax.Array:
        """Observation + goal -> context [B, width]."""
        parts = []
        for key in sorted(inputs):
            x = inputs[key]
            if x.dtype == jnp.uint8:  # camera image [B, H, W, C]
                parts.append(self.vision_encoder(x))
            else:
                parts.append(x.reshape(x.shape[0], -1).astype(jnp.float32))
        h = jnp.concatenate(parts, axis=-1)
        for layer in self.observation_encoder:
            h = nn.gelu(layer(h))
        return h

    def decode(self, context: jax.Array, objective: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced logits: position k sees tokens[:, :k]. [B, L] -> [B, L, V]"""
        b, length = tokens.shape
        emb = self.token_embedding(tokens)  # [B, L, E]
        causal = jnp.tril(jnp.ones((length, length), bool), k=-1)  # [k, j]: j < k
        prefix = jnp.where(causal[None, :, :, None], emb[:, None, :, :], 0.0)  # [B, L, L, E]
        prefix = prefix.reshape(b, length, length * self.token_embed)
        pos = jnp.broadcast_to(self.position_embedding(jnp.arange(length)), (b, length, self.token_embed))
        obj = jnp.broadcast_to(self.objective_embedding(objective)[:, None], (b, length, self.token_embed))
        ctx = jnp.broadcast_to(context[:, None], (b, length, context.shape[-1]))
        h = jnp.concatenate([ctx, obj, pos, prefix], axis=-1)
        for layer in self.decoder:
            h = nn.gelu(layer(h))
        return self.head(h)

    def __call__(self, inputs: Inputs, objective: jax.Array, tokens: jax.Array) -> jax.Array:
        return self.decode(self.encode(inputs), objective, tokens)


def make_model(cfg: ModelConfig, vocab: Vocabulary) -> EFM:
    v = MODEL_VARIANTS[cfg.variant]
    return EFM(v["width"], v["depth"], v["token_embed"], vocab.size, vocab.max_target_length)


@dataclass(frozen=True)
class EFMFunctions:
    """The model's jitted uses: losses, action sampling and steps-to-go, given params."""

    model: EFM
    vocab: Vocabulary

    def init(self, rng: jax.Array, inputs: Inputs) -> dict:
        b = next(iter(inputs.values())).shape[0]
        tokens = jnp.zeros((b, self.vocab.max_target_length), jnp.int32)
        return self.model.init(rng, inputs, jnp.zeros((b,), jnp.int32), tokens)["params"]

    def _valid(self, objective: str) -> jax.Array:
        return jnp.asarray(self.vocab.valid_tokens(objective))

    def log_likelihood(self, params: dict, inputs: Inputs, objective: jax.Array, targets: jax.Array,
                       target_mask: jax.Array) -> jax.Array:
        """log p(targets | o, g, objective) for a batch mixing objectives. [B]"""
        logits = self.model.apply({"params": params}, inputs, objective, targets)
        valid = jnp.stack([self._valid(o) for o in OBJECTIVES])[objective]  # [B, L, V]
        return math.token_log_likelihood(logits, targets, valid, target_mask)

    def action_log_prob(self, params: dict, inputs: Inputs, action_tokens: jax.Array) -> jax.Array:
        """log pi(a | o, g) of tokenized actions. [B, L_a] -> [B]"""
        b, la = action_tokens.shape
        targets = jnp.zeros((b, self.vocab.max_target_length), jnp.int32).at[:, :la].set(action_tokens)
        mask = jnp.zeros(targets.shape, jnp.float32).at[:, :la].set(1.0)
        objective = jnp.full((b,), OBJECTIVE_ID["bc"], jnp.int32)
        return self.log_likelihood(params, inputs, objective, targets, mask)

    @partial(jax.jit, static_argnums=0)
    def steps_to_go(self, params: dict, inputs: Inputs) -> jax.Array:
        """Eq. 1: d(o, g) for a batch. [B]"""
        b = next(iter(inputs.values())).shape[0]
        tokens = jnp.zeros((b, self.vocab.max_target_length), jnp.int32)
        objective = jnp.full((b,), OBJECTIVE_ID["steps_to_go"], jnp.int32)
        logits = self.model.apply({"params": params}, inputs, objective, tokens)[:, 0]
        off = self.vocab.steps_to_go_offset
        log_probs = jax.nn.log_softmax(logits[:, off:], axis=-1)
        return math.expected_steps_to_go(log_probs, jnp.asarray(self.vocab.steps_to_go.bin_values()))

    @partial(jax.jit, static_argnums=(0, 4))
    def sample_action_tokens(self, params: dict, inputs: Inputs, rng: jax.Array, greedy: bool = False) -> jax.Array:
        """Autoregressive sampling from pi(a | o, g), or its greedy decoding. [B, L_a]"""
        variables = {"params": params}
        context = self.model.apply(variables, inputs, method=EFM.encode)
        b, la = context.shape[0], self.vocab.action.num_tokens
        tokens = jnp.zeros((b, self.vocab.max_target_length), jnp.int32)
        objective = jnp.full((b,), OBJECTIVE_ID["bc"], jnp.int32)
        valid = self._valid("bc")
        for k in range(la):  # L_a is small and static: unrolled
            logits = self.model.apply(variables, context, objective, tokens, method=EFM.decode)[:, k]
            logits = jnp.where(valid[k], logits, -1e9)
            rng, key = jax.random.split(rng)
            token = jnp.argmax(logits, axis=-1) if greedy else jax.random.categorical(key, logits)
            tokens = tokens.at[:, k].set(token.astype(jnp.int32))
        return tokens[:, :la]

    def sample_actions(self, params: dict, inputs: Inputs, rng: jax.Array,
                       greedy: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Continuous actions [B, A] and their tokens [B, L_a]."""
        tokens = np.asarray(self.sample_action_tokens(params, inputs, rng, greedy))
        return self.vocab.action_from_tokens(tokens), tokens


def make_functions(cfg: ModelConfig, vocab: Vocabulary) -> EFMFunctions:
    return EFMFunctions(make_model(cfg, vocab), vocab)
