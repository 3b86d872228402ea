"""The paper's equations as small pure jnp functions (jit-able; shapes in comments)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of x over entries where mask is set (0 when none is)."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_log_softmax(logits: Array, valid: Array) -> Array:
    """log_softmax restricted to the valid tokens of each output position. [..., V]"""
    logits = jnp.where(valid, logits, -1e9)
    return jax.nn.log_softmax(logits, axis=-1)


def token_log_likelihood(logits: Array, targets: Array, valid: Array, target_mask: Array) -> Array:
    """log p(target sequence) = sum over positions of log p(token). logits [B, L, V] -> [B]"""
    logp = masked_log_softmax(logits, valid)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, L]
    return jnp.sum(picked * target_mask, axis=-1)


def ordinal_targets(index: Array, start: Array, length: Array, size: int, sigma: float) -> Array:
    """Target distribution over `size` tokens: one-hot at `index`, or, for sigma > 0, a Gaussian
    around it over its ordered run [start, start + length) (the bins of one quantity), of
    standard deviation sigma x length bins, so that a near miss costs less than a far one
    (HL-Gauss, Farebrother et al. 2024). A run of length 1 (a sign, a byte) stays one-hot.
    [...] ints -> [..., size]"""
    if sigma <= 0:
        return jax.nn.one_hot(index, size)
    v = jnp.arange(size)
    start, length = jnp.broadcast_to(start, jnp.shape(index)), jnp.broadcast_to(length, jnp.shape(index))
    inside = (v >= start[..., None]) & (v < (start + length)[..., None])
    d = (v - index[..., None]) / (sigma * length[..., None])
    return jax.nn.softmax(jnp.where(inside, -0.5 * d**2, -jnp.inf), axis=-1)


def token_cross_entropy(logits: Array, target_probs: Array, valid: Array, target_mask: Array) -> Array:
    """Cross-entropy of target distributions, summed over the positions (with one-hot targets,
    minus token_log_likelihood). logits, target_probs [B, L, V] -> [B]"""
    logp = masked_log_softmax(logits, valid)
    return -jnp.sum(jnp.sum(target_probs * logp, axis=-1) * target_mask, axis=-1)


def expected_steps_to_go(stg_log_probs: Array, bin_values: Array) -> Array:
    """Eq. 1: d(o, g), the mean of the predicted steps-to-go distribution. [B, K] -> [B]"""
    return jnp.exp(stg_log_probs) @ bin_values


def self_improvement_reward(stg_t: Array, stg_tp1: Array) -> Array:
    """Eq. 2: r_t = d(o_t, g) - d(o_{t+1}, g), how much closer the step brought the goal."""
    return stg_t - stg_tp1


def success_bonus_reward(rewards: Array, success_tp1: Array, bonus: float) -> Array:
    """Section 4.1.3: r_t + bonus * 1[success at o_{t+1}], a small constant while a success
    the model cannot see holds (Aloha's peg at the socket's pin). [T] -> [T]"""
    return rewards + bonus * success_tp1.astype(rewards.dtype)


def detect_success(stg: Array, threshold: float) -> Array:
    """Eq. 3: success(o, g) = 1[d(o, g) <= s]."""
    return stg <= threshold


@partial(jax.jit, static_argnames="gamma")
def monte_carlo_returns(rewards: Array, gamma: float) -> Array:
    """R_t = sum_{i >= t} gamma^(i - t) r_i, by a reverse scan. [T] -> [T]

    Jitted: actors call it once per episode, and an eager scan would compile every time.
    """

    def step(carry: Array, r: Array) -> tuple[Array, Array]:
        carry = r + gamma * carry
        return carry, carry

    _, returns = jax.lax.scan(step, jnp.zeros((), rewards.dtype), rewards, reverse=True)
    return returns


def reinforce_loss(log_probs: Array, returns: Array, loss_scale: float) -> Array:
    """Eq. 4: mean of -c * R_t * log pi(a_t | o_t, g); returns carry no gradient. [B] -> []"""
    return jnp.mean(-loss_scale * jax.lax.stop_gradient(returns) * log_probs)
