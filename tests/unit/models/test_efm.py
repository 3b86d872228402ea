"""The EFM's autoregressive structure, sampling and steps-to-go head."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efm.config import ModelConfig
from efm.models.efm import OBJECTIVE_ID, EFMFunctions, make_functions
from efm.models.mlp import MlpEFM
from efm.models.tokenizers import SignMagnitudeTokenizer, StepsToGoTokenizer, Vocabulary

B = 6


def inputs(batch: int = B, seed: int = 0, image: bool = False) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    out = {"observation/position": jnp.asarray(rng.uniform(-1, 1, (batch, 2)), jnp.float32),
           "goal/target": jnp.asarray(rng.uniform(-1, 1, (batch, 2)), jnp.float32)}
    if image:
        out["observation/image"] = jnp.asarray(rng.integers(0, 256, (batch, 16, 16, 3)), jnp.uint8)
    return out


STATE_VARIANTS = ("mlp-tiny", "mlp-tx-tiny")  # the MLP decoder, the transformer decoder


def functions(action_dim: int = 2, magnitude_bins: int = 11, stg_bins: int = 50,
              variant: str = "mlp-tiny") -> EFMFunctions:
    vocab = Vocabulary(SignMagnitudeTokenizer(action_dim, magnitude_bins), StepsToGoTokenizer(stg_bins, 100.0))
    return make_functions(ModelConfig(variant=variant), vocab)


@pytest.fixture(scope="module", params=STATE_VARIANTS)
def fns_params(request: pytest.FixtureRequest) -> tuple[EFMFunctions, dict]:
    fns = functions(variant=request.param)
    return fns, fns.init(jax.random.PRNGKey(0), inputs())


def test_teacher_forcing_is_causal(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    length = fns.vocab.max_target_length
    assert length == 4
    x = inputs()
    objective = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, fns.vocab.size, (B, length)), jnp.int32)
    base = np.asarray(fns.model.apply({"params": params}, x, objective, tokens))
    for k in range(length):
        changed = tokens.at[:, k].set((tokens[:, k] + 5) % fns.vocab.size)
        logits = np.asarray(fns.model.apply({"params": params}, x, objective, changed))
        np.testing.assert_array_equal(logits[:, : k + 1], base[:, : k + 1],
                                      err_msg=f"token {k} leaked into positions <= {k}")
        for j in range(k + 1, length):
            assert np.abs(logits[:, j] - base[:, j]).max() > 1e-6, f"position {j} ignores token {k}"


def test_sampled_tokens_are_valid(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    valid = fns.vocab.valid_tokens("bc")
    x = inputs(batch=64)
    for seed in range(3):
        tokens = np.asarray(fns.sample_action_tokens(params, x, jax.random.PRNGKey(seed)))
        assert tokens.shape == (64, 4)
        for k in range(4):
            assert valid[k, tokens[:, k]].all(), f"invalid token at position {k}"
        actions, toks = fns.sample_actions(params, x, jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(toks, tokens)  # same key, same sample
        assert actions.shape == (64, 2) and np.abs(actions).max() <= 1.0


def test_action_log_prob_of_samples_is_finite_and_nonpositive(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    x = inputs(batch=32)
    tokens = fns.sample_action_tokens(params, x, jax.random.PRNGKey(3))
    lp = np.asarray(fns.action_log_prob(params, x, tokens))
    assert lp.shape == (32,)
    assert np.isfinite(lp).all() and (lp <= 0).all()


def test_action_log_probs_sum_to_one_over_all_sequences() -> None:
    fns = functions(action_dim=1, magnitude_bins=3, stg_bins=10)
    x = inputs(batch=3, seed=4)
    params = fns.init(jax.random.PRNGKey(1), x)
    valid = fns.vocab.valid_tokens("bc")
    seqs = list(itertools.product(np.flatnonzero(valid[0]), np.flatnonzero(valid[1])))
    assert len(seqs) == 2 * 3
    # Every (input, sequence) pair in one batch: row i * 6 + j is input i with sequence j.
    tiled = {k: jnp.repeat(v, len(seqs), axis=0) for k, v in x.items()}
    tokens = jnp.asarray(np.tile(np.array(seqs, np.int32), (3, 1)))
    lp = np.asarray(fns.action_log_prob(params, tiled, tokens), np.float64).reshape(3, len(seqs))
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-5)


def test_sampling_follows_the_model_distribution() -> None:
    """Empirical frequencies of sampled sequences match exp(action_log_prob)."""
    fns = functions(action_dim=1, magnitude_bins=3, stg_bins=10)
    one = inputs(batch=1, seed=5)
    params = fns.init(jax.random.PRNGKey(2), one)
    n = 4000
    x = {k: jnp.repeat(v, n, axis=0) for k, v in one.items()}
    tokens = np.asarray(fns.sample_action_tokens(params, x, jax.random.PRNGKey(0)))
    seqs, counts = np.unique(tokens, axis=0, return_counts=True)
    probs = np.exp(np.asarray(fns.action_log_prob(params, {k: v[: len(seqs)] for k, v in x.items()},
                                                  jnp.asarray(seqs))))
    # 4 binomial standard errors at most ~0.032 for n=4000.
    np.testing.assert_allclose(counts / n, probs, atol=0.035)


def test_steps_to_go_within_bin_value_range(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    values = fns.vocab.steps_to_go.bin_values()
    stg = np.asarray(fns.steps_to_go(params, inputs(batch=64, seed=6)))
    assert stg.shape == (64,)
    assert (stg >= values.min()).all() and (stg <= values.max()).all()
    assert np.ptp(stg) > 0  # depends on the input


def test_image_input_creates_vision_encoder_params() -> None:
    fns = functions()
    with_image = fns.init(jax.random.PRNGKey(0), inputs(image=True))
    assert "vision_encoder" in with_image
    assert jax.tree.leaves(with_image["vision_encoder"])
    without = fns.init(jax.random.PRNGKey(0), inputs())
    assert "vision_encoder" not in without
    # The image actually feeds the context.
    x = inputs(image=True)
    other = {**x, "observation/image": 255 - x["observation/image"]}
    ctx_a = fns.model.apply({"params": with_image}, x, method=MlpEFM.encode)
    ctx_b = fns.model.apply({"params": with_image}, other, method=MlpEFM.encode)
    assert np.abs(np.asarray(ctx_a) - np.asarray(ctx_b)).max() > 1e-6


def aloha_state_config(variant: str, joint_tokens: bool):
    """Aloha's state mode (its default reads the joints as input tokens too), or without them."""
    import dataclasses

    from efm.config import default_config

    cfg = default_config("aloha-insertion")
    tok = cfg.tokenizer if joint_tokens else dataclasses.replace(
        cfg.tokenizer, state_key="", state_low=(), state_high=(), state_shares_action_tokens=False)
    return cfg.replace(tokenizer=tok, model=ModelConfig(variant=variant))


@pytest.mark.parametrize("variant", [*STATE_VARIANTS, "mlp-tx-tiny+joints"])
def test_aloha_state_mode_decodes_70_tokens_as_teacher_forcing(cached_logits, variant: str) -> None:
    """Aloha's state mode: a state variant reads the joints and the peg and socket poses (and
    with +joints the joints as input tokens too); its decoding state gives the teacher-forced
    logits of all 70 action tokens."""
    from efm.data.features import input_spec
    from efm.models.tokenizers import make_vocabulary

    variant, _, joints = variant.partition("+")
    cfg = aloha_state_config(variant, bool(joints))
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    rng = np.random.default_rng(0)
    observation = {"joints": rng.uniform(-1, 1, (B, 14)).astype(np.float32),
                   "peg_pose": rng.normal(size=(B, 7)).astype(np.float32),
                   "socket_pose": rng.normal(size=(B, 7)).astype(np.float32)}
    x = {k: jnp.asarray(v) for k, v in input_spec(fns.vocab).inputs(observation, None, {}, [""] * B).items()}
    assert ("state" in x) == bool(joints)
    params = jax.jit(fns.init)(jax.random.PRNGKey(0), x)
    obj = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    tokens = jnp.asarray(rng.integers(0, 256, (B, 70)), jnp.int32)
    full = np.asarray(jax.jit(lambda p, x, t: fns.model.apply({"params": p}, x, obj, t))(params, x, tokens))
    np.testing.assert_allclose(cached_logits(fns, params, x, obj, tokens), full, rtol=1e-5, atol=1e-5)
    actions, sampled = fns.sample_actions(params, x, jax.random.PRNGKey(1))
    assert actions.shape == (B, 70) and sampled.shape == (B, 70) and np.abs(actions).max() <= 1
    d = np.asarray(fns.steps_to_go(params, x))
    assert d.shape == (B,) and np.all((d >= 0) & (d <= 300))
    assert ("llm" in params) == (variant == "mlp-tx-tiny")  # which decoder the variant names
    if joints:  # the tokens are read: other joint tokens, other logits
        other = {**x, "state": jnp.roll(x["state"], 1, axis=0)}
        first = [np.asarray(fns.model.apply({"params": params}, v, obj, method="first_logits")) for v in (x, other)]
        assert np.abs(first[0] - first[1]).max() > 1e-4


def test_an_mlp_decoder_reads_no_input_tokens() -> None:
    from efm.config import default_config

    cfg = default_config("aloha-insertion")
    assert cfg.tokenizer.state_key == "joints" and cfg.model.variant == "mlp-tx-small"
    with pytest.raises(ValueError, match="state_key"):
        cfg.replace(model=ModelConfig(variant="mlp-small"))  # the MLP decoder
    assert aloha_state_config("mlp-small", joint_tokens=False).tokenizer.state_key == ""


def test_transformer_decoder_heads_must_divide_the_width() -> None:
    from efm.config import MlpVariant

    with pytest.raises(ValueError, match="decoder_heads"):
        MlpVariant(width=30, depth=1, decoder_depth=1, decoder_heads=4)
    assert MlpVariant(width=30, depth=1, decoder_heads=4).decoder_depth == 0  # the MLP decoder: no heads


def test_smoothed_targets_spread_over_the_magnitude_bins(fns_params: tuple[EFMFunctions, dict]) -> None:
    """sigma > 0: the cross-entropy against each target spread over its own run of bins (signs
    alone, magnitudes together), against a numpy reference; a narrow sigma is the likelihood."""
    fns, params = fns_params
    x = inputs()
    objective = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    tokens = fns.sample_action_tokens(params, x, jax.random.PRNGKey(0))
    mask = jnp.ones(tokens.shape)
    exact = fns.log_likelihood(params, x, objective, tokens, mask)
    np.testing.assert_allclose(fns.log_likelihood(params, x, objective, tokens, mask, 1e-3), exact, rtol=1e-5)

    logits = np.asarray(fns.model.apply({"params": params}, x, objective, tokens), np.float64)
    valid = fns.vocab.valid_tokens("bc")
    expected = np.zeros(B)
    for i, k in np.ndindex(*tokens.shape):
        t = int(tokens[i, k])
        run = np.arange(2, 13) if t >= 2 else np.array([t])  # magnitudes 2..12; a sign alone
        q = np.exp(-0.5 * ((run - t) / (0.2 * len(run))) ** 2)
        allowed = np.flatnonzero(valid[k])
        logz = np.log(np.exp(logits[i, k, allowed]).sum())
        expected[i] += (q / q.sum()) @ (logits[i, k, run] - logz)
    got = fns.log_likelihood(params, x, objective, tokens, mask, 0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_smoothing_leaves_the_steps_to_go_target_on_its_bin(fns_params: tuple[EFMFunctions, dict]) -> None:
    """d(o, g) is the mean of the steps-to-go distribution: smoothed targets cut off at bin 0
    would teach a finished episode a mean of several bins, out of any success threshold's reach.
    So the steps-to-go loss is the likelihood of the true bin at any sigma."""
    fns, params = fns_params
    x = inputs()
    objective = jnp.full((B,), OBJECTIVE_ID["steps_to_go"], jnp.int32)
    tokens = jnp.asarray(fns.vocab.steps_to_go_targets(np.arange(B)))  # [B, 1]: 0 (success), 1, ...
    mask = jnp.ones(tokens.shape)
    exact = fns.log_likelihood(params, x, objective, tokens, mask)
    np.testing.assert_allclose(fns.log_likelihood(params, x, objective, tokens, mask, 0.1), exact, rtol=1e-5)
