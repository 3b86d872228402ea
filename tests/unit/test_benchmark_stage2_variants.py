"""benchmarks/stage2_variants.py: a branch folder answers only for the change it was made with;
the seeds' spread is the sample sd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import stage2_variants as s2

from efm.config import default_config


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Stage 2 replaced by one whose length ratio is 1000x its learning rate; the rates it ran with."""
    ran: list[float] = []

    def self_improve(cfg: Any, select: Path, d: Path, progress: bool = False) -> dict[str, Any]:
        ran.append(cfg.self_improve.learning_rate)
        return {"learning_rate": cfg.self_improve.learning_rate}

    def evaluate(cfg: Any, select: Path, si: Path, d: Path) -> dict[str, Any]:
        r = {"success_rate": 1.0, "mean_episode_length": 10.0,
             "optimal_length_ratio": cfg.self_improve.learning_rate * 1000}
        return {"sft": r, "self_improved": r}

    monkeypatch.setattr(s2, "self_improve_stage", self_improve)
    monkeypatch.setattr(s2, "evaluate_stage", evaluate)
    return ran


def change(lr: float) -> dict[str, Any]:
    return {"self_improve": {"learning_rate": lr}}


def test_a_branch_folder_made_with_another_change_is_refused(tmp_path: Path, fake_stages: list[float]) -> None:
    select = tmp_path / "select"
    select.mkdir()
    (select / "config.json").write_text(default_config("pointmass").to_json())
    out = tmp_path / "out" / "f0.1-s0"
    first = s2.branch(select, change(0.001), out)
    assert first["self_improved"]["optimal_length_ratio"] == pytest.approx(1.0)
    with pytest.raises(SystemExit, match=r"self_improve\.learning_rate: 0\.001 \(this invocation: 0\.00025\)"):
        s2.branch(select, change(0.00025), out)  # was: 1.0, the other change's result under this one's name
    again = s2.branch(select, change(0.001), out)  # the same change resumes: read, not run again
    assert again == first and fake_stages == [0.001]


def test_the_summary_sd_is_the_sample_sd() -> None:
    rows = [{"v": {"optimal_length_ratio": x, "success_rate": 1.0}} for x in (1.0, 2.0, 3.0)]
    assert s2.summary(rows, "v")["std_optimal_length_ratio"] == pytest.approx(1.0)
    assert s2.summary(rows[:1], "v")["std_optimal_length_ratio"] is None  # no spread of one run
