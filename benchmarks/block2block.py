"""The paper's main LanguageTable claim on this project's table (Section 4, Figure 5), and the
BananaTable transfer (Section 4.3.2).

Runs `efm run --domain tabletop` (the kfp pipeline) for the given fractions and seeds: SFT on
the table's demonstrations (every task family), Self-Improvement on Block2Block tasks, and,
from the same Stage-1 checkpoints, Self-Improvement on BananaTable, whose banana the data never
contained. Writes benchmarks/results/block2block.json in the summary.json contract and checks
the claim: SFT(10%) + Self-Improvement (a few % extra episodes) beats SFT(80%) on Block2Block
success. Reported as measured, whichever way it comes out.

The benchmark is hours of CPU, so it runs in pieces: one pipeline run per (seed, fraction)
branch, each merged into the results file as it finishes (rows of other branches measured with
the same config are kept). Rerunning with the same --out reuses the steps kfp has cached (the
dataset first of all) and resumes an interrupted SFT from its last checkpoint. Every branch
starts from the table's pretraining (the same for every seed and fraction); by default from the
one shipped in benchmarks/checkpoints/table-pretrain (made by the pipeline's pretrain step with
the defaults, 80 minutes of the 2 cores), so that a branch fits one working session;
`--pretrained ""` has the pipeline pretrain again. `--fractions` picks the branches to run; the
config (the kfp steps' cache key) is the same whichever are run.

    .venv/bin/python benchmarks/block2block.py --out runs/bench-block2block
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from resumable import code_version, merge, recipe, warn_other_code

from efm.cli import load_config
from efm.evaluation.report import markdown_table, plot_success_vs_episodes
from efm.evaluation.stats import difference_interval, successes, verdict, wilson_interval
from efm.pipelines.local import run_local

RESULTS = Path(__file__).parent / "results" / "block2block.json"
REPO = Path(__file__).parent.parent
PRETRAINED = Path(__file__).parent / "checkpoints" / "table-pretrain"


def pooled(rows: list[dict], domain: str, fraction: float, policy: str, episodes: int) -> dict:
    """A policy's successes over every seed measured, each seed's rate out of `episodes`
    evaluation tasks, with the pooled rate's Wilson interval."""
    ks = [successes(r[policy]["success_rate"], episodes) for r in rows
          if r["domain"] == domain and r["data_fraction"] == fraction]
    n = episodes * len(ks)
    return {"domain": domain, "data_fraction": fraction, "policy": policy, "seeds": len(ks), "successes": sum(ks),
            "episodes": n, "success_rate": sum(ks) / n, "wilson_95": list(wilson_interval(sum(ks), n))}


def compare(a: dict, b: dict) -> dict:
    """a's success rate minus b's, with Newcombe's interval and what it says of 'a beats b'."""
    interval = difference_interval(a["successes"], a["episodes"], b["successes"], b["episodes"])
    return {"difference": a["success_rate"] - b["success_rate"], "newcombe_95": list(interval),
            "a_beats_b": verdict(interval)}


def claims(rows: list[dict], episodes: int) -> dict:
    """The claim over the table's smallest and largest fractions measured so far, and every
    policy's pooled success and Self-Improvement's effect per domain and fraction, with 95%
    intervals of the evaluation's noise (`episodes` tasks per seed; efm.evaluation.stats)."""
    fractions = sorted({r["data_fraction"] for r in rows if r["domain"] == "tabletop"})
    if not fractions:
        return {}
    small, large = fractions[0], fractions[-1]
    extra = [r["self_improvement_episodes"] / r["dataset_episodes"] for r in rows if r["domain"] == "tabletop"]
    branches = sorted({(r["domain"], r["data_fraction"]) for r in rows}, key=lambda b: (b[0] != "tabletop", b))
    success = {(d, f, p): pooled(rows, d, f, p, episodes) for d, f in branches for p in ("sft", "self_improved")}
    return {"self_improvement_episodes_over_dataset": float(np.mean(extra)),
            # a: Self-Improved at the smallest fraction, b: SFT at the largest (one fraction: no claim)
            "self_improved_small_vs_sft_large": compare(success["tabletop", small, "self_improved"],
                                                        success["tabletop", large, "sft"]) if large > small else None,
            "evaluation_episodes_per_seed": episodes,
            "success": list(success.values()),
            # a: Self-Improved, b: SFT, from the same Stage-1 checkpoints
            "self_improvement": [{"domain": d, "data_fraction": f} | compare(success[d, f, "self_improved"],
                                                                               success[d, f, "sft"])
                                 for d, f in branches]}


# kfp names a component's second task in a run "<name>-2": in one branch's run, the transfer
# domain's (the data's domain comes first in the graph).
TRANSFER_TASKS = ("self-improve-2", "evaluate-2")
BRANCH_TASKS = ("sft", "select", "self-improve", "evaluate")


def minutes(parts: list[dict]) -> dict:
    """Wall minutes of each branch measured, whole and less its transfer domain's practice and
    evaluation (the Block2Block benchmark alone), and their sums over the branches run whole
    (every step of the branch executed in that invocation, none resumed)."""
    rows = []
    for p in sorted(parts, key=lambda p: (p["seed"], p["data_fraction"])):
        tasks = p.get("task_seconds") or {}
        transfer = sum(tasks.get(t, 0.0) for t in TRANSFER_TASKS) / 60
        whole = all(t in p.get("executed", []) for t in BRANCH_TASKS) and not p.get("resumed")
        rows.append({"seed": p["seed"], "data_fraction": p["data_fraction"], "run_whole": whole,
                     "whole": p["seconds"] / 60, "block2block": p["seconds"] / 60 - transfer,
                     "transfer": transfer, "dataset": tasks.get("dataset", 0.0) / 60, "sft": tasks.get("sft", 0.0) / 60})
    timed = [r for r in rows if r["run_whole"]]
    return {"branches": rows, "branches_run_whole": len(timed), "whole": sum(r["whole"] for r in timed),
            "block2block": sum(r["block2block"] for r in timed)}


def practice_counts(rounds: dict) -> dict:
    """One Self-Improvement's practice from its `rounds.json`: rounds, episodes ended, successes
    the reward model detected and true ones (each round's rates times its episodes), round kept."""
    rows = rounds["rounds"]
    return {"rounds": len(rows), "episodes": int(sum(r["ended_episodes"] for r in rows)),
            "detected": int(sum(round(r["success_rate"] * r["ended_episodes"]) for r in rows)),
            "true": int(sum(round(r["ground_truth_success_rate"] * r["ended_episodes"]) for r in rows)),
            "best_round": rounds["best_round"]}


def run_practice(run_dir: Path) -> dict:
    """domain -> practice counts, for the Self-Improvement steps one pipeline run executed."""
    return {json.loads((f.parent / "config.json").read_text())["env"]["domain"]: practice_counts(json.loads(f.read_text()))
            for f in sorted(run_dir.glob("self-improve*/model/rounds.json"))}


def branch_runs(pipeline_root: Path) -> dict[tuple[int, float], str]:
    """(seed, fraction) -> the newest run that subsampled that branch (run names sort by time),
    read from the subsample step's outputs: for parts recorded before they named their run."""
    runs = {}
    for f in sorted(pipeline_root.glob("*/subsample/executor_output.json")):
        meta = json.loads(f.read_text())["artifacts"]["train"]["artifacts"][0]["metadata"]
        runs[int(meta["seed"]), float(meta["fraction"])] = f.parent.parent.name
    return runs


def add_practice(parts: list[dict], out_dir: Path) -> None:
    """Each part's practice counts from its run under `out_dir` (the benchmark's --out), where
    that run is still there."""
    root = out_dir / "pipeline_root"
    found = branch_runs(root) if root.is_dir() else {}
    for p in parts:
        name = p.get("run_name") or found.get((p["seed"], p["data_fraction"]))
        if name and (root / name).is_dir():
            p["run_name"], p["practice"] = name, run_practice(root / name)


def plot_path(results: Path) -> Path:
    return results.with_name(results.stem + "_success_vs_episodes.png")


def plot_results(out: dict, results: Path) -> None:
    """Block2Block's Figure 5 beside the results file (BananaTable's data held no banana, so its
    episodes-used axis means nothing); none without table rows."""
    table = [r for r in out["results"] if r["domain"] == "tabletop"]
    if table:
        plot_success_vs_episodes(table, plot_path(results), full_scale=False,
                                 title="Block2Block: success rate against episodes used")


def write_results(out: dict, results: Path) -> None:
    """The results file, and its figure."""
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=1))
    plot_results(out, results)


def key(row: dict) -> tuple:
    return row["domain"], row["data_fraction"], row["seed"]


def same_recipe(config: dict) -> dict:
    """The recipe, less where the pretraining comes from (the pipeline's step or a directory it
    wrote; the pretrain section, which says what it is, stays)."""
    return recipe("tabletop", config, drop=(("model", "init_path"),))


# What a pretraining's weights depend on: the same for the run, or the weights are another recipe's.
PRETRAIN_RECIPE = (("pretrain",), ("model", "variant"), ("tokenizer",), ("env", "tabletop"))


def check_pretrained(directory: Path, config: dict) -> None:
    """Refuses an `efm pretrain` output made with another recipe than `config`'s."""
    summary = directory / "pretrain.json"
    if not summary.is_file():
        raise SystemExit(f"--pretrained {directory}: no pretrain.json (not an `efm pretrain` output)")
    made = json.loads(load_config("tabletop", json.dumps(json.loads(summary.read_text())["config"])).to_json())

    def part(c: dict, path: tuple[str, ...]) -> object:
        for key in path:
            c = c[key]
        return c

    differ = [".".join(p) for p in PRETRAIN_RECIPE if part(made, p) != part(config, p)]
    if differ:
        raise SystemExit(f"--pretrained {directory} was made with other {', '.join(differ)} than this run's: "
                         '`--pretrained ""` pretrains in the pipeline')


def cpu_model() -> str:
    """The processor's name, with the core count: timings of two sessions differ by the machine."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return f"{names[0] if names else 'unknown'} x {os.cpu_count()}"


def load_previous(path: Path, config: dict) -> dict:
    """The results file's rows and parts, if it was measured with this config; those measured by
    other code than this checkout's are kept, and warned about."""
    if not path.exists():
        return {"results": [], "parts": []}
    old = json.loads(path.read_text())
    if "config" not in old or same_recipe(old["config"]) != same_recipe(config):
        print(f"{path} was measured with another config: starting it anew")
        return {"results": [], "parts": []}
    current = code_version()
    for p in old.get("parts", []):
        warn_other_code(f"{path}: seed {p['seed']}, fraction {p['data_fraction']:g}", p.get("commit"), current)
    return {"results": old.get("results", []), "parts": old.get("parts", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-block2block")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", help="JSON overriding the defaults, as for efm --config")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--pretrained", default=str(PRETRAINED.relative_to(REPO)),
                        help='an `efm pretrain` output every branch starts from, relative to the repository '
                             'or absolute ("": the pipeline pretrains)')
    parser.add_argument("--rerun", nargs="+", default=[], metavar="STEP",
                        help="execute these steps of the branches though cached (as efm run --rerun)")
    parser.add_argument("--plot", action="store_true",
                        help="only compute the results file's claims and minutes and draw its Figure 5 again "
                             "(beside it, *_success_vs_episodes.png), from the rows and parts it holds; "
                             "the practice counts again from the runs in --out")
    args = parser.parse_args()
    if args.plot:
        if not args.results.is_file():
            raise SystemExit(f"--plot: no results file {args.results}")
        out = json.loads(args.results.read_text())
        out["claims"] = claims(out["results"], out["config"]["eval"]["num_episodes"])
        out["minutes"] = minutes(out.get("parts", []))
        add_practice(out.get("parts", []), Path(args.out))
        write_results(out, args.results)
        print(json.dumps(out["claims"], indent=1))
        print(json.dumps(out["minutes"], indent=1))
        print(json.dumps({f"seed {p['seed']}, fraction {p['data_fraction']:g}": p.get("practice")
                          for p in out.get("parts", [])}, indent=1))
        print(plot_path(args.results))
        return
    cfg = load_config("tabletop", args.config)
    if args.pretrained:
        start = Path(args.pretrained) if Path(args.pretrained).is_absolute() else REPO / args.pretrained
        cfg = cfg.replace(model=replace(cfg.model, init_path=str(start)))
    config = json.loads(cfg.to_json())
    if args.pretrained:
        check_pretrained(start, config)
    config["model"]["init_path"] = args.pretrained  # as given: the shipped one's is relative
    out = {"config": config, **load_previous(args.results, config)}
    for seed in args.seeds:
        for fraction in args.fractions:
            t0, commit = time.time(), code_version()  # the code the branch starts with
            summary = run_local(cfg, args.out, [fraction], [seed], rerun=args.rerun)
            out["results"] = merge(out["results"], summary["results"], key)
            out["parts"] = [p for p in out["parts"] if (p["data_fraction"], p["seed"]) != (fraction, seed)] + [
                {"data_fraction": fraction, "seed": seed, "pretrained": args.pretrained or "the pipeline's step",
                 "seconds": time.time() - t0, "task_seconds": summary["kfp"]["seconds"], "cpu": cpu_model(),
                 "commit": commit, "run_name": summary["kfp"]["run_name"],
                 "executed": summary["kfp"]["executed"], "resumed": summary["kfp"]["resumed"]}]
            add_practice(out["parts"], Path(args.out))
            out["claims"] = claims(out["results"], cfg.eval.num_episodes)
            out["minutes"] = minutes(out["parts"])
            write_results(out, args.results)
            print(markdown_table(out["results"]))
            print(json.dumps(out["claims"], indent=1))
            print(f"(seed {seed}, fraction {fraction:g}: {out['parts'][-1]['seconds'] / 60:.1f} min; {args.results})")


if __name__ == "__main__":
    main()
