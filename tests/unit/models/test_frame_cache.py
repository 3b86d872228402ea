"""The image tower's per-frame work kept across control steps: the same outputs as running the
tower over every frame, for the frames' new part only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efm.config import MODEL_VARIANTS, ModelConfig, TokenizerConfig, TransformerVariant
from efm.models.efm import OBJECTIVE_ID, make_functions
from efm.models.frame_cache import FrameCache
from efm.models.prefix_lm import IMAGE, IMAGE_TOKENS, IMAGE_WHERE, STATE, TEXT
from efm.models.tokenizers import TextTokenizer, make_vocabulary

B, H, W = 3, 36, 64
GROUNDED = TransformerVariant(patch=(12, 16), stem=(8,), keypoints=3, grounding=True, vit_width=16, vit_depth=1,
                              vit_heads=2, vit_mlp=32, width=32, depth=1, heads=2, head_dim=16, mlp=64,
                              feature_convs=1)
PLAIN = TransformerVariant(patch=(12, 16), vit_width=16, vit_depth=1, vit_heads=2, vit_mlp=32, width=32, depth=1,
                           heads=2, head_dim=16, mlp=64)


def control_steps(steps: int) -> list[dict[str, np.ndarray]]:
    """Frame-pair inputs of B envs over `steps` control steps, as `FrameHistory` makes them: the
    previous frame is the last step's current one, but at step 2 env 1 starts a new episode (its
    previous frame is its first) with a new instruction."""
    rng = np.random.default_rng(0)
    texts = ["push the red moon to the blue cube", "slide it left", "ünï"]
    state = rng.integers(1, 9, (B, 2)).astype(np.int32)
    current = rng.integers(0, 256, (B, H, W, 3)).astype(np.uint8)
    out = []
    for t in range(steps):
        previous, current = current, rng.integers(0, 256, (B, H, W, 3)).astype(np.uint8)
        if t == 2:
            previous[1], texts[1] = current[1], "move the star up"
        out.append({IMAGE: np.stack([current, previous], axis=1), TEXT: TextTokenizer(32).encode(texts),
                    STATE: state})
    return out


@pytest.fixture
def model(monkeypatch, request):
    monkeypatch.setitem(MODEL_VARIANTS, "test-variant", request.param)
    vocab = make_vocabulary(TokenizerConfig(steps_to_go_bins=50, text_tokens=32, state_key="xy", state_bins=8,
                                            state_low=(0.0, 0.0), state_high=(1.0, 1.0)))
    fns = make_functions(ModelConfig(variant="test-variant"), vocab)
    params = fns.init(jax.random.PRNGKey(1), control_steps(1)[0])
    params = jax.tree_util.tree_map_with_path(  # untrained embeddings are tiny: make logits differ
        lambda p, v: v * 100 if "input_embedding" in jax.tree_util.keystr(p) else v, params)
    return fns, params


@pytest.mark.parametrize("model", [GROUNDED, PLAIN], indirect=True, ids=["grounded", "plain"])
def test_cached_frames_give_the_outputs_of_the_whole_tower(model) -> None:
    fns, params = model
    cache = FrameCache(fns, params)
    obj = jnp.full((B,), OBJECTIVE_ID["bc"], jnp.int32)
    out = jnp.asarray(np.random.default_rng(2).integers(0, fns.vocab.size, (B, 4)), jnp.int32)
    for t, x in enumerate(control_steps(4)):
        before = cache.encoded, cache.reused
        coded = cache(x)
        assert IMAGE not in coded and coded[IMAGE_TOKENS].shape[:2] == (B, 2)
        assert (IMAGE_WHERE in coded) == (fns.model.variant.grounding)
        # step 0 encodes every frame; then only the current ones, and env 1's new episode's
        # first frame once (its previous frame is the same frame, same instruction)
        assert (cache.encoded - before[0], cache.reused - before[1]) == ((2 * B, 0) if t == 0 else (B, B))
        np.testing.assert_allclose(fns.model.apply({"params": params}, coded, obj, out),
                                   fns.model.apply({"params": params}, x, obj, out), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(fns.steps_to_go(params, coded), fns.steps_to_go(params, x), rtol=1e-5, atol=1e-5)
        greedy = [np.asarray(fns.sample_action_tokens(params, y, jax.random.PRNGKey(0), True)) for y in (coded, x)]
        np.testing.assert_array_equal(*greedy)
    assert len(cache._codes) <= 4 * B  # at most twice a call's frames are kept


@pytest.mark.parametrize("model", [GROUNDED], indirect=True, ids=["grounded"])
def test_a_frame_under_another_instruction_is_encoded_again(model) -> None:
    """Where a text token fires depends on the text: the same frames with other instructions are
    not the same codes."""
    fns, params = model
    cache = FrameCache(fns, params)
    x = control_steps(1)[0]
    cache(x)
    swapped = {**x, TEXT: x[TEXT][::-1].copy()}
    got = cache(swapped)
    assert cache.reused == 2  # only sample 1 (the middle one) kept its instruction
    np.testing.assert_allclose(fns.steps_to_go(params, got), fns.steps_to_go(params, swapped), rtol=1e-5, atol=1e-5)


def test_models_without_an_image_tower_pass_through() -> None:
    from efm.config import default_config

    cfg = default_config("pointmass")
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    x = {"state": np.zeros((2, 4), np.float32)}
    assert FrameCache(fns, None)(x) is x
