"""A first check that the vision-language EFM learns on the table: a short SFT of the default
variant on the demonstrations `benchmarks/sft_throughput.py` writes, its validation losses per
objective, and Block2Block success of the selected policy on a few fixed tasks.

  .venv/bin/python benchmarks/sft_throughput.py --variants vl-tiny --steps 5   # writes the data once
  .venv/bin/python benchmarks/table_learning_check.py --steps 400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from efm.config import default_config, practice_config
from efm.stages import evaluate_stage, select_stage, sft_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/bench-throughput/sub")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--episodes", type=int, default=24, help="evaluation episodes")
    p.add_argument("--out", default="runs/table-learning-check")
    args = p.parse_args()
    cfg = default_config("tabletop")
    every = max(args.steps // 4, 1)
    cfg = cfg.replace(sft=dataclasses.replace(cfg.sft, num_steps=args.steps, eval_every=every, checkpoint_every=every,
                                              warmup_steps=min(50, args.steps)),
                      eval=dataclasses.replace(cfg.eval, num_episodes=args.episodes, num_envs=12, plot_episodes=4))
    out, data = Path(args.out), Path(args.data)
    t = time.time()
    sft = sft_stage(cfg, data / "fraction_1", data / "validation", out / "sft", progress=False)
    for row in sft["history"]:
        print(json.dumps(row))
    select_stage(cfg, out / "sft", out / "select")
    metrics = evaluate_stage(practice_config(cfg), out / "select", None, out / "eval", None)
    print(json.dumps({"block2block": metrics["sft"], "seconds": time.time() - t}))


if __name__ == "__main__":
    main()
