"""The vision-language EFM: prefix-LM mask, causal suffix, KV-cached decoding, text tokens."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efm.config import ModelConfig, TokenizerConfig
from efm.models.efm import OBJECTIVE_ID, EFMFunctions, make_functions, objective_inputs
from efm.models.prefix_lm import IMAGE, STATE, TEXT, make_attn_mask
from efm.models.tokenizers import TextTokenizer, make_vocabulary

B, H, W, TEXT_LEN = 3, 36, 64, 24


def inputs(seed: int = 0, batch: int = B) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    text = TextTokenizer(TEXT_LEN).encode(["push the red moon to the blue cube", "slide it left", "ß→ünïcode"][:batch])
    return {IMAGE: jnp.asarray(rng.integers(0, 256, (batch, 2, H, W, 3)), jnp.uint8), TEXT: jnp.asarray(text)}


@pytest.fixture(scope="module")
def fns_params() -> tuple[EFMFunctions, dict]:
    vocab = make_vocabulary(TokenizerConfig(steps_to_go_bins=50, text_tokens=TEXT_LEN))
    fns = make_functions(ModelConfig(variant="vl-tiny"), vocab)
    params = fns.init(jax.random.PRNGKey(0), inputs())
    # Untrained embeddings are tiny; scale them up so logits differ clearly between tokens.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 100 if "input_embedding" in jax.tree_util.keystr(p) else x, params)
    return fns, params


def test_prefix_lm_mask() -> None:
    valid = jnp.array([[1, 1, 0, 1, 1, 1]], bool)  # token 2 is padding
    ar = jnp.array([[0, 0, 0, 0, 1, 1]])  # prefix of 4, then 2 causal tokens
    m = np.asarray(make_attn_mask(valid, ar))[0]
    want = np.array([
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [1, 1, 0, 1, 1, 1],
    ], bool)
    np.testing.assert_array_equal(m, want)


def test_teacher_forcing_is_causal_and_reads_the_prefix(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    x = inputs()
    length = 5
    objective = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, fns.vocab.size, (B, length)), jnp.int32)
    base = np.asarray(fns.model.apply({"params": params}, x, objective, tokens))
    for k in range(length):
        changed = tokens.at[:, k].set((tokens[:, k] + 7) % fns.vocab.size)
        logits = np.asarray(fns.model.apply({"params": params}, x, objective, changed))
        np.testing.assert_allclose(logits[:, : k + 1], base[:, : k + 1], atol=1e-5,
                                   err_msg=f"token {k} leaked into positions <= {k}")
        assert np.abs(logits[:, k + 1:] - base[:, k + 1:]).max(initial=1.0) > 1e-4
    for key in (IMAGE, TEXT):  # every output reads both frames and the instruction
        other = dict(x)
        other[key] = jnp.roll(x[key], 1, axis=0)
        logits = np.asarray(fns.model.apply({"params": params}, other, objective, tokens))
        assert np.abs(logits - base).max(axis=(1, 2)).min() > 1e-4, key
    previous_frame = dict(x)
    previous_frame[IMAGE] = x[IMAGE].at[:, 1].set(0)
    logits = np.asarray(fns.model.apply({"params": params}, previous_frame, objective, tokens))
    assert np.abs(logits - base).max() > 1e-4, "the previous frame is ignored"


def test_objective_prompt_changes_the_prediction(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    x = inputs()
    a = fns.model.apply({"params": params}, x, jnp.full((B,), 0), method="first_logits")
    b = fns.model.apply({"params": params}, x, jnp.full((B,), 1), method="first_logits")
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def naive_greedy(fns: EFMFunctions, params: dict, x: dict, objective: str, length: int) -> np.ndarray:
    """Greedy decoding by re-running the whole sequence for every token (no cache)."""
    valid = fns.vocab.valid_tokens(objective)
    obj = jnp.full((B,), OBJECTIVE_ID[objective], jnp.int32)
    forward = jax.jit(lambda t: fns.model.apply({"params": params}, x, obj, t))  # causal: zeros after k are unseen
    tokens = np.zeros((B, length), np.int32)
    for k in range(length):
        logits = np.asarray(forward(jnp.asarray(tokens)))[:, k]
        tokens[:, k] = np.where(valid[k], logits, -1e9).argmax(-1)
    return tokens


def test_cached_decoding_equals_full_decoding(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    x = inputs()
    cached = np.asarray(fns.sample_action_tokens(params, x, jax.random.PRNGKey(0), True))
    np.testing.assert_array_equal(cached, naive_greedy(fns, params, x, "bc", fns.vocab.action.num_tokens))
    text = np.asarray(fns.predict_instruction(params, x)) + fns.vocab.text_offset
    hidden = objective_inputs(x, "instruction")  # the instruction is predicted without it
    np.testing.assert_array_equal(text, naive_greedy(fns, params, hidden, "instruction", TEXT_LEN))


@pytest.mark.parametrize("objective", ["bc", "instruction"])
def test_cached_logits_equal_teacher_forced_logits(fns_params: tuple[EFMFunctions, dict], objective: str) -> None:
    """Logits, not argmaxes: the fixture's scaled embeddings make greedy text one token whatever
    the input, so only the logits show that the cache carries the prefix (text hidden or not)."""
    fns, params = fns_params
    x = objective_inputs(inputs(), objective)
    obj = jnp.full((B,), OBJECTIVE_ID[objective], jnp.int32)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, fns.vocab.size, (B, 4)), jnp.int32)
    full = np.asarray(fns.model.apply({"params": params}, x, obj, tokens))
    logits, state = fns.model.apply({"params": params}, x, obj, 4, method="prefill")
    got = [np.asarray(logits)]
    for k in range(3):
        logits, state = fns.model.apply({"params": params}, state, tokens[:, k], jnp.int32(k), method="decode_step")
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(got, axis=1), full, rtol=1e-4, atol=1e-3)


def test_sampled_actions_and_steps_to_go(fns_params: tuple[EFMFunctions, dict]) -> None:
    fns, params = fns_params
    x = inputs()
    actions, tokens = fns.sample_actions(params, x, jax.random.PRNGKey(3))
    assert actions.shape == (B, 2) and np.all(np.abs(actions) <= 1)
    valid = fns.vocab.valid_tokens("bc")
    assert all(valid[k, tokens[:, k]].all() for k in range(tokens.shape[1]))
    d = np.asarray(fns.steps_to_go(params, x))
    assert d.shape == (B,) and np.all((d >= 0) & (d <= 100))


def test_text_round_trip() -> None:
    tok = TextTokenizer(12)
    texts = ["push left", "", "ünï→ß", "a much longer instruction than fits"]
    enc = tok.encode(texts)
    assert enc.shape == (4, 12) and enc.dtype == np.int32
    dec = tok.decode(enc)
    assert dec[:3] == texts[:3]
    assert dec[3] == texts[3][:12]
    cut = tok.decode(TextTokenizer(4).encode(["aü→"]))  # "a" + 2-byte "ü" + (3-byte "→" does not fit)
    assert cut == ["aü"]


def test_word_tokens_shorten_text_and_round_trip() -> None:
    tok = TextTokenizer(12, ("push", "the", "blue", "moon"))
    texts = ["push the blue moon", "push the bluest  moon", "the ü moon", "pushpush"]
    enc = tok.encode(texts)
    np.testing.assert_array_equal(enc[0], [256, 259, 261, 263] + [0] * 8)  # one token per word
    np.testing.assert_array_equal(enc[3][:9], [*b"pushpush", 0])  # only whole words: bytes here
    assert tok.decode(enc) == texts
    short = TextTokenizer(3, tok.words)
    assert short.decode(short.encode(["moon the the the"])) == ["moon the the"]  # truncated by tokens
    assert tok.vocab_size == 256 + 8
    vocab = make_vocabulary(TokenizerConfig(text_tokens=12, text_words=("push", "the", "blue", "moon")))
    assert vocab.valid_tokens("instruction")[0, vocab.text_offset + 263]  # words are outputs too


def test_learned_words_are_the_frequent_ones() -> None:
    from efm.models.tokenizers import learn_words

    texts = ["push the red moon", "push the blue cube", "slide the red cube"]
    assert learn_words(texts, min_count=2) == ("the", "cube", "push", "red")
    assert learn_words(texts, min_count=1, max_words=1) == ("the",)


def test_instruction_targets_end_with_one_terminator() -> None:
    vocab = make_vocabulary(TokenizerConfig(text_tokens=8))
    ids, mask = vocab.instruction_targets(TextTokenizer(8).encode(["abc", "abcdefgh"]))
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0, 0, 0])  # 3 bytes + the 0 that ends it
    np.testing.assert_array_equal(mask[1], np.ones(8))
    assert ids[0, 3] == vocab.text_offset and vocab.valid_tokens("instruction")[3, ids[0, 3]]


def test_state_tokens_are_read_after_the_instruction() -> None:
    """Proprioception tokens join the prefix: they change the action, and cached decoding still
    equals full decoding."""
    vocab = make_vocabulary(TokenizerConfig(steps_to_go_bins=50, text_tokens=TEXT_LEN, state_key="effector",
                                            state_low=(0.0, 0.0), state_high=(1.0, 1.0), state_bins=32))
    fns = make_functions(ModelConfig(variant="vl-tiny"), vocab)
    x = {**inputs(), STATE: jnp.asarray(vocab.state.encode(np.full((B, 2), 0.2)))}
    params = fns.init(jax.random.PRNGKey(0), x)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 100 if "input_embedding" in jax.tree_util.keystr(p) else v, params)
    obj = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    first = jax.jit(lambda x: fns.model.apply({"params": params}, x, obj, method="first_logits"))
    moved = {**x, STATE: jnp.asarray(vocab.state.encode(np.full((B, 2), 0.9)))}
    assert not np.allclose(first(x), first(moved), atol=1e-3)
    cached = np.asarray(fns.sample_action_tokens(params, x, jax.random.PRNGKey(0), True))
    np.testing.assert_array_equal(cached, naive_greedy(fns, params, x, "bc", vocab.action.num_tokens))


def test_conv_stem_keeps_one_token_per_patch() -> None:
    from efm.config import TransformerVariant
    from efm.models.vit import ViT

    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, H, W, 3)), jnp.uint8)
    vit = ViT((12, 16), 16, 1, 32, 2, 24, stem=(8, 8))
    params = vit.init(jax.random.PRNGKey(0), frames)
    assert vit.apply(params, frames).shape == (2, (H // 12) * (W // 16), 24)
    assert params["params"]["embedding"]["kernel"].shape == (3, 4, 8, 16)  # the patch in stem pixels
    with pytest.raises(ValueError, match="patch"):
        TransformerVariant(patch=(18, 32), vit_width=8, vit_depth=1, vit_heads=1, vit_mlp=8, width=8, depth=1,
                           heads=1, head_dim=8, mlp=8, stem=(4, 4))


def test_spatial_keypoints_find_each_channels_peak() -> None:
    from efm.models.vit import spatial_keypoints

    heat = np.full((1, 5, 9, 2), -1e4, np.float32)
    heat[0, 0, 8, 0] = 0.0  # channel 0 fires at the top right pixel, whose centre is 1/n from the edge
    heat[0, 2, 4, 1] = 0.0  # channel 1 at the centre
    np.testing.assert_allclose(spatial_keypoints(jnp.asarray(heat))[0], [[-0.8, 8 / 9], [0.0, 0.0]], atol=1e-6)


def test_keypoint_tokens_follow_the_patch_tokens_and_decode_through_the_cache(cached_logits, monkeypatch) -> None:
    """K keypoint tokens per frame after the patch tokens, each moving with what its detector
    sees; the KV cache gives the teacher-forced logits."""
    from efm.config import TransformerVariant
    from efm.models.vit import ViT

    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, H, W, 3)), jnp.uint8)
    vit = ViT((12, 16), 16, 1, 32, 2, 24, stem=(8,), keypoints=5)
    params = vit.init(jax.random.PRNGKey(0), frames)
    tokens = np.asarray(vit.apply(params, frames))
    patches = (H // 12) * (W // 16)
    assert tokens.shape == (2, patches + 5, 24)
    moved = np.asarray(vit.apply(params, frames.at[:, :, : W // 2].set(0)))  # blank the left half
    assert not np.allclose(moved[:, patches:], tokens[:, patches:], atol=1e-5)

    variant = TransformerVariant(patch=(12, 16), stem=(8,), keypoints=5, vit_width=16, vit_depth=1, vit_heads=2,
                                 vit_mlp=32, width=32, depth=1, heads=2, head_dim=16, mlp=64)
    _cache_matches_teacher_forcing(variant, monkeypatch, cached_logits)


def test_aloha_two_cameras_and_70_tokens_cached_equals_full(cached_logits) -> None:
    """Aloha with cameras: the two stacked images' current and previous frames (4 frames of
    124x80, 16 image tokens each), the instruction and 14 joint tokens; decoding the 70 action
    tokens with the prefix encoded once equals re-running the whole sequence per token."""
    from efm.config import aloha_camera_config

    cfg = aloha_camera_config()
    aloha = cfg.env.aloha
    h, w = 2 * aloha.view_height + aloha.band_height, aloha.view_width
    vocab = make_vocabulary(cfg.tokenizer)
    fns = make_functions(cfg.model, vocab)
    rng = np.random.default_rng(4)
    x = {IMAGE: jnp.asarray(rng.integers(0, 256, (B, 4, h, w, 3)), jnp.uint8),
         TEXT: jnp.asarray(vocab.text.encode(["insert the red peg into the blue socket"] * B)),
         STATE: jnp.asarray(vocab.state.encode(rng.uniform(-1, 1, (B, 14))))}
    params = jax.jit(fns.init)(jax.random.PRNGKey(0), x)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 100 if "input_embedding" in jax.tree_util.keystr(p) else v, params)
    assert params["vision_encoder"]["pos_embedding"].shape[1] == 16  # 4x4 patches of 31x20
    prefix = jax.jit(lambda p, x, o: fns.model.apply({"params": p}, x, o, method="prefix"))
    emb, _ = prefix(params, x, jnp.zeros((B,), jnp.int32))
    assert emb.shape[1] == 4 * 16 + 8 + 14 + 11  # frames, instruction words, joints, "steps to go" prompt
    obj = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    # Inputs are arguments, not closed over: XLA would constant-fold the image tower otherwise.
    forward = jax.jit(lambda p, x, t: fns.model.apply({"params": p}, x, obj, t))
    first = np.asarray(forward(params, x, jnp.zeros((B, 1), jnp.int32)))
    for changed in (x[IMAGE].at[:, 3].set(0), x[IMAGE].at[:, 0].set(0)):  # the wrist's previous frame, the top's
        assert not np.allclose(first, forward(params, {**x, IMAGE: changed}, jnp.zeros((B, 1), jnp.int32)), atol=1e-4)
    tokens = jnp.asarray(rng.integers(0, 256, (B, 70)), jnp.int32)  # any 70 tokens: every position's logits
    full = np.asarray(forward(params, x, tokens))
    np.testing.assert_allclose(cached_logits(fns, params, x, obj, tokens), full, rtol=1e-4, atol=1e-3)
    # Greedy decoding through the cache (one prefix pass, a scan of 69 steps) against the full
    # sequence re-run per token.
    cached = np.asarray(fns.sample_action_tokens(params, x, jax.random.PRNGKey(0), True))
    valid = fns.vocab.valid_tokens("bc")
    greedy = np.zeros((B, 70), np.int32)
    for k in range(70):
        logits = np.asarray(forward(params, x, jnp.asarray(greedy)))[:, k]
        greedy[:, k] = np.where(valid[k], logits, -1e9).argmax(-1)
    np.testing.assert_array_equal(cached, greedy)
    actions, sampled = fns.sample_actions(params, x, jax.random.PRNGKey(1))
    assert actions.shape == (B, 70) and np.abs(actions).max() <= 1
    np.testing.assert_array_equal(actions, vocab.action_from_tokens(sampled))
    d = np.asarray(fns.steps_to_go(params, x))
    assert d.shape == (B,) and np.all((d >= 0) & (d <= 300))


def test_grounded_text_tokens_say_where_their_query_fires(cached_logits, monkeypatch) -> None:
    """Each text token gets where its query fires in its own sample's frames: a token's
    grounding moves with the image of its sample only, padding gets none; through the model,
    the KV cache still gives the teacher-forced logits."""
    from efm.config import TransformerVariant
    from efm.models.vit import ViT

    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (B * 2, H, W, 3)), jnp.uint8)  # 2 per sample
    text = jnp.asarray(np.random.default_rng(1).normal(size=(B, 6, 24)), jnp.float32)
    valid = jnp.asarray(np.arange(6)[None] < np.array([[6], [4], [2]]))
    vit = ViT((12, 16), 16, 1, 32, 2, 24, stem=(8,), grounding=True)
    params = vit.init(jax.random.PRNGKey(0), frames, text, valid)
    tokens, where, rc = (np.asarray(a) for a in vit.apply(params, frames, text, valid))
    assert tokens.shape == (B * 2, (H // 12) * (W // 16), 24) and where.shape == (B, 6, 24)
    assert rc.shape == (B * 2, 6, 2)  # where each token fires in each frame
    assert np.all(where[1, 4:] == 0) and np.all(where[2, 2:] == 0) and np.abs(where[1, :4]).min() > 0
    blanked = frames.at[2:4, :, : W // 2].set(0)  # sample 1's two frames, left half
    _, moved, _ = (np.asarray(a) for a in vit.apply(params, blanked, text, valid))
    assert not np.allclose(moved[1], where[1], atol=1e-5)
    np.testing.assert_array_equal(moved[[0, 2]], where[[0, 2]])
    with pytest.raises(ValueError, match="reads the text"):
        vit.apply(params, frames)
    _, none, rc = vit.apply(params, frames, text[:, :0], valid[:, :0])  # a hidden instruction: nothing to ground
    assert none.shape == (B, 0, 24) and rc.shape == (B * 2, 0, 2)

    variant = TransformerVariant(patch=(12, 16), stem=(8,), keypoints=3, grounding=True, vit_width=16, vit_depth=1,
                                 vit_heads=2, vit_mlp=32, width=32, depth=1, heads=2, head_dim=16, mlp=64,
                                 feature_convs=1)
    fns, params = _cache_matches_teacher_forcing(variant, monkeypatch, cached_logits)
    assert {"grounding_query", "feature_0"} <= set(params["vision_encoder"])
    with pytest.raises(ValueError, match="feature_convs"):  # nothing would read them
        dataclasses.replace(variant, keypoints=0, grounding=False)
    assert fns.predict_instruction(params, inputs()).shape == (B, TEXT_LEN)  # its objective sees no text


def _cache_matches_teacher_forcing(variant, monkeypatch, cached_logits) -> tuple[EFMFunctions, dict]:
    """A model of `variant` (input embeddings scaled up so logits differ between tokens): the
    KV cache gives the teacher-forced logits. Returns its functions and params."""
    from efm.config import MODEL_VARIANTS

    monkeypatch.setitem(MODEL_VARIANTS, "test-variant", variant)
    fns = make_functions(ModelConfig(variant="test-variant"), make_vocabulary(
        TokenizerConfig(steps_to_go_bins=50, text_tokens=TEXT_LEN)))
    x = inputs()
    params = fns.init(jax.random.PRNGKey(1), x)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 100 if "input_embedding" in jax.tree_util.keystr(p) else v, params)
    obj = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    out = jnp.asarray(np.random.default_rng(2).integers(0, fns.vocab.size, (B, 4)), jnp.int32)
    full = np.asarray(fns.model.apply({"params": params}, x, obj, out))
    np.testing.assert_allclose(cached_logits(fns, params, x, obj, out), full, rtol=1e-4, atol=1e-3)
    return fns, params


def test_trim_text_cuts_padding_but_one_in_buckets() -> None:
    from efm.models.prefix_lm import TEXT_BUCKET, trim_text

    text = np.zeros((3, 32), np.int32)
    text[0, :5], text[1, :9] = 7, 8  # the longest text has 9 tokens: 10 columns, rounded up
    rc = np.arange(3 * 32 * 2, dtype=np.float32).reshape(3, 32, 2)
    out = trim_text({"inputs/text": text, "rc": rc, "image": np.ones((3, 5))}, "inputs/text", aligned=("rc",))
    assert TEXT_BUCKET == 8 and out["inputs/text"].shape == (3, 16) and out["rc"].shape == (3, 16, 2)
    np.testing.assert_array_equal(out["rc"], rc[:, :16])
    assert out["image"].shape == (3, 5)
    text[2, :31] = 9  # 31 tokens and one padding: nothing to cut
    assert trim_text({TEXT: text})[TEXT].shape == (3, 32)
    assert trim_text({TEXT: np.zeros((2, 32), np.int32)})[TEXT].shape == (2, TEXT_BUCKET)


def test_trimmed_text_gives_the_same_outputs(monkeypatch, cached_logits) -> None:
    """Cutting the text's padding (what `trim_text` does before every call) changes nothing:
    teacher-forced logits, the KV-cached decoding, steps-to-go and where the grounded tokens'
    queries fire, on a grounded variant reading state tokens after the text."""
    from efm.config import MODEL_VARIANTS, TransformerVariant
    from efm.models.prefix_lm import trim_text

    variant = TransformerVariant(patch=(12, 16), stem=(8,), keypoints=3, grounding=True, vit_width=16, vit_depth=1,
                                 vit_heads=2, vit_mlp=32, width=32, depth=1, heads=2, head_dim=16, mlp=64)
    monkeypatch.setitem(MODEL_VARIANTS, "test-variant", variant)
    vocab = make_vocabulary(TokenizerConfig(steps_to_go_bins=50, text_tokens=32, state_key="xy", state_bins=8,
                                            state_low=(0.0, 0.0), state_high=(1.0, 1.0)))
    fns = make_functions(ModelConfig(variant="test-variant"), vocab)
    rng = np.random.default_rng(0)
    full = {IMAGE: rng.integers(0, 256, (B, 2, H, W, 3)).astype(np.uint8),
            TEXT: TextTokenizer(32).encode(["push the red", "slide it", "ünï"]),
            STATE: rng.integers(1, 9, (B, 2)).astype(np.int32)}
    cut = trim_text(full)
    assert cut[TEXT].shape == (B, 16)
    params = fns.init(jax.random.PRNGKey(1), full)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 100 if "input_embedding" in jax.tree_util.keystr(p) else v, params)
    obj = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    out = jnp.asarray(rng.integers(0, vocab.size, (B, 4)), jnp.int32)
    logits_full, logits_cut = (np.asarray(fns.model.apply({"params": params}, x, obj, out)) for x in (full, cut))
    np.testing.assert_allclose(logits_cut, logits_full, rtol=1e-5, atol=1e-4)
    grounded = [np.asarray(fns.ground(params, x)) for x in (full, cut)]
    real = cut[TEXT] != 0  # the last kept padding reads one neighbour less; padding is masked out
    np.testing.assert_allclose(grounded[1][real], grounded[0][:, :16][real], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fns.steps_to_go(params, cut), fns.steps_to_go(params, full), rtol=1e-5)
    greedy = [np.asarray(fns.sample_action_tokens(params, x, jax.random.PRNGKey(0), True)) for x in (full, cut)]
    np.testing.assert_array_equal(greedy[1], greedy[0])
    np.testing.assert_allclose(cached_logits(fns, params, cut, obj, out), logits_full, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="33 text tokens"):
        fns.model.apply({"params": params}, {**full, TEXT: np.ones((B, 33), np.int32)}, obj, out)
