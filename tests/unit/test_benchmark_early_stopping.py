"""benchmarks/early_stopping.py: replaying recorded histories through the trainer's stopping rule."""

from __future__ import annotations

import early_stopping as bench


def row(step: int, bc: float, stg: float) -> dict[str, float]:
    return {"step": float(step), "val/bc_loss": bc, "val/steps_to_go_loss": stg}


def test_replay_reports_the_stop_and_a_selection_it_would_change() -> None:
    # BC's best at 20, steps-to-go's at 30, then a late BC best at 70 that early stopping never sees.
    history = [row(10, 3.0, 2.0), row(20, 1.0, 1.5), row(30, 1.1, 1.0), row(40, 1.2, 1.1), row(50, 1.3, 1.2),
               row(60, 1.4, 1.3), row(70, 0.9, 1.4)]
    assert bench.replay(history, 0) == {"patience": 0, "stop_step": 70, "steps_share": 1.0, "policy_step": 70,
                                        "reward_step": 30, "same_selection": True}
    two = bench.replay(history, 2)
    assert (two["stop_step"], two["policy_step"], two["reward_step"], two["same_selection"]) == (50, 20, 30, False)
    assert bench.replay(history, 4)["stop_step"] == 70  # the late best came in time: never stalled
    assert bench.replay(history, 4)["same_selection"]
