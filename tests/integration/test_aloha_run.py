"""`efm run --debug --domain aloha-insertion`: the kfp local pipeline end to end in state mode,
writing the summary.json every domain writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efm.cli import main
from efm.config import debug_config

SEED = 7
POLICY_KEYS = {"success_rate", "mean_episode_length", "optimal_length_ratio"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("aloha")
    out, cwd = root / "out", root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # anything written outside --out lands here, not in the repository
        rc = main(["run", "--debug", "--domain", "aloha-insertion", "--seeds", str(SEED), "--out", str(out)])
    assert rc == 0
    (run_root,) = (out / "pipeline_root").iterdir()
    return {"out": out, "run_root": run_root}


def test_aloha_run_writes_the_common_summary(run_dir: dict[str, Path]) -> None:
    cfg = debug_config("aloha-insertion")
    summary = json.loads((run_dir["out"] / "summary.json").read_text())
    (result,) = summary["results"]
    assert {"domain", "data_fraction", "seed", "dataset_episodes", "sft_episodes", "self_improvement_episodes",
            "self_improvement_env_steps", "sft", "self_improved", "success_detector", "mlflow_run_id"} <= set(result)
    assert result["domain"] == "aloha-insertion" and result["seed"] == SEED
    assert result["dataset_episodes"] == cfg.data.num_episodes  # successful demonstrations only
    assert result["sft_episodes"] == int((cfg.data.num_episodes - cfg.data.validation_episodes) * cfg.data.fractions[0])
    assert result["self_improvement_episodes"] == cfg.self_improve.max_episodes
    assert result["self_improvement_env_steps"] > 0 and result["tracking_failures"] == []
    for policy in ("sft", "self_improved"):
        m = result[policy]
        assert set(m) == POLICY_KEYS
        assert 0.0 <= m["success_rate"] <= 1.0
        assert 0 < m["mean_episode_length"] <= cfg.env.max_episode_steps
    assert (run_dir["out"] / "report.md").read_text().count("aloha-insertion") >= 1


def test_aloha_stages_select_past_the_best_and_draw_strips(run_dir: dict[str, Path]) -> None:
    """Appendix B's rule picks the policy (20x the best BC step: the last of this short SFT);
    the evaluation holds a Figure 2-3 strip per panel, rendered from the recorded state."""
    root = run_dir["run_root"]
    history = json.loads((root / "sft" / "model" / "history.json").read_text())
    selection = json.loads((root / "select" / "model" / "selection.json").read_text())
    assert selection["policy"]["rule"] == "past_best_bc:20"
    assert selection["policy"]["step"] == history[-1]["step"]
    rounds = json.loads((root / "self-improve" / "model" / "rounds.json").read_text())
    assert rounds["total_episodes"] == debug_config("aloha-insertion").self_improve.max_episodes
    for row in rounds["rounds"]:  # Figure 11 (right) with how far the practice episodes got
        assert 0.0 <= row["ground_truth_peg_lifted"] <= 1.0 and 0.0 <= row["ground_truth_socket_lifted"] <= 1.0
    assert (root / "self-improve" / "model" / "success_rate.png").read_bytes()[:4] == b"\x89PNG"  # plotted with them
    evaluation = root / "evaluate" / "evaluation"
    # The env's own counts (chunks refused as unstable) reach the stages' outputs, not just a log.
    assert set(rounds["fleet"]["env_counters"]) == {"rejected_chunks"}
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert "rejected_chunks" in metrics["sft"] and "rejected_chunks" in metrics["self_improved"]
    for policy in ("sft", "self_improved"):  # how far the policies got, where none inserts
        assert 0.0 <= metrics[policy]["peg_lifted"] <= 1.0 and 0.0 <= metrics[policy]["socket_lifted"] <= 1.0
    for panel in ("dataset", "sft", "self_improved"):
        assert (evaluation / f"steps_to_go_{panel}.png").read_bytes()[:4] == b"\x89PNG"
