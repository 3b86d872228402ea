"""Where `sft.patience` would have stopped recorded Stage-1 runs, and whether it changes what
checkpoint selection picks.

Replays each history.json (one row per evaluation, as the trainer writes it; runs that trained
every step, patience 0) through the trainer's own stopping rule (`efm.sft.history.stalled`) for
several patiences: the step it would stop at, the share of the steps trained, and the policy and
reward steps selection picks from the truncated history against the full one's. The histories
replayed by default are copies of the Block2Block benchmark's SFT outputs
(`<out>/pipeline_root/<run>/sft/model/history.json`), kept in results/sft_histories/.

    .venv/bin/python benchmarks/early_stopping.py [HISTORY.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from efm.config import SelectConfig, default_config
from efm.sft.history import History, pick_step, stalled, watched_losses

HERE = Path(__file__).parent
HISTORIES = HERE / "results" / "sft_histories"
RESULTS = HERE / "results" / "early_stopping.json"
PATIENCES = (2, 3, 4, 6, 8)


def stop_index(history: History, keys: tuple[str, ...], patience: int) -> int:
    """Index of the evaluation the trainer would stop after (the last one if it never stalls)."""
    return next((i for i in range(len(history)) if stalled(history[:i + 1], keys, patience)), len(history) - 1)


def replay(history: History, patience: int, select: SelectConfig | None = None) -> dict[str, Any]:
    """The stop with `patience` and what selection (default: the table's rules) picks then."""
    select = select or default_config("tabletop").select
    rules = {"policy": select.policy_rule, "reward": select.reward_rule}
    cut = history[:stop_index(history, watched_losses(tuple(rules.values())), patience) + 1]
    picks = {role: (pick_step(cut, rule), pick_step(history, rule)) for role, rule in rules.items()}
    return {"patience": patience, "stop_step": int(cut[-1]["step"]), "steps_share": cut[-1]["step"] / history[-1]["step"],
            **{f"{role}_step": early for role, (early, _) in picks.items()},
            "same_selection": all(early == full for early, full in picks.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("histories", nargs="*", type=Path)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    paths = args.histories or sorted(HISTORIES.glob("*.json"))
    rows = []
    print("| history | steps | policy / reward step (full) | patience: stop step, selection |")
    print("|---|---|---|---|")
    for path in paths:
        history = json.loads(path.read_text())
        full = replay(history, 0)
        runs = [replay(history, p) for p in PATIENCES]
        rows.append({"history": path.name, "steps": int(history[-1]["step"]), "policy_step": full["policy_step"],
                     "reward_step": full["reward_step"], "replays": runs})
        cells = ", ".join(f"{r['patience']}: {r['stop_step']}{'' if r['same_selection'] else ' (differs)'}" for r in runs)
        print(f"| {path.stem} | {history[-1]['step']:.0f} | {full['policy_step']} / {full['reward_step']} | {cells} |")
    args.results.write_text(json.dumps({"patiences": PATIENCES, "histories": rows}, indent=1))


if __name__ == "__main__":
    main()
