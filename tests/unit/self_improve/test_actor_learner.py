"""Stage 2 pieces: reward labelling of episodes, the REINFORCE learner and frozen modules."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efm.config import SelfImproveConfig, debug_config
from efm.data.features import InputSpec
from efm.envs.base import Episode
from efm.models.efm import EFMFunctions, make_functions
from efm.models.prefix_lm import split_inputs
from efm.models.tokenizers import make_vocabulary
from efm.self_improve.actor import (
    ACTION_TOKENS,
    RETURN,
    STEPS_TO_GO,
    detected_success,
    label_episode,
)
from efm.self_improve.learner import Learner, freeze_labels

CFG = debug_config()
B = 16


def make_episode(t: int, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        observations={"position": rng.uniform(-1, 1, (t + 1, 2)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
        instruction="go",
        goal={"target": np.array([0.3, -0.2], np.float32)},
        observation_extras={STEPS_TO_GO: rng.uniform(0, 40, t + 1).astype(np.float32)},
        action_extras={ACTION_TOKENS: rng.integers(0, 13, (t, 4)).astype(np.int64)},
    )


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_label_episode_returns_match_loop(gamma: float) -> None:
    e = make_episode(12, seed=1)
    d = e.observation_extras[STEPS_TO_GO].astype(np.float64)
    rewards = [d[t] - d[t + 1] for t in range(12)]
    expected = [sum(gamma ** (i - t) * rewards[i] for i in range(t, 12)) for t in range(12)]
    out = label_episode(e, gamma, InputSpec(None))
    np.testing.assert_allclose(out[RETURN], expected, rtol=1e-5, atol=1e-4)
    if gamma == 1.0:  # telescoping: R_t = d(o_t) - d(o_T)
        np.testing.assert_allclose(out[RETURN], d[:-1] - d[-1], rtol=1e-5, atol=1e-4)
    # (o_t, a_t, g) for t < T: the last observation has no action.
    np.testing.assert_array_equal(out["inputs/observation/position"], e.observations["position"][:-1])
    np.testing.assert_array_equal(out["inputs/goal/target"], np.tile(e.goal["target"], (12, 1)))
    np.testing.assert_array_equal(out[ACTION_TOKENS], e.action_extras[ACTION_TOKENS])
    assert out[ACTION_TOKENS].dtype == np.int32 and out[RETURN].dtype == np.float32
    assert {v.shape[0] for v in out.values()} == {12}


def test_success_bonus_is_added_while_ground_truth_success_holds() -> None:
    """Section 4.1.3 (Aloha): r_t + bonus when o_{t+1} is a ground-truth success; off: Eq. 2 alone."""
    from efm.rollout import SUCCESS

    e = make_episode(10, seed=2)
    success = np.zeros(11, bool)
    success[7:] = True  # reached at o_7, held (not yet detected) to the end
    e.observation_extras[SUCCESS] = success
    d = e.observation_extras[STEPS_TO_GO].astype(np.float64)
    rewards = [d[t] - d[t + 1] + (0.5 if success[t + 1] else 0.0) for t in range(10)]
    expected = [sum(0.9 ** (i - t) * rewards[i] for i in range(t, 10)) for t in range(10)]
    np.testing.assert_allclose(label_episode(e, 0.9, InputSpec(None), 0.5)[RETURN], expected, rtol=1e-5, atol=1e-4)
    plain = [sum(0.9 ** (i - t) * (d[i] - d[i + 1]) for i in range(t, 10)) for t in range(10)]
    np.testing.assert_allclose(label_episode(e, 0.9, InputSpec(None))[RETURN], plain, rtol=1e-5, atol=1e-4)


def test_success_bonus_is_configured_for_aloha_only() -> None:
    from efm.config import DOMAINS, default_config

    for domain in DOMAINS:
        assert (default_config(domain).self_improve.success_bonus > 0) == (domain == "aloha-insertion"), domain
    with pytest.raises(ValueError, match=r"self_improve\.success_bonus"):
        SelfImproveConfig(success_bonus=-1.0)


def test_detected_success_ends_on_threshold() -> None:
    end_on = detected_success(1.0)
    np.testing.assert_array_equal(end_on(None, {STEPS_TO_GO: np.array([0.5, 1.0, 1.5])}), [True, True, False])


def functions() -> EFMFunctions:
    return make_functions(CFG.model, make_vocabulary(CFG.tokenizer))


def batch_inputs(image: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"observation/position": rng.uniform(-1, 1, (B, 2)).astype(np.float32),
           "goal/target": rng.uniform(-1, 1, (B, 2)).astype(np.float32)}
    if image:
        out["observation/image"] = rng.integers(0, 256, (B, 16, 16, 3)).astype(np.uint8)
    return out


def make_batch(fns: EFMFunctions, params, ret: float, image: bool = False) -> dict[str, np.ndarray]:
    inputs = batch_inputs(image)
    tokens = np.asarray(fns.sample_action_tokens(params, {k: jnp.asarray(v) for k, v in inputs.items()},
                                                 jax.random.PRNGKey(1)))
    return {**{f"inputs/{k}": v for k, v in inputs.items()}, ACTION_TOKENS: tokens, RETURN: np.full(B, ret, np.float32)}


def mean_log_prob(fns: EFMFunctions, params, batch: dict[str, np.ndarray]) -> float:
    inputs, _ = split_inputs(batch)
    return float(jnp.mean(fns.action_log_prob(params, inputs, jnp.asarray(batch[ACTION_TOKENS]))))


@pytest.mark.parametrize(("ret", "direction"), [(2.0, 1), (-2.0, -1)])
def test_learner_moves_log_prob_with_the_sign_of_the_return(ret: float, direction: int) -> None:
    fns = functions()
    params = fns.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in batch_inputs().items()})
    batch = make_batch(fns, params, ret)
    before = mean_log_prob(fns, params, batch)
    learner = Learner(fns, params, dataclasses.replace(CFG.self_improve, learning_rate=1e-3, weight_decay=0.0))
    for _ in range(3):
        metrics = learner.step(batch)
    assert int(learner.state.step) == 3
    assert metrics["mean_return"] == pytest.approx(ret)
    after = mean_log_prob(fns, learner.get_variables(), batch)
    assert direction * (after - before) > 0.01, (before, after)


def test_zero_return_leaves_policy_unchanged() -> None:
    fns = functions()
    params = fns.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in batch_inputs().items()})
    learner = Learner(fns, params, dataclasses.replace(CFG.self_improve, weight_decay=0.0))
    learner.step(make_batch(fns, params, 0.0))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(learner.get_variables()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("freeze", [("vision_encoder",), ()])
def test_frozen_modules_do_not_change(freeze: tuple[str, ...]) -> None:
    fns = functions()
    params = fns.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in batch_inputs(image=True).items()})
    assert "vision_encoder" in params
    labels = jax.tree.leaves(freeze_labels(params, freeze))
    assert ("frozen" in labels) == bool(freeze) and "trained" in labels
    si = SelfImproveConfig(freeze=freeze, learning_rate=1e-3)
    learner = Learner(fns, params, si)
    batch = make_batch(fns, params, 1.5, image=True)
    for _ in range(2):
        learner.step(batch)
    new = learner.get_variables()

    def changed(module: str) -> bool:
        return any(not np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(params[module]), jax.tree.leaves(new[module]), strict=True))

    assert changed("vision_encoder") == (not freeze)
    for module in ("observation_encoder_0", "decoder_0", "head", "token_embedding"):
        assert changed(module), module
