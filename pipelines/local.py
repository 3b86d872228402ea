"""Run the experiment pipeline on this machine with kfp's local SubprocessRunner.

`use_venv=False` makes every task run in this interpreter (`sys.executable`, kfp 2.13
substitutes it for the components' `python3`), and the components are built with
`install_kfp_package=False`, so nothing is installed at task time. Tasks run one after another;
artifacts land under OUT/pipeline_root/<run>/<task>/. Tasks compiled with caching on are taken
from OUT/kfp_cache when an earlier run in OUT executed them with the same inputs
(`efm.pipelines.cache`), and a task an earlier run started but did not finish (a failure, Ctrl-C,
a killed machine) resumes from what it left, as a KFP retry would: rerunning the same command
continues an interrupted SFT from its last checkpoint. A failed run ends its MLflow parent run
as FAILED.

    python -m efm.pipelines.local --debug --fractions 0.5 --seeds 7 --out runs/kfp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kfp import local

from efm.components.tracking import fail_experiment
from efm.config import RunConfig, check_trainable, debug_config, default_config
from efm.evaluation.report import PLOT, SUMMARY, TABLE
from efm.models.weights import check_initial_weights
from efm.pipelines.cache import LocalTaskCache
from efm.pipelines.experiment import GraphShape, make_experiment_pipeline
from efm.progress import QUIET_ENV
from efm.tracking import Tracker, local_artifacts, local_store


@contextmanager
def _environ(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` (unset if None) for the tasks started meanwhile, then restored."""
    before = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if before is not None:
            os.environ[name] = before


CACHE_DIR = "kfp_cache"  # under OUT: the local task cache (efm.pipelines.cache)


def run_local(config: RunConfig, out_dir: str | Path, fractions: Sequence[float] | None = None,
              seeds: Sequence[int] = (0,), tracking_uri: str | None = None, progress: bool = True,
              cache: bool = True, rerun: Sequence[str] = ()) -> dict[str, Any]:
    """Runs every branch (fractions default to config.data.fractions) and returns the summary;
    OUT/summary.json, report.md and the Figure 5 plot are copies of the report's artifact.

    Tracking goes to `tracking_uri`, by default a SQLite store OUT/mlflow.db with its
    artifacts in OUT/mlartifacts; "" tracks nothing. `progress` False silences the steps'
    progress lines. `cache` False executes every task (and records nothing in the cache); the
    steps in `rerun` (e.g. self-improve, after a change to Stage 2) execute though cached. The
    summary's `kfp` entry names the run and its executed, resumed and cached tasks, and the
    executed ones' wall seconds. If a task fails, the
    parent MLflow run is ended as FAILED and the error raised.
    """
    check_trainable(config)
    shape = GraphShape.of(config)
    if not shape.pretrain:  # no step makes the starting weights: they must exist before any step runs
        check_initial_weights(config.model)
    out = Path(out_dir).absolute()
    pipeline = make_experiment_pipeline(config.data.fractions if fractions is None else fractions, seeds,
                                        shape=shape)
    tasks = LocalTaskCache.for_pipeline(pipeline, out / CACHE_DIR, enabled=cache, rerun=rerun)
    out.mkdir(parents=True, exist_ok=True)
    if tracking_uri is None:
        tracking_uri = local_store(out)
        # The experiment is made here so that its artifacts live beside the database; tasks
        # would otherwise create it with MLflow's default location, relative to their cwd.
        Tracker(tracking_uri, artifact_location=local_artifacts(out))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "pipeline_root"),
               raise_on_error=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the tasks: TF is only our I/O layer
    with warnings.catch_warnings(), _environ(QUIET_ENV, None if progress else "1"):
        # The project image's name has no "python" in it, which kfp.local warns about per task;
        # locally the image is not used at all.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        try:
            with tasks.installed():
                task = pipeline(config_json=config.to_json(), tracking_uri=tracking_uri)
        except BaseException:  # a failed task (RuntimeError from kfp), or Ctrl-C
            if tracking_uri and tasks.run_name:
                fail_experiment(tracking_uri, tasks.run_name)
            raise
    report_dir = Path(task.output.path)
    for name in (SUMMARY, TABLE, PLOT):
        shutil.copyfile(report_dir / name, out / name)
    summary = json.loads((out / SUMMARY).read_text())
    summary["tracking_uri"] = tracking_uri
    summary["kfp"] = {"run_name": tasks.run_name, "executed": tasks.executed, "resumed": tasks.resumed,
                      "cached": tasks.cached, "seconds": {k: round(v, 1) for k, v in tasks.seconds.items()}}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", default="pointmass")
    p.add_argument("--debug", action="store_true", help="tiny sizes: a minutes-long run")
    p.add_argument("--fractions", type=float, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: OUT/mlflow.db; '' for none)")
    p.add_argument("--no-cache", action="store_true", help="execute every task, cached or not")
    p.add_argument("--rerun", nargs="+", default=[], metavar="STEP", help="execute these steps though cached")
    args = p.parse_args(argv)
    cfg = debug_config(args.domain) if args.debug else default_config(args.domain)
    print(json.dumps(run_local(cfg, args.out, args.fractions, args.seeds, args.tracking_uri,
                               cache=not args.no_cache, rerun=args.rerun), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
