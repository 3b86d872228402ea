"""Tokenizers (Appendix E) with the paper's configurations."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from efm.config import TokenizerConfig, default_config
from efm.models.tokenizers import (
    SignMagnitudeTokenizer,
    StateTokenizer,
    StepsToGoTokenizer,
    UniformTokenizer,
    Vocabulary,
    make_vocabulary,
)

# LanguageTable-like: 2 dims, magnitudes 0..10.
LT = SignMagnitudeTokenizer(action_dim=2, magnitude_bins=11, max_abs=1.0)
# Aloha-like: 14 joints x 5 future steps, 256 uniform bins over [-1, 1].
ALOHA = UniformTokenizer(action_dim=70, bins=256, max_abs=1.0)


def representable_values(tok: SignMagnitudeTokenizer) -> np.ndarray:
    mags = np.arange(tok.magnitude_bins) / (tok.magnitude_bins - 1) * tok.max_abs
    return np.unique(np.concatenate([mags, -mags])).astype(np.float32)  # 21: +-0 are one value


def test_sign_magnitude_round_trips_every_representable_action() -> None:
    values = representable_values(LT)
    assert len(values) == 2 * LT.magnitude_bins - 1
    actions = np.array(list(itertools.product(values, values)), np.float32)  # every pair
    tokens = LT.encode(actions)
    assert tokens.shape == (len(actions), 4)
    np.testing.assert_array_equal(LT.decode(tokens), actions)
    # And every distinct action has a distinct code.
    assert len({tuple(t) for t in tokens}) == len(actions)


def test_sign_magnitude_token_layout() -> None:
    tokens = LT.encode(np.array([[0.3, -0.7]]))
    np.testing.assert_array_equal(tokens, [[0, 2 + 3, 1, 2 + 7]])  # [+, m3, -, m7]


def test_sign_magnitude_zero_has_canonical_plus_sign() -> None:
    tokens = LT.encode(np.array([[0.0, -0.0], [-0.01, 0.02]]))  # all quantize to magnitude 0
    np.testing.assert_array_equal(tokens[:, 0::2], 0)
    np.testing.assert_array_equal(tokens[:, 1::2], 2)


def test_sign_magnitude_quantizes_to_nearest_bin() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, size=(500, 2))
    decoded = LT.decode(LT.encode(x))
    grid = representable_values(LT)
    nearest = grid[np.argmin(np.abs(x[..., None] - grid), axis=-1)]
    np.testing.assert_allclose(decoded, nearest, atol=1e-6)
    assert np.max(np.abs(decoded - x)) <= 0.05 + 1e-6


def test_sign_magnitude_clips_out_of_range() -> None:
    decoded = LT.decode(LT.encode(np.array([[3.0, -7.5], [1.2, -1.0001]])))
    np.testing.assert_array_equal(decoded, [[1.0, -1.0], [1.0, -1.0]])


def test_sign_magnitude_valid_tokens() -> None:
    valid = LT.valid_tokens()
    assert valid.shape == (4, 13)
    for pos in (0, 2):  # sign positions: only + and -
        np.testing.assert_array_equal(np.flatnonzero(valid[pos]), [0, 1])
    for pos in (1, 3):  # magnitude positions: only magnitudes
        np.testing.assert_array_equal(np.flatnonzero(valid[pos]), np.arange(2, 13))


def test_uniform_round_trips_bin_centers() -> None:
    centers = ALOHA.decode(np.arange(256))
    assert centers[0] == -1.0 and centers[-1] == 1.0
    tokens = ALOHA.encode(np.tile(centers[:, None], (1, 70)))
    np.testing.assert_array_equal(tokens, np.tile(np.arange(256)[:, None], (1, 70)))


def test_uniform_quantization_error_bounded_by_half_bin() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, size=(64, 70))
    tokens = ALOHA.encode(x)
    assert tokens.shape == (64, 70) and tokens.min() >= 0 and tokens.max() <= 255
    half_bin = 0.5 * 2.0 / 255
    assert np.max(np.abs(ALOHA.decode(tokens) - x)) <= half_bin + 1e-6
    np.testing.assert_array_equal(ALOHA.encode(np.array([[-5.0] * 70, [5.0] * 70])),
                                  [[0] * 70, [255] * 70])
    assert ALOHA.valid_tokens().shape == (70, 256) and ALOHA.valid_tokens().all()


def test_steps_to_go_width_one_maps_steps_to_themselves() -> None:
    tok = StepsToGoTokenizer(bins=100, max_steps=100.0)
    steps = np.arange(100)
    np.testing.assert_array_equal(tok.encode(steps), steps)
    np.testing.assert_array_equal(tok.bin_values(), steps.astype(np.float32))


@pytest.mark.parametrize("bins", [50, 30, 300])  # the paper's 50 bins over 0..100; widths 3.33 and 0.33
def test_steps_to_go_bin_value_is_the_mean_step_it_holds(bins: int) -> None:
    tok = StepsToGoTokenizer(bins=bins, max_steps=100.0)
    steps = np.arange(100)
    if bins == 50:
        np.testing.assert_array_equal(tok.encode(steps), steps // 2)
    values = tok.bin_values()
    for k in range(bins):
        members = steps[tok.encode(steps) == k]
        # a bin narrower than a step may hold no integer: its midpoint
        assert values[k] == pytest.approx(members.mean() if len(members) else (k + 0.5) * tok.width)


def test_steps_to_go_clips_past_max() -> None:
    tok = StepsToGoTokenizer(bins=50, max_steps=100.0)
    np.testing.assert_array_equal(tok.encode(np.array([100, 101, 250, 10**6])), [49] * 4)
    assert tok.encode(np.array(-3)) == 0


def test_vocabulary_offsets_and_valid_tokens() -> None:
    vocab = Vocabulary(LT, StepsToGoTokenizer(50, 100.0))
    assert vocab.size == 13 + 50
    assert vocab.steps_to_go_offset == 13
    assert vocab.max_target_length == 4

    np.testing.assert_array_equal(vocab.steps_to_go_targets(np.array([0, 3, 99])), [[13], [14], [62]])
    np.testing.assert_array_equal(vocab.action_targets(np.array([[0.5, -0.1]])), [[0, 7, 1, 3]])

    bc = vocab.valid_tokens("bc")
    assert bc.shape == (4, 63)
    np.testing.assert_array_equal(bc[:, :13], LT.valid_tokens())
    assert not bc[:, 13:].any()  # BC never emits steps-to-go tokens

    stg = vocab.valid_tokens("steps_to_go")
    np.testing.assert_array_equal(np.flatnonzero(stg[0]), np.arange(13, 63))
    # Padded positions admit exactly one fixed token (masked out of losses anyway).
    assert (stg[1:].sum(-1) == 1).all()

    with pytest.raises(ValueError, match="unknown objective"):
        vocab.valid_tokens("language")


def test_make_vocabulary_from_config() -> None:
    vocab = make_vocabulary(TokenizerConfig(action_scheme="uniform", action_dim=70, uniform_bins=256,
                                            steps_to_go_bins=50, steps_to_go_max=100.0))
    assert isinstance(vocab.action, UniformTokenizer)
    assert vocab.size == 256 + 50 and vocab.max_target_length == 70
    vocab = make_vocabulary(TokenizerConfig())
    assert isinstance(vocab.action, SignMagnitudeTokenizer) and vocab.action.num_tokens == 4


def test_state_tokens_round_trip_bin_centres_and_clip() -> None:
    tok = StateTokenizer("effector_translation", (0.0, -1.0), (1.0, 1.0), bins=5)
    centres = np.array([[0.0, -1.0], [0.25, -0.5], [1.0, 1.0]])
    tokens = tok.encode(centres)
    np.testing.assert_array_equal(tokens, [[1, 1], [2, 2], [5, 5]])  # 0 stays free: "no state"
    np.testing.assert_allclose(tok.decode(tokens), centres, atol=1e-6)
    np.testing.assert_array_equal(tok.encode(np.array([[-3.0, 9.0]])), [[1, 5]])
    with pytest.raises(ValueError, match="reads 2 values"):
        tok.encode(np.zeros((4, 3)))


def test_state_tokens_have_their_own_ids() -> None:
    state = StateTokenizer("joints", (-1.0,) * 14, (1.0,) * 14, bins=256)
    vocab = make_vocabulary(TokenizerConfig(steps_to_go_bins=50, text_tokens=8, state_key="joints",
                                            state_low=(-1.0,) * 14, state_high=(1.0,) * 14))
    assert vocab.state == state
    assert vocab.state_offset == 13 + 50 and vocab.text_offset == 13 + 50 + 256
    assert vocab.size == 13 + 50 + 256 + 256 + 1 and vocab.begin == vocab.size - 1
    for objective in ("bc", "steps_to_go", "instruction"):  # an input, never an output
        assert not vocab.valid_tokens(objective)[:, vocab.state_offset:vocab.text_offset].any()


def test_shared_state_tokens_are_the_action_tokens_of_their_bins() -> None:
    """E.2's joint tokens as RT-2's numbers: joint value x reads as the token a target x is
    written in, so the copy the first target of a chunk nearly is needs no learnt alignment."""
    joints = dict(state_key="joints", state_low=(-1.0,) * 14, state_high=(1.0,) * 14)
    base = TokenizerConfig(action_scheme="uniform", action_dim=70, steps_to_go_bins=301, steps_to_go_max=300.0)
    own = make_vocabulary(dataclasses.replace(base, **joints))
    shared = make_vocabulary(dataclasses.replace(base, **joints, state_shares_action_tokens=True))
    assert shared.size == make_vocabulary(base).size == own.size - 256  # no ids of their own
    values = np.random.default_rng(0).uniform(-1.2, 1.2, (50, 14))
    np.testing.assert_array_equal(shared.state.encode(values) + shared.state_offset - 1,
                                  shared.action_targets(np.tile(values, 5))[:, :14])
    np.testing.assert_array_equal(shared.ordinal_runs(), make_vocabulary(base).ordinal_runs())
    for bad in (dict(state_low=(-0.5,) * 14), dict(state_bins=128), dict(action_scheme="sign_magnitude")):
        with pytest.raises(ValueError, match="state_shares_action_tokens"):
            dataclasses.replace(base, **{**joints, **bad}, state_shares_action_tokens=True)


def test_state_tokenizer_config_is_checked() -> None:
    with pytest.raises(ValueError, match="state_high"):
        TokenizerConfig(state_key="e", state_low=(0.0, 0.0), state_high=(1.0,))
    with pytest.raises(ValueError, match="state_low"):
        TokenizerConfig(state_key="e")
    with pytest.raises(ValueError, match="state_high"):
        TokenizerConfig(state_key="e", state_low=(1.0,), state_high=(0.0,))


def test_aloha_tokenization_as_configured() -> None:
    """Appendix E.2 from the aloha-insertion config: 70 action tokens of 256 uniform bins over
    [-1, 1] (14 joints x a chunk of 5), 14 joint-input tokens of 256 bins after the instruction,
    steps-to-go 0..300 one token per value (301 tokens)."""
    from efm.config import aloha_camera_config, default_config

    state_mode = make_vocabulary(default_config("aloha-insertion").tokenizer)
    joints = StateTokenizer("joints", (-1.0,) * 14, (1.0,) * 14, bins=256)
    assert state_mode.action == ALOHA and state_mode.state == joints and state_mode.text is None
    assert state_mode.state_shared and state_mode.state_offset == 0  # the joints read as action tokens
    vocab = make_vocabulary(aloha_camera_config().tokenizer)
    assert vocab.action == ALOHA and vocab.max_target_length == 70
    assert vocab.state == StateTokenizer("joints", (-1.0,) * 14, (1.0,) * 14, bins=256)
    assert vocab.cameras == ("rgb", "rgb_wrist")
    stg = vocab.steps_to_go
    assert stg.vocab_size == 301
    np.testing.assert_array_equal(stg.bin_values(), np.arange(301))
    np.testing.assert_array_equal(stg.encode(np.arange(302)), np.minimum(np.arange(302), 300))

    rng = np.random.default_rng(0)
    centres = ALOHA.decode(rng.integers(0, 256, (50, 70)))  # 70-token round trip, exact at bin centres
    tokens = vocab.action_targets(centres)
    assert tokens.shape == (50, 70) and tokens.min() >= 0 and tokens.max() < 256
    np.testing.assert_array_equal(vocab.action_from_tokens(tokens), centres)
    a = rng.uniform(-1, 1, (200, 70))
    assert np.abs(vocab.action_from_tokens(vocab.action_targets(a)) - a).max() <= 1 / 255 + 1e-6  # half a bin

    joints = vocab.state.decode(rng.integers(1, 257, (50, 14)))  # 14-token round trip
    j_tokens = vocab.state.encode(joints)
    assert j_tokens.shape == (50, 14) and j_tokens.min() >= 1 and j_tokens.max() <= 256
    np.testing.assert_allclose(vocab.state.decode(j_tokens), joints, atol=1e-6)
    j = rng.uniform(-1, 1, (200, 14))
    assert np.abs(vocab.state.decode(vocab.state.encode(j)) - j).max() <= 1 / 255 + 1e-6
    assert vocab.text.encode(["insert the red peg into the blue socket"])[0].tolist() == [
        256, 259, 261, 263, 265, 259, 267, 269]  # one token per word, all 8 fit


def test_camera_keys_are_checked() -> None:
    with pytest.raises(ValueError, match=r"tokenizer\.cameras"):
        TokenizerConfig(cameras=())
    with pytest.raises(ValueError, match=r"tokenizer\.cameras"):
        TokenizerConfig(cameras=("rgb", "rgb"))


def test_locate_answers_only_in_position_tokens_and_round_trips() -> None:
    cfg = default_config("tabletop").tokenizer
    vocab = make_vocabulary(cfg)
    valid = vocab.valid_tokens("locate")
    state = np.zeros(vocab.size, bool)
    state[vocab.state_offset:vocab.state_offset + cfg.state_bins] = True
    assert vocab.locate_length == 9 * vocab.state.dims  # up to 8 blocks and the effector
    for k in range(vocab.locate_length):
        np.testing.assert_array_equal(valid[k], state)
    assert not valid[vocab.locate_length:, 1:].any()  # the rest pads
    xy = np.array([[0.15, -0.3048], [0.6, 0.3048], [0.37, 0.01]])
    tokens = vocab.position_targets(xy)
    assert state[tokens].all()
    half_bin = (np.subtract(cfg.state_high, cfg.state_low)) / (cfg.state_bins - 1) / 2
    assert (np.abs(vocab.position_from_tokens(tokens) - xy) <= half_bin + 1e-6).all()


def test_ordinal_runs_group_the_bins_of_one_quantity() -> None:
    vocab = make_vocabulary(default_config("tabletop").tokenizer)
    runs = vocab.ordinal_runs()
    assert runs.shape == (vocab.size, 2)
    assert (runs[:2] == [[0, 1], [1, 1]]).all()  # the signs stand alone
    assert (runs[2:13] == [2, 11]).all()  # the 11 magnitudes are one run
    k, off = vocab.steps_to_go.vocab_size, vocab.steps_to_go_offset
    stg = np.arange(off, off + k)  # one-hot: d(o, g) must reach 0 at success (see ordinal_runs)
    assert (runs[stg, 0] == stg).all() and (runs[stg, 1] == 1).all()
    n = vocab.state.vocab_size
    assert (runs[vocab.state_offset:vocab.state_offset + n] == [vocab.state_offset, n]).all()
    text = np.arange(vocab.text_offset, vocab.size)  # text and begin: no order
    assert (runs[text, 0] == text).all() and (runs[text, 1] == 1).all()
    for start, length in runs:  # every run lies within one objective's valid tokens
        assert start + length <= vocab.size
    uniform = Vocabulary(ALOHA, StepsToGoTokenizer(301, 301.0))
    assert (uniform.ordinal_runs()[:256] == [0, 256]).all()
