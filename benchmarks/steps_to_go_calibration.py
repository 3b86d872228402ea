"""Does the reward model see the end? d(o, g) on held-out demonstrations, by their true
steps-to-go T - t: a detector d(o, g) <= s can only fire where d reaches s on the frames that end
an episode (T - t = 0), and stays above it before.

Scores the selected reward checkpoint of a Stage-1 run (`select` output directory) on the first
--episodes validation demonstrations; prints d's mean / median / 10th percentile per bucket of
true steps-to-go and the share of final and of earlier frames each threshold s would call a
success.

    .venv/bin/python benchmarks/steps_to_go_calibration.py \
        --select runs/table-learning-check/gkp2-ground-sft-ground/select \
        --validation runs/table4k/sub/validation --name gkp2-ground-sft-ground
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from steps_to_go_bins import reward_and_policy, scores

from efm.cli import load_config
from efm.stages import read_split

RESULTS = Path(__file__).parent / "results"
BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 40), (41, 300))


def calibration(d: np.ndarray, true: np.ndarray, thresholds: list[float]) -> dict:
    """d per bucket of true steps-to-go, and per threshold s the share of final frames
    (T - t = 0) and of the others with d <= s."""
    rows = []
    for lo, hi in BUCKETS:
        m = (true >= lo) & (true <= hi)
        if m.any():
            rows.append({"true_steps_to_go": [lo, hi], "frames": int(m.sum()), "mean": float(d[m].mean()),
                         "median": float(np.median(d[m])), "p10": float(np.percentile(d[m], 10))})
    final = true == 0
    fires = [{"threshold": s, "final_frames": float((d[final] <= s).mean()),
              "earlier_frames": float((d[~final] <= s).mean())} for s in thresholds]
    return {"by_true_steps_to_go": rows, "fires": fires}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--select", type=Path, required=True, help="a Stage-1 run's select directory")
    p.add_argument("--validation", type=Path, required=True, help="validation demonstrations (RLDS)")
    p.add_argument("--domain", default="tabletop")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--thresholds", type=float, nargs="+", default=[1.5, 3.0, 5.0, 9.0])
    p.add_argument("--name", required=True, help="names the results file")
    args = p.parse_args()
    t0 = time.time()
    cfg = load_config(args.domain, str(args.select / "config.json"))
    fns, reward, _ = reward_and_policy(cfg, args.select)
    demos = read_split(args.validation, limit=args.episodes)
    true = np.concatenate([np.arange(e.length, -1, -1) for e in demos]).astype(float)
    d = scores(fns, reward, demos)
    out = {"command": "benchmarks/steps_to_go_calibration.py", "select": str(args.select),
           "episodes": len(demos), "frames": int(d.size), **calibration(d, true, args.thresholds),
           "seconds": time.time() - t0}
    for r in out["by_true_steps_to_go"]:
        lo, hi = r["true_steps_to_go"]
        print(f"T - t in {lo:3d}..{hi:3d}: {r['frames']:5d} frames, d mean {r['mean']:6.2f}, "
              f"median {r['median']:6.2f}, p10 {r['p10']:6.2f}")
    for f in out["fires"]:
        print(f"d <= {f['threshold']:4.1f}: {f['final_frames']:.2f} of final frames, {f['earlier_frames']:.3f} of earlier")
    path = RESULTS / f"steps_to_go_calibration_{args.name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main()
