"""Wall-clock time of `efm run` for one data fraction and one seed (the README's main job).

    .venv/bin/python benchmarks/efm_run_time.py [--out runs/bench-time]

Runs the CLI in a fresh process on a fresh output directory (dataset generation included)
and records the time and the run's summary in results/efm_run_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "efm_run_time.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-time")
    parser.add_argument("--fraction", default="0.1")
    parser.add_argument("--seed", default="7")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    efm = Path(sys.executable).with_name("efm")
    cmd = [str(efm), "run", "--domain", "pointmass", "--fractions", args.fraction, "--seeds", args.seed,
           "--out", args.out, "--quiet"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - t0
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    result = {"command": " ".join(["efm", *cmd[1:]]), "seconds": seconds, "cpus": os.cpu_count(),
              "results": summary["results"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"efm run (fraction {args.fraction}, seed {args.seed}): {seconds / 60:.1f} min on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
