"""Pretraining the table's vision-language EFM on rendered questions (`efm pretrain`): how fast
it learns to find the effector and the named blocks, on held-out boards.

Prints and writes the validation NLL and the localization errors (cm) at each checkpoint, the
seconds spent and the examples/s. Resumable: rerunning continues from the last checkpoint
(the curve is kept). Then compare Stage 1 from these weights with Stage 1 from scratch:

  .venv/bin/python benchmarks/table_pretrain.py --steps 4000
  .venv/bin/python benchmarks/table_learning_check.py --train runs/table4k/sub/fraction_0.8 \\
      --validation runs/table4k/sub/validation --steps 1000 --eval-every 250 \\
      --init runs/table-pretrain/pretrain/params --name from-pretrained
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from efm.config import default_config
from efm.sft.pretrain import run_pretrain

RESULTS = Path(__file__).parent / "results" / "table_pretrain.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--variant", default=None, help="model variant (default: the table's)")
    p.add_argument("--objects-per-question", type=int, default=None, help="pretrain.objects_per_question")
    p.add_argument("--questions-per-scene", type=int, default=None, help="pretrain.questions_per_scene")
    p.add_argument("--ordinal-sigma", type=float, default=None, help="pretrain.ordinal_sigma (a fraction of each quantity's bins)")
    p.add_argument("--grounding-weight", type=float, default=None, help="pretrain.grounding_weight (grounding variants)")
    p.add_argument("--out", default="runs/table-pretrain")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    cfg = default_config("tabletop")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=args.variant or cfg.model.variant),
                      pretrain=dataclasses.replace(cfg.pretrain, num_steps=args.steps, eval_every=args.eval_every,
                                                   **{k: v for k, v in (("objects_per_question", args.objects_per_question),
                                                                        ("questions_per_scene", args.questions_per_scene),
                                                                        ("ordinal_sigma", args.ordinal_sigma),
                                                                        ("grounding_weight", args.grounding_weight))
                                                      if v is not None}))
    out = Path(args.out) / "pretrain"
    timing = Path(args.out) / "calls.json"  # steps and wall time of each completed call, for examples/s
    calls = json.loads(timing.read_text()) if timing.exists() else []
    history = out / "history.json"
    start = int(json.loads(history.read_text())[-1]["step"]) if history.exists() else 0
    t = time.time()
    summary = run_pretrain(cfg, out)
    calls.append({"steps": summary["final_step"] - start, "seconds": time.time() - t})
    timing.write_text(json.dumps(calls))
    steps, seconds = sum(c["steps"] for c in calls), sum(c["seconds"] for c in calls)
    result = {
        "variant": cfg.model.variant, "steps": summary["final_step"], "batch_size": cfg.pretrain.batch_size,
        "schedule_steps": args.steps, "learning_rate": cfg.pretrain.learning_rate,
        "objects_per_question": cfg.pretrain.objects_per_question,
        "questions_per_scene": cfg.pretrain.questions_per_scene, "ordinal_sigma": cfg.pretrain.ordinal_sigma,
        "grounding_weight": cfg.pretrain.grounding_weight, "timed_steps": steps, "seconds": seconds,
        "examples_per_second": steps * cfg.pretrain.batch_size / seconds if seconds else None,
        "curve": [{**c, **{k: v for k, v in h.items() if k.startswith("val/") or k == "train/grounding_loss"}}
                  for c, h in zip(summary["localization_curve"], summary["history"], strict=True)],
        "params": str(out / "params"),  # as given (relative to where it ran), not this machine's absolute path
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0], "python": platform.python_version()},
    }
    print(json.dumps(result, indent=1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
