"""What the data validation step (TFDV on the Beam DirectRunner) costs.

    .venv/bin/python benchmarks/validation_time.py [--parts run images] [--episodes 1000]

Two parts, each recorded in results/validation_time.json as soon as it ends (rerun a part
alone to resume; the image dataset is generated once and reused):

  run     `efm run` on the default domain (pointmass, 40,000 episodes, fraction 0.1, seed 7),
          as the README's main job, from an empty directory: the whole run's wall time and the
          validate task's own (from kfp's task log lines), plus the library's share
          (validation.json); the time before this step existed is results/efm_run_time.json.
  images  `efm data validate` in a fresh process on a tabletop dataset of camera-image
          episodes (72x128 PNG): wall time and steps per second. The issue asks for 10,000
          episodes; generating them takes about 2 hours on the shared 2-core machine, so the
          default is 1,000 (`--episodes 10000` measures the full size; `--dataset PATH` measures
          one made before, such as a pipeline's `dataset/episodes`). Generating is timed too
          (`generate_<episodes>`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "validation_time.json"
BASELINE = Path(__file__).parent / "results" / "efm_run_time.json"
EFM = Path(sys.executable).with_name("efm")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"(\d\d:\d\d:\d\d\.\d+) - INFO - Executing task '([^']+)'")
_END = re.compile(r"(\d\d:\d\d:\d\d\.\d+) - INFO - Task '([^']+)' finished")


def _save(part: str, result: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[part] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


def task_seconds(log: str) -> dict[str, float]:
    """Wall time of every kfp.local task, from its "Executing task" and "finished" log lines."""
    starts, out = {}, {}
    for line in _ANSI.sub("", log).splitlines():
        if m := _START.match(line):
            starts[m.group(2)] = datetime.strptime(m.group(1)[:12], "%H:%M:%S.%f")
        elif (m := _END.match(line)) and m.group(2) in starts:
            end = datetime.strptime(m.group(1)[:12], "%H:%M:%S.%f")
            # the lines hold the time of day only: a task that runs past midnight ends "before" it began
            out[m.group(2)] = (end - starts[m.group(2)]).total_seconds() % 86400
    return out


def _load() -> float:
    return os.getloadavg()[0]


def run_part(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(EFM), "run", "--domain", "pointmass", "--fractions", "0.1", "--seeds", "7", "--out", str(out), "--quiet"]
    t0, load = time.time(), _load()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.time() - t0
    log = proc.stdout + proc.stderr
    (out / "run.log").write_text(log)
    _save("run", run_result(out, " ".join(["efm", *cmd[1:]]), seconds, [load, _load()]))


def run_result(out: Path, command: str, seconds: float, load: list[float]) -> dict:
    """The run part's figures, from the run's directory (its saved log and validation.json)."""
    log = (out / "run.log").read_text()
    (report,) = out.glob("pipeline_root/*/validate/statistics/validation.json")
    validation = json.loads(report.read_text())
    baseline = json.loads(BASELINE.read_text())["seconds"] if BASELINE.is_file() else None
    tasks = task_seconds(log)
    share = tasks["validate"] / sum(tasks.values())
    result = {"command": command, "seconds": seconds, "cpus": os.cpu_count(), "load_average_1min": load,
              "task_seconds": tasks, "validate_task_seconds": tasks["validate"],
              "validate_share_of_task_time": share,
              "validate_library_seconds": validation["seconds"], "validation_ok": validation["ok"],
              "counts": validation["counts"], "baseline_seconds_without_validate": baseline,
              "estimate_seconds_added_to_baseline": baseline * share / (1 - share) if baseline else None}
    print(f"efm run with validate: {seconds:.0f} s (load average {load}); the validate task "
          f"{tasks['validate']:.0f} s, {share:.1%} of the tasks' time (statistics and checks "
          f"{validation['seconds']:.1f} s); the run before the step: {baseline and round(baseline)} s")
    return result


def images_part(root: Path, episodes: int, dataset: Path | None = None) -> None:
    data = dataset or root / f"tabletop-{episodes}"
    if dataset is None and not (data / "dataset_info.json").is_file():
        t0 = time.time()
        subprocess.run([str(EFM), "dataset", "--domain", "tabletop", "--episodes", str(episodes), "--out", str(data),
                        "--quiet", "--overwrite"], check=True, stdout=subprocess.DEVNULL)
        seconds = time.time() - t0
        _save(f"generate_{episodes}", {"episodes": episodes, "seconds": seconds, "cpus": os.cpu_count()})
        print(f"generated {episodes} tabletop episodes in {seconds:.0f} s")
    cmd = [str(EFM), "data", "validate", str(data), "--domain", "tabletop", "--out", str(root / "report"), "--quiet"]
    t0, load = time.time(), _load()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode not in (0, 2):
        raise RuntimeError(proc.stderr[-3000:])
    report = json.loads((root / "report" / "validation.json").read_text())
    steps = report["counts"]["all"]["steps"]
    result = {"command": " ".join(["efm", *cmd[1:]]), "exit_code": proc.returncode, "seconds": seconds,
              "library_seconds": report["seconds"], "episodes": report["counts"]["all"]["episodes"],
              "steps": steps, "steps_per_second": steps / report["seconds"], "cpus": os.cpu_count(),
              "load_average_1min": [load, _load()],
              "anomalies": report["failed"]}
    episodes = result["episodes"]
    _save(f"images_{episodes}", result)
    print(f"efm data validate, {episodes} tabletop image episodes ({steps} steps): {seconds:.0f} s "
          f"({report['seconds']:.0f} s in the library, {result['steps_per_second']:.0f} steps/s), exit {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("run", "images"), default=["run", "images"])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--dataset", type=Path, help="images: validate this tabletop image dataset (e.g. a pipeline's "
                        "dataset/episodes) instead of generating --episodes")
    parser.add_argument("--out", default="runs/bench-validation")
    args = parser.parse_args()
    root = Path(args.out)
    if "run" in args.parts:
        run_part(root / "run")
    if "images" in args.parts:
        images_part(root, args.episodes, args.dataset)


if __name__ == "__main__":
    main()
