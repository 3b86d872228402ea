"""efm.stages' guards of an output directory and of a stage's inputs (no training runs here)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from efm.config import RunConfig, debug_config
from efm.data import rlds as rlds_io
from efm.envs.base import Episode
from efm.stages import CONFIG, evaluate_stage, select_stage, self_improve_stage, sft_stage


class _Ran(Exception):
    """Raised by the stubbed trainer: the stage got past its checks."""


def _ran(*args, **kwargs):
    raise _Ran


def _dataset(path: Path, first: int, n: int = 6) -> Path:
    """n episodes with positional ids (demo-%06d, as `efm dataset` names them)."""
    episodes = [Episode(observations={"position": np.full((3, 2), i, np.float32)},
                        actions=np.full((2, 2), 0.1 * i, np.float32), instruction=f"go {i}",
                        success=True, episode_id=f"demo-{k:06d}", optimal_length=2.0)
                for k, i in enumerate(range(first, first + n))]
    rlds_io.write_episodes(episodes, path)
    return path


def test_sft_refuses_an_output_directory_of_other_inputs(tmp_path: Path, monkeypatch) -> None:
    import efm.sft.trainer

    monkeypatch.setattr(efm.sft.trainer, "run_sft", _ran)
    cfg, out = debug_config(), tmp_path / "sft"
    a, b, v = _dataset(tmp_path / "a", 0), _dataset(tmp_path / "b", 100), _dataset(tmp_path / "v", 50)
    for _ in range(2):  # a fresh run, then a resume with the same inputs
        with pytest.raises(_Ran):
            sft_stage(cfg, a, v, out)
    with pytest.raises(_Ran):  # nothing written but the records: a run refused at its checks, taken over
        sft_stage(cfg, b, v, out)
    with pytest.raises(_Ran):
        sft_stage(cfg.overridden({"sft": {"learning_rate": 1e-4}}), a, v, out)
    with pytest.raises(_Ran):
        sft_stage(cfg, a, v, out)
    (out / "checkpoints").mkdir()  # the run has begun: its directory is its own
    with pytest.raises(ValueError, match="different config"):
        sft_stage(cfg.overridden({"sft": {"learning_rate": 1e-4}}), a, v, out)
    with pytest.raises(ValueError, match="different inputs") as e:
        sft_stage(cfg, b, v, out)  # same size, same ids, other episodes
    assert f"train: {a.resolve()}" in str(e.value) and f"now {b.resolve()}" in str(e.value)
    with pytest.raises(ValueError, match="validation: "):
        sft_stage(cfg, a, b, out)
    shutil.copytree(a, tmp_path / "a_copy")  # a moved copy is the same dataset
    with pytest.raises(_Ran):
        sft_stage(cfg, tmp_path / "a_copy", v, out)
    (out / "inputs.json").unlink()  # a directory made before inputs were recorded is accepted
    with pytest.raises(_Ran):
        sft_stage(cfg, b, v, out)
    assert json.loads((out / "inputs.json").read_text())["train"]["path"] == str(b.resolve())


def _selection(path: Path, cfg: RunConfig) -> Path:
    path.mkdir()
    (path / CONFIG).write_text(cfg.to_json())
    return path


def test_self_improve_refuses_an_output_directory_of_another_selection(tmp_path: Path, monkeypatch) -> None:
    import efm.self_improve.loop

    monkeypatch.setattr(efm.self_improve.loop, "run_self_improve", _ran)
    cfg, out = debug_config(), tmp_path / "si"
    sel, sel2 = _selection(tmp_path / "sel", cfg), _selection(tmp_path / "sel2", cfg)
    for _ in range(2):
        with pytest.raises(_Ran):
            self_improve_stage(cfg, sel, out)
    (out / "rounds.json").write_text("[]")  # the run has begun
    with pytest.raises(ValueError, match=r"different inputs.*select: "):
        self_improve_stage(cfg, sel2, out)
    (out / "inputs.json").unlink()
    with pytest.raises(_Ran):
        self_improve_stage(cfg, sel2, out)


def test_select_and_evaluate_refuse_an_output_directory_of_other_inputs(tmp_path: Path, monkeypatch) -> None:
    """They recompute on every run, so the same inputs run again; other inputs would leave the
    first run's files (another policy's GIFs, checkpoints) beside the second's."""
    import efm.models.efm
    import efm.sft.select

    monkeypatch.setattr(efm.sft.select, "run_select", _ran)
    monkeypatch.setattr(efm.models.efm, "make_functions", _ran)
    cfg = debug_config()
    sft_a, sft_b = tmp_path / "sft_a", tmp_path / "sft_b"
    sft_a.mkdir()
    sft_b.mkdir()
    select = tmp_path / "select"
    with pytest.raises(_Ran):
        select_stage(cfg, sft_a, select)
    (select / "selection.json").write_text("{}")  # the run has written its outputs
    with pytest.raises(_Ran):
        select_stage(cfg, sft_a, select)
    with pytest.raises(ValueError, match=r"different inputs.*sft: "):
        select_stage(cfg, sft_b, select)

    sel, sel2 = _selection(tmp_path / "sel", cfg), _selection(tmp_path / "sel2", cfg)
    ev = tmp_path / "eval"
    with pytest.raises(_Ran):
        evaluate_stage(cfg, sel, None, ev)
    (ev / "metrics.json").write_text("{}")
    with pytest.raises(_Ran):
        evaluate_stage(cfg, sel, None, ev)
    with pytest.raises(ValueError, match=r"different inputs.*select: "):
        evaluate_stage(cfg, sel2, None, ev)
    with pytest.raises(ValueError, match=r"self_improve: none, now "):
        evaluate_stage(cfg, sel, tmp_path / "si", ev)


def _other_model(cfg: RunConfig) -> RunConfig:
    variant = "mlp-small" if cfg.model.variant != "mlp-small" else "mlp-base"
    return cfg.replace(tokenizer=dataclasses.replace(cfg.tokenizer, steps_to_go_max=200.0),
                       model=dataclasses.replace(cfg.model, variant=variant))


def _trained_elsewhere(cfg: RunConfig) -> RunConfig:
    """Started from other weights, in bfloat16: read alike."""
    return cfg.replace(model=dataclasses.replace(cfg.model, init="orbax", init_path="/elsewhere/params",
                                                 compute_dtype="bfloat16"))


@pytest.mark.parametrize("stage", ["evaluate", "self_improve"])
def test_a_selection_of_another_model_or_tokenizer_config_is_refused(tmp_path: Path, monkeypatch,
                                                                     stage: str) -> None:
    import efm.self_improve.loop

    monkeypatch.setattr(efm.self_improve.loop, "run_self_improve", _ran)
    cfg, out = debug_config(), tmp_path / "out"
    sel = _selection(tmp_path / "sel", _other_model(cfg))
    run = {"evaluate": lambda s, o=out: evaluate_stage(cfg, s, None, o),
           "self_improve": lambda s, o=out: self_improve_stage(cfg, s, o)}[stage]
    with pytest.raises(ValueError, match="another model/tokenizer config") as e:
        run(sel)
    assert "tokenizer.steps_to_go_max: 100.0 here, 200.0 in the selection" in str(e.value)
    assert "model.variant" in str(e.value) and not out.exists()
    if stage == "self_improve":  # the same config, one trained from elsewhere, or none recorded (made before), passes
        with pytest.raises(_Ran):
            run(_selection(tmp_path / "same", cfg))
        with pytest.raises(_Ran):
            run(_selection(tmp_path / "elsewhere", _trained_elsewhere(cfg)), tmp_path / "out3")
        (sel / CONFIG).unlink()
        with pytest.raises(_Ran):
            run(sel, tmp_path / "out2")
