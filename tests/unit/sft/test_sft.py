"""Stage 1: training, validation history, selection and exact resumption."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from efm import checkpoints
from efm.config import RunConfig, SelectConfig, check_trainable, debug_config
from efm.data import rlds
from efm.data.stage1 import Stage1Data
from efm.models.efm import GROUND_MASK, GROUND_RC, OBJECTIVE_ID, make_functions
from efm.models.prefix_lm import split_inputs
from efm.models.tokenizers import make_vocabulary
from efm.sft.history import keep_steps, pick_step, stalled
from efm.sft.select import SELECTION, load_selected, run_select
from efm.sft.trainer import load_history, objective_nll, restore_params, run_sft
from efm.stages import generate_demonstrations

NUM_STEPS = 40


def sft_config(num_steps: int = NUM_STEPS) -> RunConfig:
    cfg = debug_config()
    return cfg.replace(sft=dataclasses.replace(cfg.sft, num_steps=num_steps, batch_size=16, eval_every=10,
                                               checkpoint_every=10, warmup_steps=5))


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, validation) RLDS directories of debug pointmass demonstrations."""
    eps = list(generate_demonstrations(debug_config(), 24, seed=0))
    root = tmp_path_factory.mktemp("episodes")
    return (rlds.write_episodes(eps[:20], root / "train"),
            rlds.write_episodes(eps[20:], root / "validation", split="validation"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, episodes) -> tuple[Path, object]:
    """One uninterrupted run, shared by the tests that only read it."""
    workdir = tmp_path_factory.mktemp("sft_a")
    result = run_sft(sft_config(), *episodes, workdir, progress=False)
    return workdir, result


def assert_trees_equal(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-7, err_msg=str(path))


# ----------------------------------------------------------------------------- training


def test_training_lowers_loss_and_records_history(trained) -> None:
    workdir, result = trained
    history = result.history
    assert result.final_step == NUM_STEPS
    assert [h["step"] for h in history] == [10.0, 20.0, 30.0, 40.0]
    for row in history:
        assert {"val/bc_loss", "val/steps_to_go_loss", "train/loss", "train/bc_loss",
                "train/steps_to_go_loss"} <= set(row)
        assert all(np.isfinite(v) for v in row.values())
    first, last = history[0], history[-1]
    assert last["train/loss"] < first["train/loss"]
    assert last["val/bc_loss"] < first["val/bc_loss"]
    assert last["val/steps_to_go_loss"] < first["val/steps_to_go_loss"]
    assert load_history(workdir) == history  # written to disk as returned


def test_training_loss_below_initial_params(trained, episodes) -> None:
    """Compared with the untrained model on the same batch (not just the first window)."""
    workdir, _ = trained
    cfg = sft_config()
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    batch = next(Stage1Data(cfg.replace(sft=dataclasses.replace(cfg.sft, batch_size=256))).training(
        episodes[0], seed=9))
    init = fns.init(jax.random.PRNGKey(cfg.sft.seed), split_inputs(batch)[0])

    def loss(params: dict) -> float:
        return float(np.mean(np.concatenate(list(objective_nll(fns, params, batch, cfg.sft.objectives)[0].values()))))

    before, after = loss(init), loss(restore_params(workdir, NUM_STEPS))
    assert after < before - 0.05


# ----------------------------------------------------------------------------- selection


HISTORY = [
    {"step": 10.0, "val/bc_loss": 3.0, "val/steps_to_go_loss": 2.0},
    {"step": 20.0, "val/bc_loss": 1.0, "val/steps_to_go_loss": 2.5},
    {"step": 30.0, "val/bc_loss": 2.0, "val/steps_to_go_loss": 0.5},
    {"step": 40.0, "val/bc_loss": 1.5, "val/steps_to_go_loss": 0.7},
]


def test_pick_step_rules() -> None:
    assert pick_step(HISTORY, "best_bc") == 20
    assert pick_step(HISTORY, "best_steps_to_go") == 30
    assert pick_step(HISTORY, "last") == 40
    assert pick_step(HISTORY, "step:10") == 10
    with pytest.raises(ValueError, match="no checkpoint at step 15"):
        pick_step(HISTORY, "step:15")
    with pytest.raises(ValueError, match="no val/language_loss"):
        pick_step(HISTORY, "best_language")
    with pytest.raises(ValueError, match="empty"):
        pick_step([], "last")


def test_past_best_bc_rule_trains_well_past_the_best() -> None:
    """Appendix B (Aloha): the policy from F times the best BC step, the last step when
    training ended sooner; other domains keep best_bc."""
    from efm.config import DOMAINS, default_config

    assert pick_step(HISTORY, "past_best_bc:1") == 20  # best_bc at step 20
    assert pick_step(HISTORY, "past_best_bc:1.5") == 30
    assert pick_step(HISTORY, "past_best_bc:2") == 40
    assert pick_step(HISTORY, "past_best_bc:50") == 40  # training ended before 1000 steps: the last
    for domain in DOMAINS:
        rule = default_config(domain).select.policy_rule
        assert rule == ("past_best_bc:20" if domain == "aloha-insertion" else "best_bc"), domain
    for bad in ("past_best_bc:0.5", "past_best_bc:x", "past_best_bc:", "past_best_bc:inf"):
        with pytest.raises(ValueError, match=r"select\.policy_rule"):
            SelectConfig(policy_rule=bad)
    # SFT keeps the rule's pick although it is neither a best nor among the most recent.
    long = [{"step": float(10 * i), "val/bc_loss": 1.0 if i == 2 else 2.0 + i, "val/steps_to_go_loss": 5.0 - 0.1 * i}
            for i in range(1, 11)]
    assert pick_step(long, "past_best_bc:3") == 60
    keep = keep_steps(long, 3, ("past_best_bc:3", "best_steps_to_go"))
    assert keep == {100, 20, 60}
    assert 60 not in keep_steps(long, 3)
    assert keep_steps(long[:3], 4, ("step:80",)) == {10, 20, 30}  # step:N before step N: nothing to keep yet


def test_run_select_writes_argmin_checkpoints(trained, tmp_path: Path) -> None:
    workdir, result = trained
    selection = run_select(workdir, tmp_path, SelectConfig())
    on_disk = json.loads((tmp_path / SELECTION).read_text())
    assert on_disk == selection
    best_bc = int(min(result.history, key=lambda h: h["val/bc_loss"])["step"])
    best_stg = int(min(result.history, key=lambda h: h["val/steps_to_go_loss"])["step"])
    assert selection["policy"]["step"] == best_bc and selection["policy"]["rule"] == "best_bc"
    assert selection["reward"]["step"] == best_stg
    row = next(h for h in result.history if h["step"] == best_bc)
    assert selection["policy"]["val/bc_loss"] == row["val/bc_loss"]
    assert_trees_equal(load_selected(tmp_path, "policy"), restore_params(workdir, best_bc))
    assert_trees_equal(load_selected(tmp_path, "reward"), restore_params(workdir, best_stg))


def test_run_select_step_and_last_rules(trained, tmp_path: Path) -> None:
    workdir, _ = trained
    selection = run_select(workdir, tmp_path, SelectConfig(policy_rule="step:20", reward_rule="last"))
    assert selection["policy"]["step"] == 20 and selection["reward"]["step"] == NUM_STEPS
    assert_trees_equal(load_selected(tmp_path, "policy"), restore_params(workdir, 20))
    with pytest.raises(ValueError, match="step 25"):
        run_select(workdir, tmp_path / "bad", SelectConfig(policy_rule="step:25"))
    past = run_select(workdir, tmp_path / "past", SelectConfig(policy_rule="past_best_bc:100"))
    assert past["policy"]["step"] == NUM_STEPS and past["policy"]["rule"] == "past_best_bc:100"
    assert_trees_equal(load_selected(tmp_path / "past", "policy"), restore_params(workdir, NUM_STEPS))


def test_selection_chooses_among_the_steps_with_a_checkpoint(trained, tmp_path: Path) -> None:
    """Evaluation may be more frequent than checkpoints: a best validation loss at a step without
    a checkpoint is not selected (its weights are gone); the best step that has one is."""
    import shutil

    workdir = shutil.copytree(trained[0], tmp_path / "sft")
    history = load_history(workdir)
    for h in history:
        h["val/bc_loss"] = {10.0: 4.0, 20.0: 2.0, 30.0: 1.0, 40.0: 3.0}[h["step"]]
    (workdir / "history.json").write_text(json.dumps(history))
    manager = checkpoints.training_manager(workdir / "checkpoints")
    manager.delete(30)
    manager.close()
    assert run_select(workdir, tmp_path / "sel", SelectConfig())["policy"]["step"] == 20
    assert_trees_equal(load_selected(tmp_path / "sel", "policy"), restore_params(workdir, 20))


def test_restore_missing_step_and_missing_history(trained, tmp_path: Path) -> None:
    workdir, _ = trained
    with pytest.raises(FileNotFoundError, match="step 15"):
        restore_params(workdir, 15)
    with pytest.raises(FileNotFoundError, match="run the sft stage first"):
        load_history(tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoints.load_params(tmp_path / "nothing")


def test_stalled_waits_for_every_watched_loss() -> None:
    keys = ("val/bc_loss", "val/steps_to_go_loss")
    assert stalled(HISTORY, keys, 1)  # step 40 beat neither 1.0 (BC) nor 0.5 (steps-to-go)
    assert not stalled(HISTORY, keys, 2)  # step 30 set the steps-to-go best
    assert not stalled(HISTORY[:3], keys, 1)
    assert stalled(HISTORY[:2], ("val/steps_to_go_loss",), 1)  # 2.5 is no new best after 2.0...
    assert not stalled(HISTORY[:2], keys, 1)  # ...but BC fell to 1.0 at step 20
    assert not stalled(HISTORY, keys, 0) and not stalled(HISTORY, (), 1)  # off; nothing watched
    assert not stalled(HISTORY[:2], keys, 2)  # too short to tell
    tie = [*HISTORY[:2], {"step": 30.0, "val/bc_loss": 1.0, "val/steps_to_go_loss": 2.0}]
    assert stalled(tie, keys, 1)  # equalling the best is no improvement


def test_training_stops_early_once_the_selected_losses_stall(episodes, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """sft.patience: the run ends (with a checkpoint) at the first evaluation after which
    neither BC nor steps-to-go improved for `patience` evaluations; a rerun stays stopped
    and selection picks from what was trained."""
    import efm.sft.trainer as trainer

    scripted = [(3.0, 2.0), (2.0, 1.5), (2.5, 1.4), (2.6, 1.6), (2.7, 1.7)]  # (BC, steps-to-go) per evaluation
    calls: list[int] = []

    def validation_losses(*_: object) -> object:
        def losses(params: object) -> dict[str, float]:
            bc, stg = scripted[len(calls)]  # an IndexError if training evaluated past the stop
            calls.append(1)
            return {"val/bc_loss": bc, "val/steps_to_go_loss": stg}
        return losses

    monkeypatch.setattr(trainer, "make_validation_losses", validation_losses)
    cfg = sft_config(num_steps=100)
    cfg = cfg.replace(sft=dataclasses.replace(cfg.sft, patience=2, max_checkpoints=2))
    result = run_sft(cfg, *episodes, tmp_path / "sft", progress=False)
    # step 40 set no BC best but a steps-to-go one (1.4, step 30 was still better than 1.5)...
    assert result.final_step == 50 and [h["step"] for h in result.history] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert load_history(tmp_path / "sft") == result.history
    again = run_sft(cfg, *episodes, tmp_path / "sft", progress=False)
    assert again.final_step == 50 and again.history == result.history and len(calls) == 5
    selection = run_select(tmp_path / "sft", tmp_path / "select", cfg.select)
    assert (selection["policy"]["step"], selection["reward"]["step"]) == (20, 30)


# ----------------------------------------------------------------------------- resumption


class Crash(Exception):
    pass


def test_resume_after_crash_is_exact(trained, episodes, tmp_path: Path) -> None:
    """Killed after step 30's evaluation (before its checkpoint), rerun with the same config."""
    workdir_a, result_a = trained

    def crash_at_30(metrics: dict[str, float], step: int) -> None:
        if step == 30:
            raise Crash

    with pytest.raises(Crash):
        run_sft(sft_config(), *episodes, tmp_path, log=crash_at_30, progress=False)
    assert [h["step"] for h in load_history(tmp_path)] == [10.0, 20.0]  # latest checkpoint: 20
    result_b = run_sft(sft_config(), *episodes, tmp_path, progress=False)
    assert result_b.final_step == NUM_STEPS
    assert result_b.history == result_a.history
    assert load_history(tmp_path) == result_a.history
    assert_trees_equal(restore_params(tmp_path, NUM_STEPS), restore_params(workdir_a, NUM_STEPS))


def test_rerun_of_finished_training_is_a_no_op(trained, episodes) -> None:
    workdir_a, result_a = trained
    again = run_sft(sft_config(), *episodes, workdir_a, progress=False)
    assert again.final_step == NUM_STEPS and again.history == result_a.history




def test_stage1_grounding_trains_where_the_instruction_names_are_found(tmp_path: Path) -> None:
    """sft.grounding_weight on the table: the instruction's block names are supervised to their
    blocks' image positions beside the Stage-1 objectives, and that loss falls. Refused where
    the data name no blocks or the model has no grounded text."""
    base = debug_config("tabletop")
    cfg = base.replace(model=dataclasses.replace(base.model, variant="vl-tiny-g"),
                       sft=dataclasses.replace(base.sft, num_steps=30, eval_every=15, checkpoint_every=15,
                                               learning_rate=3e-3, grounding_weight=1.0))
    check_trainable(cfg)
    eps = list(generate_demonstrations(cfg, 8, seed=0))
    train = rlds.write_episodes(eps[:6], tmp_path / "train")
    validation = rlds.write_episodes(eps[6:], tmp_path / "validation", split="validation")
    history = run_sft(cfg, train, validation, tmp_path / "sft", progress=False).history
    first, last = (h["train/grounding_loss"] for h in history)
    assert np.isfinite(first) and last < first
    # The step reuses its Stage-1 passes' grounding and spends none on the instruction objective's
    # share, which hides the text and so names nothing: the loss and its gradient are those of a
    # separate pass over the whole batch.
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    batch = next(Stage1Data(cfg, fns.vocab).training(train, seed=1))
    hidden = batch["objective"] == OBJECTIVE_ID["instruction"]
    assert hidden.any() and not batch[GROUND_MASK][hidden].any()
    params = restore_params(tmp_path / "sft", 30)

    def reused(p: dict) -> jax.Array:
        return objective_nll(fns, p, batch, cfg.sft.objectives, grounding=True)[1]

    def separate(p: dict) -> jax.Array:
        inputs, rest = split_inputs(batch)
        return fns.grounding_loss(p, inputs, rest[GROUND_RC], rest[GROUND_MASK])

    assert float(separate(params)) > 0.01
    np.testing.assert_allclose(reused(params), separate(params), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(reused)(params)),
                    jax.tree_util.tree_leaves(jax.grad(separate)(params)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert {"val/bc_loss", "val/steps_to_go_loss", "val/instruction_loss"} <= set(history[-1])
    with pytest.raises(ValueError, match=r"sft\.grounding_weight.*pointmass"):
        check_trainable(debug_config().replace(sft=dataclasses.replace(debug_config().sft, grounding_weight=1.0)))
    with pytest.raises(ValueError, match=r"sft\.grounding_weight.*no grounded text"):
        check_trainable(base.replace(sft=dataclasses.replace(base.sft, grounding_weight=1.0)))
