"""Aloha Single-Insertion (Section 4.1.3, Figure 11): Stage 1 on two dataset sizes and
Self-Improvement from each, in state mode, over seeds.

The pipeline's stages in this process, one directory per part under --out; a part whose
result is already there is skipped, so an interrupted run resumes where it stopped (SFT also
resumes from its latest checkpoint, Self-Improvement from its last completed round):

  dataset/                        the successful scripted demonstrations (D.3), shared
  subsample-s<seed>/              nested fractions and the validation split
  f<fraction>-s<seed>/{sft,select,self_improve,evaluate}/

After every branch it writes --results (default benchmarks/results/aloha-insertion.json; rows of
other branches measured with the same config, --fractions aside, by earlier or concurrent
invocations are kept, so branches can run in pieces or side by side with their own --out): per
branch the SFT and Self-Improved success rate, mean episode length and the share of episodes
that lifted the peg and the socket (ground truth, the same evaluation tasks), the success
detector's precision and recall, per-round detected and ground-truth success and objects lifted
during Self-Improvement (like Figure 11, right; plotted per branch beside --results, as
`<results>_rounds.png`), the practice episodes and env steps, and per fraction the means over
seeds. Reported as measured, whichever way it comes out.

    .venv/bin/python benchmarks/aloha_run.py --out runs/bench-aloha --fractions 0.3333 0.6667 --seeds 0 1
    .venv/bin/python benchmarks/aloha_run.py --config '{"data": {"num_episodes": 130, ...}}' ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from resumable import config_changes, made_with, merge, part, recipe

from efm.cli import load_config
from efm.config import RunConfig
from efm.data import rlds, subsample
from efm.evaluation.plots import plot_curve_panels
from efm.self_improve.coordinator import round_rate_series
from efm.stages import (
    dataset_stage,
    evaluate_stage,
    seeded,
    select_stage,
    self_improve_stage,
    sft_stage,
    subsample_stage,
)

DOMAIN = "aloha-insertion"
RESULTS = Path(__file__).parent / "results" / f"{DOMAIN}.json"
POLICY_KEYS = ("success_rate", "mean_episode_length", "optimal_length_ratio", "peg_lifted", "socket_lifted")
ROUND_KEYS = ("total_episodes", "success_rate", "ground_truth_success_rate", "mean_episode_length",
              "ground_truth_peg_lifted", "ground_truth_socket_lifted")


def branch(cfg: RunConfig, out: Path, dataset_dir: Path, fraction: float, seed: int) -> dict[str, Any]:
    """SFT, selection, Self-Improvement and evaluation of one (data fraction, seed)."""
    cfg = seeded(cfg, seed)
    sub = out / f"subsample-s{seed}"

    def subsampled(d: Path) -> dict[str, Any]:
        shutil.rmtree(d, ignore_errors=True)  # an interrupted subsampling starts again
        manifest = subsample_stage(cfg, dataset_dir, d, seed)
        return {"counts": {f: v["count"] for f, v in manifest["fractions"].items()}}

    part(sub, subsampled)
    train = sub / subsample.fraction_dirname(fraction)
    root = out / f"f{fraction:g}-s{seed}"
    sft = part(root / "sft", lambda d: {k: v for k, v in sft_stage(cfg, train, sub / subsample.VALIDATION_DIR,
                                                                        d).items() if k != "history"})
    selection = part(root / "select", lambda d: select_stage(cfg, root / "sft", d))
    si = part(root / "self_improve", lambda d: self_improve_stage(cfg, root / "select", d))
    ev = part(root / "evaluate", lambda d: evaluate_stage(cfg, root / "select", root / "self_improve", d,
                                                          train))
    rounds = [{"round": i, **{k: r[k] for k in ROUND_KEYS if k in r}} for i, r in enumerate(si["rounds"])]
    return {
        "data_fraction": fraction, "seed": seed, "sft_episodes": sft["train_episodes"],
        "sft_steps": sft["final_step"], "policy_step": selection["policy"]["step"],
        "reward_step": selection["reward"]["step"],
        **{policy: {k: ev[policy][k] for k in POLICY_KEYS if k in ev[policy]} for policy in ("sft", "self_improved")},
        "success_detector": ev["success_detector"],
        "self_improvement_episodes": si["total_episodes"], "self_improvement_env_steps": si["total_env_steps"],
        "best_round": si["best_round"], "rounds": rounds,
        "seconds": {name: p["seconds"] for name, p in (("sft", sft), ("self_improve", si), ("evaluate", ev))},
    }


def normalised(fraction: float) -> float:
    """A data fraction as its branch is named: 1/3 and 0.3333 are one branch (the results files
    hold 0.3333 and 0.6667), not two rows and folders."""
    return round(fraction, 4)


def key(row: dict[str, Any]) -> tuple[int, float]:
    """Results in run order: seed, then the larger fraction first."""
    return row["seed"], -normalised(row["data_fraction"])


def previous_rows(path: Path, cfg: RunConfig, source: str | None) -> list[dict[str, Any]]:
    """The results file's rows, if they were measured with this recipe from this dataset (`source`:
    --dataset's folder name, None when generated from the config)."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if recipe(DOMAIN, old["config"]) != recipe(DOMAIN, json.loads(cfg.to_json())):
        print(f"{path} was measured with another config: starting it anew")
        return []
    measured_on = old.get("dataset", {}).get("source")
    if measured_on != source:
        print(f"{path} was measured on another dataset ({measured_on or 'generated'}, "
              f"this invocation: {source or 'generated'}): starting it anew")
        return []
    return old["results"]


def means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per fraction, the means over seeds of success, length and the objects lifted, before and after."""
    out = {}
    for fraction in sorted({r["data_fraction"] for r in rows}):
        mine = [r for r in rows if r["data_fraction"] == fraction]
        out[f"{fraction:g}"] = {"seeds": len(mine), "sft_episodes": mine[0]["sft_episodes"], **{
            f"{policy}.{k}": float(np.mean([r[policy][k] for r in mine]))
            for policy in ("sft", "self_improved") for k in POLICY_KEYS
            if k != "optimal_length_ratio" and all(k in r[policy] for r in mine)}}
    return out


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per branch, detected and true success and the objects lifted in each practice round (Figure 11, right)."""
    panels = {f"{r['data_fraction']:g} of the data, seed {r['seed']}: round {r['best_round']} kept":
              round_rate_series(r["rounds"]) for r in rows}
    return plot_curve_panels(panels, path, xlabel="Self-Improvement episodes", ylabel="share of a round's episodes",
                             ylim=(0.0, 1.02))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-aloha"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3333, 0.6667],
                        help="data fractions, to 4 decimals (1/3 is 0.3333)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", help="JSON overriding the aloha-insertion defaults, as for efm --config")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--dataset", type=Path,
                        help="an existing aloha-insertion demonstration dataset (efm dataset) instead of generating one")
    args = parser.parse_args()
    fractions = list(dict.fromkeys(normalised(f) for f in args.fractions))
    cfg = load_config(DOMAIN, args.config)
    cfg = cfg.replace(data=replace(cfg.data, fractions=tuple(fractions)))
    # the parts under --out (the dataset and subsamples first) are keyed by fraction and seed only
    made_with(args.out, {"config": config_changes(DOMAIN, cfg),
                         "dataset": None if args.dataset is None else str(args.dataset.resolve())})
    t0 = time.time()
    if args.dataset is None:
        dataset_dir = args.out / "dataset"
        dataset = part(dataset_dir, lambda d: dataset_stage(cfg, d, overwrite=True))
    else:  # a dataset made before (efm dataset --domain aloha-insertion): its statistics
        dataset_dir = args.dataset
        # its folder's name, not its path: results are committed and paths are this machine's
        dataset = {"source": args.dataset.name, **rlds.read_metadata(args.dataset).get("stats", {})}
    rows: list[dict[str, Any]] = []
    source = None if args.dataset is None else args.dataset.name
    for seed in args.seeds:
        for fraction in fractions:
            row = branch(cfg, args.out, dataset_dir, fraction, seed)
            # read again: another invocation may have written
            rows = merge(previous_rows(args.results, cfg, source), [row], key)
            config = json.loads(cfg.to_json())
            config["data"]["fractions"] = sorted({r["data_fraction"] for r in rows}, reverse=True)  # the rows'
            result = {"command": "benchmarks/aloha_run.py", "seconds_this_invocation": time.time() - t0,
                      "config": config, "dataset": dataset, "results": rows,
                      "means": means(rows)}
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(result, indent=1, default=float))
            plot_rounds(rows, args.results.with_name(args.results.stem + "_rounds.png"))
    print(json.dumps(means(rows), indent=1))
    for r in rows:
        print(f"f{r['data_fraction']:g} s{r['seed']}: SFT {r['sft']['success_rate']:.2f} / "
              f"{r['sft']['mean_episode_length']:.1f} steps -> Self-Improved {r['self_improved']['success_rate']:.2f} / "
              f"{r['self_improved']['mean_episode_length']:.1f}; rounds "
              f"{[round(x['ground_truth_success_rate'], 2) for x in r['rounds']]}")
    print(f"({(time.time() - t0) / 60:.1f} min; {args.results})")


if __name__ == "__main__":
    main()
