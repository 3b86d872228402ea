"""efm.math against plain Python / numpy reference loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efm import math


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_monte_carlo_returns_matches_loop(gamma: float) -> None:
    rewards = np.random.default_rng(0).normal(size=23).astype(np.float32)
    expected = np.zeros_like(rewards)
    for t in range(len(rewards)):
        expected[t] = sum(gamma ** (i - t) * rewards[i] for i in range(t, len(rewards)))
    got = np.asarray(math.monte_carlo_returns(jnp.asarray(rewards), gamma))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_monte_carlo_returns_discounts_later_rewards() -> None:
    # A single reward at the end: R_t = gamma^(T-1-t).
    rewards = jnp.asarray([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(math.monte_carlo_returns(rewards, 0.5)),
                               [0.125, 0.25, 0.5, 1.0], rtol=1e-6)


def test_expected_steps_to_go_is_probability_weighted_mean() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 7))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    values = rng.uniform(0, 50, size=7).astype(np.float32)
    expected = [sum(probs[b, k] * values[k] for k in range(7)) for b in range(5)]
    got = math.expected_steps_to_go(jnp.log(jnp.asarray(probs, jnp.float32)), jnp.asarray(values))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_self_improvement_reward_positive_when_getting_closer() -> None:
    stg_t = jnp.asarray([10.0, 10.0, 10.0])
    stg_tp1 = jnp.asarray([7.0, 10.0, 12.5])
    np.testing.assert_allclose(np.asarray(math.self_improvement_reward(stg_t, stg_tp1)), [3.0, 0.0, -2.5])


def test_detect_success_threshold_is_inclusive() -> None:
    stg = jnp.asarray([0.0, 0.999, 1.0, 1.001, 5.0])
    np.testing.assert_array_equal(np.asarray(math.detect_success(stg, 1.0)), [True, True, True, False, False])


def test_reinforce_loss_value() -> None:
    log_probs = jnp.asarray([-1.0, -2.0, -0.5, -3.0])
    returns = jnp.asarray([2.0, -1.0, 0.0, 0.5])
    c = 0.05
    expected = np.mean([-c * r * lp for r, lp in zip([2.0, -1.0, 0.0, 0.5], [-1.0, -2.0, -0.5, -3.0],
                                                     strict=True)])
    np.testing.assert_allclose(float(math.reinforce_loss(log_probs, returns, c)), expected, rtol=1e-6)


def test_reinforce_loss_gradient_sign_and_scale() -> None:
    log_probs = jnp.asarray([-1.0, -2.0, -0.5, -3.0])
    returns = jnp.asarray([2.0, -1.0, 0.0, 0.5])
    c, b = 0.05, 4
    grad = np.asarray(jax.grad(math.reinforce_loss)(log_probs, returns, c))
    np.testing.assert_allclose(grad, -c * np.asarray(returns) / b, rtol=1e-6)
    # Gradient descent (lp -= lr * grad) raises log-probs of positive-return actions, lowers
    # those of negative-return ones.
    assert grad[0] < 0 and grad[1] > 0 and grad[2] == 0


def test_reinforce_loss_stops_gradient_into_returns() -> None:
    log_probs = jnp.asarray([-1.0, -2.0])
    returns = jnp.asarray([2.0, -1.0])
    g = jax.grad(math.reinforce_loss, argnums=1)(log_probs, returns, 0.05)
    np.testing.assert_array_equal(np.asarray(g), [0.0, 0.0])


def test_token_log_likelihood_matches_loop_and_respects_masks() -> None:
    rng = np.random.default_rng(2)
    b, length, v = 3, 4, 6
    logits = rng.normal(size=(b, length, v)).astype(np.float32)
    valid = np.zeros((length, v), bool)
    valid[0, :2] = True  # position 0 admits tokens 0, 1
    valid[1, 2:] = True
    valid[2, [1, 4]] = True
    valid[3, 0] = True
    valid_b = np.broadcast_to(valid, (b, length, v))
    targets = np.array([[1, 3, 4, 0], [0, 5, 1, 0], [1, 2, 4, 0]], np.int32)
    target_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)

    expected = np.zeros(b)
    for i in range(b):
        for k in range(length):
            if not target_mask[i, k]:
                continue
            allowed = np.flatnonzero(valid[k])
            z = np.log(np.sum(np.exp(logits[i, k, allowed].astype(np.float64))))
            expected[i] += logits[i, k, targets[i, k]] - z
    got = np.asarray(math.token_log_likelihood(jnp.asarray(logits), jnp.asarray(targets),
                                               jnp.asarray(valid_b), jnp.asarray(target_mask)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_masked_log_softmax_gives_invalid_tokens_no_mass() -> None:
    logits = jnp.asarray([[5.0, 1.0, 9.0, 0.0]])  # the invalid token 2 has the largest logit
    valid = jnp.asarray([[True, True, False, True]])
    p = np.exp(np.asarray(math.masked_log_softmax(logits, valid)))
    assert p[0, 2] < 1e-30
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    # An invalid target token has (numerically) zero likelihood.
    ll = math.token_log_likelihood(logits[:, None], jnp.asarray([[2]]), valid[:, None], jnp.ones((1, 1)))
    assert float(ll[0]) < -1e6


def test_masked_mean() -> None:
    x = jnp.asarray([1.0, 2.0, 3.0, 100.0])
    mask = jnp.asarray([True, True, True, False])
    assert float(math.masked_mean(x, mask)) == pytest.approx(2.0)
    assert float(math.masked_mean(x, jnp.zeros(4, bool))) == 0.0


def test_success_bonus_reward_matches_loop() -> None:
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=15).astype(np.float32)
    success = rng.uniform(size=15) < 0.4
    expected = [rewards[t] + (0.25 if success[t] else 0.0) for t in range(15)]
    got = np.asarray(math.success_bonus_reward(jnp.asarray(rewards), jnp.asarray(success), 0.25))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(math.success_bonus_reward(jnp.asarray(rewards), jnp.asarray(success), 0.0)),
                                  rewards)


def test_ordinal_targets_spread_over_the_run_only() -> None:
    index, start, length = jnp.asarray([3, 0, 7]), jnp.asarray([2, 0, 7]), jnp.asarray([5, 4, 1])
    hard = np.asarray(math.ordinal_targets(index, start, length, 10, 0.0))
    np.testing.assert_array_equal(hard, np.eye(10)[[3, 0, 7]])
    soft = np.asarray(math.ordinal_targets(index, start, length, 10, 0.3))
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    assert (soft[0, [0, 1, 7, 8, 9]] == 0).all() and (soft[1, 4:] == 0).all()  # nothing outside the run
    assert soft[0].argmax() == 3 and soft[0, 2] == pytest.approx(soft[0, 4])  # peaked, symmetric
    assert soft[0, 4] > soft[0, 5] > 0  # a near bin gets more than a far one
    np.testing.assert_array_equal(soft[2], np.eye(10)[7])  # a run of one (a sign, a byte) stays one-hot


def test_token_cross_entropy_of_one_hot_targets_is_the_nll() -> None:
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
    targets = jnp.asarray([[1, 2, 5], [0, 4, 3]])
    valid, mask = jnp.ones((2, 3, 6), bool), jnp.asarray([[1, 1, 0], [1, 1, 1]], jnp.float32)
    xent = math.token_cross_entropy(logits, jax.nn.one_hot(targets, 6), valid, mask)
    np.testing.assert_allclose(xent, -math.token_log_likelihood(logits, targets, valid, mask), rtol=1e-6)


def test_smoothed_cross_entropy_prefers_a_near_miss() -> None:
    """A model sure of bin 4: with smoothed targets, a true bin of 5 costs less than a true bin of
    9; one-hot targets cost both the same."""
    logits = jnp.asarray([[[0.0] * 4 + [6.0] + [0.0] * 5]] * 2)
    valid, mask = jnp.ones((2, 1, 10), bool), jnp.ones((2, 1))
    targets = jnp.asarray([[5], [9]])
    for sigma, near_cheaper in ((0.0, False), (0.15, True)):
        probs = math.ordinal_targets(targets, 0, 10, 10, sigma)
        near, far = np.asarray(math.token_cross_entropy(logits, probs, valid, mask))
        assert (near < far - 0.5) == near_cheaper and (near == pytest.approx(far)) != near_cheaper
