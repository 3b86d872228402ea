"""The prefix-LM layout both transformer EFMs decode with (big_vision's PaliGemma pattern).

Sequence = prefix + suffix. The prefix is read with full attention; the suffix is a begin token
then the output tokens, causal, so output k is predicted at suffix position k from the prefix
and the outputs before it. Subclasses say what the prefix is (`prefix`) and own `llm`,
`begin_token` and `dtype`; this is the teacher-forced pass, the prefill of a KV cache and one
decoding step, so decoding encodes the prefix once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efm.models.llm import LayerCache

# The transformers' input keys. IMAGE [B, F, H, W, C] uint8 (F = 2 frames x cameras: cam0 now,
# cam0 before, cam1 now, ...), TEXT [B, L] int32 text tokens, STATE [B, S] int32 proprioception
# tokens in 1..bins, 0 where a sample has none (the auxiliary objective).
Inputs = dict[str, jax.Array]
IMAGE, TEXT, STATE = "image", "text", "state"
# Instead of IMAGE, the image tower's per-frame work on it, done earlier (`vit.FrameCodes`, kept by
# `frame_cache.FrameCache` while acting): IMAGE_TOKENS [B, F, N, D] and, for grounding variants,
# IMAGE_WHERE [B, F, L, 2], where each of the sample's text tokens fires in each frame.
IMAGE_TOKENS, IMAGE_WHERE = "image_tokens", "image_where"
# A flat batch (an SFT sample, a replay item) keys the model's inputs INPUTS + name, beside its
# targets and bookkeeping.
INPUTS = "inputs/"
TEXT_INPUT = f"{INPUTS}{TEXT}"


def split_inputs(batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the model's inputs by name, the rest) of a flat batch."""
    inputs = {k.removeprefix(INPUTS): v for k, v in batch.items() if k.startswith(INPUTS)}
    return inputs, {k: v for k, v in batch.items() if not k.startswith(INPUTS)}


def state_ids(state: jax.Array, state_offset: int) -> jax.Array:
    """Proprioception tokens 1..bins -> global ids (0, masked out, where a sample has none)."""
    return jnp.where(state > 0, state + state_offset - 1, 0)


TEXT_BUCKET = 8  # trimmed text lengths are multiples of this: few shapes to compile


def trim_text(batch: Mapping[str, np.ndarray], key: str = TEXT, aligned: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """`batch` with the columns of text padding (token 0) at the end of `batch[key]` [B, L] cut
    off, but one (the grounding query reads each token with its neighbours), rounded up to a
    multiple of TEXT_BUCKET; the arrays named in `aligned` ([B, L, ...], per text token) are cut
    alike. Padding is masked out, and the model places what follows the text as if it were there
    (`PrefixLM.prefix_positions`), so the outputs are the same: only the work on padding goes
    (a table instruction has at most 12 of its 32 tokens)."""
    text = np.asarray(batch[key])
    used = np.flatnonzero(text.any(axis=0))
    keep = min(text.shape[1], -(-(int(used[-1]) + 2 if len(used) else 1) // TEXT_BUCKET) * TEXT_BUCKET)
    if keep == text.shape[1]:
        return dict(batch)
    return {k: (v[:, :keep] if k == key or k in aligned else v) for k, v in batch.items()}


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """big_vision's prefix-LM mask. input_mask [B, N] valid tokens; mask_ar [B, N] 0 for tokens
    attending with the prefix (full attention), 1 where a causal block starts. -> [B, N, N]"""
    cumsum = jnp.cumsum(mask_ar, axis=1)
    attn = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return attn & valid


class PrefixLM(nn.Module):
    """Decoding over `self.llm` given `self.prefix`; see the module docstring."""

    def prefix(self, inputs: Inputs, objective: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(embeddings [B, P, D], valid [B, P])."""
        raise NotImplementedError

    def prefix_positions(self, inputs: Inputs, length: int) -> np.ndarray:
        """Each prefix token's position [P] (static): 0..P-1 unless a model leaves a gap."""
        del inputs
        return np.arange(length)

    def output_logits(self, h: jax.Array) -> jax.Array:
        """Hidden states -> logits over the EFM's vocabulary."""
        return self.llm.logits(h)

    def _sequence(self, inputs: Inputs, objective: jax.Array, suffix: jax.Array,
                  ) -> tuple[jax.Array, jax.Array, jax.Array, int]:
        """Prefix + [begin, suffix...]: (embeddings, attention mask, positions, prefix length)."""
        emb, valid = self.prefix(inputs, objective)
        b, p = valid.shape
        begin = jnp.full((b, 1), self.begin_token, jnp.int32)
        out = self.llm.embed(jnp.concatenate([begin, suffix], axis=1))
        x = jnp.concatenate([emb.astype(out.dtype), out], axis=1)
        input_mask = jnp.concatenate([valid, jnp.ones(out.shape[:2], bool)], axis=1)
        mask_ar = jnp.concatenate([jnp.zeros((b, p), jnp.int32), jnp.ones(out.shape[:2], jnp.int32)], axis=1)
        prefix = self.prefix_positions(inputs, p)
        gap = int(prefix[-1]) + 1 - p if p else 0  # the suffix follows the prefix's last position
        positions = np.concatenate([prefix, p + gap + np.arange(out.shape[1])])
        return x, make_attn_mask(input_mask, mask_ar), jnp.broadcast_to(jnp.asarray(positions), x.shape[:2]), p

    def __call__(self, inputs: Inputs, objective: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced logits: output k sees the prefix and tokens[:, :k]. [B, L] -> [B, L, V]"""
        x, mask, positions, p = self._sequence(inputs, objective, tokens[:, :-1])
        h, _ = self.llm(x, positions, mask)
        return self.output_logits(h[:, p:])

    def first_logits(self, inputs: Inputs, objective: jax.Array) -> jax.Array:
        """Logits of the first output token, one forward pass over the prefix. [B, V]"""
        b = objective.shape[0]
        return self(inputs, objective, jnp.zeros((b, 1), jnp.int32))[:, 0]

    def prefill(self, inputs: Inputs, objective: jax.Array, length: int) -> tuple[jax.Array, dict]:
        """Encodes prefix + begin into a KV cache with room for `length` outputs.
        -> (logits of output 0 [B, V], decoding state)"""
        x, mask, positions, p = self._sequence(inputs, objective, jnp.zeros((objective.shape[0], 0), jnp.int32))
        b, n = x.shape[:2]  # n = p + 1
        size = p + length
        key_valid = jnp.concatenate([mask[:, -1], jnp.zeros((b, size - n), bool)], axis=1)  # what `begin` sees
        llm = self.llm
        cache = [(jnp.zeros((b, size, llm.num_heads, llm.head_dim), self.dtype),) * 2 for _ in range(llm.depth)]
        full_mask = jnp.concatenate([mask, jnp.zeros((b, n, size - n), bool)], axis=2)
        h, cache = llm(x, positions, full_mask, cache, 0)
        return self.output_logits(h[:, -1]), {"cache": cache, "key_valid": key_valid, "prefix_length": jnp.int32(p),
                                              "begin_position": positions[0, -1]}

    def decode_step(self, state: dict, token: jax.Array, k: jax.Array) -> tuple[jax.Array, dict]:
        """Output token k [B] in (in the cache after the prefix and begin: p + 1 + k); logits of
        output k + 1 out."""
        pos = state["prefix_length"] + 1 + k
        key_valid = state["key_valid"].at[:, pos].set(True)
        x = self.llm.embed(token[:, None])
        positions = jnp.full((*token.shape, 1), state["begin_position"] + 1 + k)
        cache: list[LayerCache] = state["cache"]
        h, cache = self.llm(x, positions, key_valid[:, None, :], cache, pos)
        return self.output_logits(h[:, 0]), {**state, "cache": cache, "key_valid": key_valid}
