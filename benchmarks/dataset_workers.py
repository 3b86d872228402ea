"""Speed-up of `efm dataset` from stepping the environments in worker processes.

Runs `efm dataset --domain DOMAIN --episodes E` once per worker count (env.num_workers; 1 =
in-process), each in a fresh process, and records the stage's own time (generation, RLDS
writing, preview GIF; not the interpreter's imports), steps/s and the speed-up over 1 worker.
The datasets must be identical whatever the worker count (same episodes, same statistics).

    .venv/bin/python benchmarks/dataset_workers.py --domain tabletop --episodes 256 --workers 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EFM = [sys.executable, "-m", "efm.cli"]


def records_digest(directory: Path, chars: int = 16) -> str:
    """Hash of a dataset's record files (TFDS shards), which hold every step of every episode:
    equal digests, the same episodes to the byte, whichever code wrote them."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*tfrecord*")):
        h.update(path.read_bytes())
    return h.hexdigest()[:chars]


def run_once(domain: str, episodes: int, workers: int, root: Path) -> dict:
    out = root / f"workers-{workers}"
    cmd = [*EFM, "dataset", "--domain", domain, "--episodes", str(episodes), "--out", str(out), "--quiet",
           "--config", json.dumps({"env": {"num_workers": workers},
                                   "data": {"validation_episodes": max(1, episodes // 10)}})]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    stats = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"workers": workers, "stage_seconds": round(stats["seconds"], 2), "process_seconds": round(wall, 2),
            "steps": stats["steps"], "steps_per_second": round(stats["steps"] / stats["seconds"], 1),
            "success_rate": stats["success_rate"], "records_sha256": records_digest(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", default="tabletop")
    p.add_argument("--episodes", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "dataset_workers.json"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="efm-bench-dataset-") as tmp:
        for w in args.workers:
            rows.append(run_once(args.domain, args.episodes, w, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["stage_seconds"]
    for r in rows:
        r["speed_up"] = round(base / r["stage_seconds"], 2)
    same = len({r["records_sha256"] for r in rows}) == 1
    load = os.getloadavg()
    result = {"domain": args.domain, "episodes": args.episodes, "cpus": len(os.sched_getaffinity(0)),
              "python": platform.python_version(), "identical_datasets": same, "runs": rows,
              "load_average_at_end": [round(x, 1) for x in load],
              "note": "each run a fresh `efm dataset` process, 64 vectorized envs; stage_seconds excludes the "
                      "interpreter's imports; the machine was shared with other jobs (see load average)"}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if not same:
        print("the datasets differ between worker counts", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
