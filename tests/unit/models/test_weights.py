"""Starting weights from a big_vision .npz (PaliGemma's layout) or an Orbax checkpoint."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from efm import checkpoints
from efm.config import ModelConfig, TokenizerConfig
from efm.models.efm import make_functions
from efm.models.prefix_lm import IMAGE, TEXT
from efm.models.tokenizers import TextTokenizer, make_vocabulary
from efm.models.weights import load_initial, read_big_vision_npz, write_big_vision_npz

VOCAB = make_vocabulary(TokenizerConfig(steps_to_go_bins=50, text_tokens=16))


def init(seed: int) -> dict:
    fns = make_functions(ModelConfig(variant="vl-tiny"), VOCAB)
    x = {IMAGE: jnp.zeros((1, 2, 36, 64, 3), jnp.uint8), TEXT: jnp.asarray(TextTokenizer(16).encode(["go"]))}
    return jax.device_get(fns.init(jax.random.PRNGKey(seed), x))


def leaves(params: dict, part: str) -> dict:
    return {k: v for k, v in traverse_util.flatten_dict(params).items() if k[0] == part}


@pytest.fixture(scope="module")
def source() -> dict:
    return init(1)


def test_npz_layout_is_big_vision(source: dict, tmp_path: Path) -> None:
    path = tmp_path / "pg.npz"
    write_big_vision_npz(path, source)
    with np.load(path) as npz:
        keys = set(npz.files)
        assert "params/img/embedding/kernel" in keys and "params/llm/embedder/input_embedding" in keys
        assert "params/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in keys  # scanned: stacked
        assert npz["params/llm/layers/attn/q_einsum/w"].dtype.kind == "V"  # bf16 stored as void
        assert npz["params/llm/layers/attn/q_einsum/w"].shape[0] == 1  # one layer
    flat = read_big_vision_npz(path)
    assert flat[("llm", "layers_0", "attn", "q_einsum", "w")].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("parts", [("vision_encoder",), ("llm",), ("vision_encoder", "llm")])
def test_load_towers_from_npz(source: dict, tmp_path: Path, parts: tuple[str, ...]) -> None:
    path = tmp_path / "pg.npz"
    write_big_vision_npz(path, source, bfloat16=False)
    scratch = init(2)
    loaded = load_initial(ModelConfig(variant="vl-tiny", init="big_vision", init_path=str(path), init_parts=parts),
                          scratch)
    for part in ("vision_encoder", "llm"):
        want = source if part in parts else scratch
        got, exp = leaves(loaded, part), leaves(want, part)
        assert got.keys() == exp.keys()
        for k in exp:
            np.testing.assert_array_equal(got[k], exp[k], err_msg=str(k))


def test_bfloat16_npz_loads_rounded(source: dict, tmp_path: Path) -> None:
    path = tmp_path / "pg.npz"
    write_big_vision_npz(path, source)
    loaded = load_initial(ModelConfig(variant="vl-tiny", init="big_vision", init_path=str(path)), init(2))
    k = ("llm", "final_norm", "scale")
    w = ("vision_encoder", "head", "kernel")
    flat, src = traverse_util.flatten_dict(loaded), traverse_util.flatten_dict(source)
    assert flat[w].dtype == np.float32
    np.testing.assert_allclose(flat[w], src[w], rtol=1e-2, atol=1e-3)
    np.testing.assert_array_equal(flat[k], src[k])


def test_mismatch_names_the_arrays(source: dict, tmp_path: Path) -> None:
    bad = traverse_util.flatten_dict(source)
    bad[("vision_encoder", "head", "kernel")] = np.zeros((3, 3), np.float32)
    del bad[("llm", "final_norm", "scale")]
    path = tmp_path / "bad.npz"
    write_big_vision_npz(path, traverse_util.unflatten_dict(bad))
    cfg = ModelConfig(variant="vl-tiny", init="big_vision", init_path=str(path))
    with pytest.raises(ValueError, match=r"llm/final_norm/scale.*vision_encoder/head/kernel: checkpoint \(3, 3\)"):
        load_initial(cfg, init(2))
    with pytest.raises(FileNotFoundError, match="no big_vision checkpoint"):
        load_initial(ModelConfig(variant="vl-tiny", init="big_vision", init_path=str(tmp_path / "none.npz")),
                     init(2))


def test_load_from_orbax_params(source: dict, tmp_path: Path) -> None:
    checkpoints.save_params(tmp_path / "policy", source)
    loaded = load_initial(ModelConfig(variant="vl-tiny", init="orbax", init_path=str(tmp_path / "policy"),
                                      init_parts=("vision_encoder",)), init(2))
    for k, v in leaves(source, "vision_encoder").items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(loaded)[k], v)
