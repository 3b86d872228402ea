"""Checkpoint selection (Appendix B): policy and reward checkpoints are chosen separately."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from efm import checkpoints
from efm.config import SelectConfig
from efm.sft.history import checkpointed, pick_step
from efm.sft.trainer import checkpoint_steps, load_history, restore_params

SELECTION = "selection.json"
POLICY, REWARD = "policy", "reward"


def run_select(sft_dir: str | Path, out_dir: str | Path, cfg: SelectConfig) -> dict[str, Any]:
    """Writes out_dir/policy and out_dir/reward param checkpoints and selection.json; the rules
    choose among the evaluated steps that have a checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = checkpointed(load_history(sft_dir), checkpoint_steps(sft_dir))
    if not history:
        raise FileNotFoundError(f"no evaluated SFT step with a checkpoint in {sft_dir}")
    selection: dict[str, Any] = {}
    for role, rule in ((POLICY, cfg.policy_rule), (REWARD, cfg.reward_rule)):
        step = pick_step(history, rule)
        row = next(h for h in history if int(h["step"]) == step)
        checkpoints.save_params(out_dir / role, restore_params(sft_dir, step))
        selection[role] = {"rule": rule, "step": step, **{k: v for k, v in row.items() if k.startswith("val/")}}
    (out_dir / SELECTION).write_text(json.dumps(selection, indent=1))
    return selection


def load_selected(select_dir: str | Path, role: str) -> Any:
    return checkpoints.load_params(Path(select_dir) / role)
