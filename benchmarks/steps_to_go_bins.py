"""How many steps-to-go bins? The paper's 50 over 0..100 (2-step bins) against coarser and finer
ones, judged by what the success detector d(o, g) <= s needs: precision and recall.

For each bin count it trains Stage 1 on the same data fraction and seed (only
`tokenizer.steps_to_go_bins` differs), selects checkpoints as the pipeline does, and then
scores every reward model on the same observations: the evaluation episodes of the first bin
count's SFT policy (ground-truth success per observation recorded), so the detectors differ and
the states they judge do not. Per bin count and threshold s (in steps): precision, recall and
F1 of d(o, g) <= s; the mean absolute error of d on the validation demonstrations (true
steps-to-go T - t); and the SFT policy's own success rate (the bins are also the policy's
steps-to-go objective). Resumable: finished parts are kept under --out and skipped; an --out
made with another domain, fraction, seed or config is refused (the bin count names its folder).

  .venv/bin/python benchmarks/steps_to_go_bins.py --out runs/bench-stg-bins --bins 100 50 25
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
from resumable import config_changes, made_with, part

from efm.cli import load_config
from efm.config import RunConfig
from efm.data import subsample
from efm.data.features import input_spec
from efm.envs.base import Episode
from efm.evaluation.evaluate import evaluate_policy, precision_recall
from efm.rollout import SUCCESS
from efm.stages import dataset_stage, read_split, seeded, select_stage, sft_stage, subsample_stage

RESULTS = Path(__file__).parent / "results" / "steps_to_go_bins.json"


def detector_curve(d: np.ndarray, truth: np.ndarray, thresholds: list[float]) -> list[dict[str, float | None]]:
    """Precision, recall and F1 of d <= s against ground truth, per threshold s."""
    out = []
    for s in thresholds:
        pr = precision_recall(d, truth, s)
        p, r = pr["precision"], pr["recall"]
        out.append({"threshold": s, **pr, "f1": 2 * p * r / (p + r) if p and r else None})
    return out


def reward_and_policy(cfg: RunConfig, select_dir: Path) -> tuple[Any, Any, Any]:
    """(functions, selected reward params, selected policy params) of one bin count's run."""
    from efm.models.efm import make_functions
    from efm.models.tokenizers import make_vocabulary
    from efm.sft.select import POLICY, REWARD, load_selected

    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    return fns, load_selected(select_dir, REWARD), load_selected(select_dir, POLICY)


def scores(fns: Any, reward: Any, episodes: list[Episode]) -> np.ndarray:
    """d(o, g) of the reward model for every observation of the episodes, concatenated."""
    spec = input_spec(fns.vocab)
    return np.concatenate([np.asarray(fns.steps_to_go(reward, spec.episode_inputs(e))) for e in episodes])


def settings(domain: str, fraction: float, seed: int, cfg: RunConfig) -> dict[str, Any]:
    """What every part under --out depends on but its folder's name does not say."""
    return {"domain": domain, "fraction": fraction, "seed": seed, "config": config_changes(domain, cfg)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", default="pointmass")
    p.add_argument("--bins", type=int, nargs="+", default=[100, 50, 25])
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    p.add_argument("--validation-episodes", type=int, default=100, help="demonstrations for the error of d")
    p.add_argument("--config", help="JSON overriding the domain's defaults, as for efm --config")
    p.add_argument("--out", type=Path, default=Path("runs/bench-stg-bins"))
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    asked = load_config(args.domain, args.config)
    base = seeded(asked, args.seed)
    base = base.replace(data=replace(base.data, fractions=(args.fraction,)))
    t0 = time.time()
    made_with(args.out, settings(args.domain, args.fraction, args.seed, asked))
    data_dir = args.out / "dataset"
    part(data_dir, lambda d: dataset_stage(base, d, overwrite=True, progress=False))

    def subsampled(d: Path) -> dict[str, Any]:
        shutil.rmtree(d, ignore_errors=True)  # an interrupted subsampling starts again
        return {"counts": {f: v["count"] for f, v in subsample_stage(base, data_dir, d, args.seed)["fractions"].items()}}

    sub = args.out / "subsample"
    part(sub, subsampled)
    train, validation = sub / subsample.fraction_dirname(args.fraction), sub / subsample.VALIDATION_DIR
    configs = {b: base.replace(tokenizer=replace(base.tokenizer, steps_to_go_bins=b)) for b in args.bins}
    for b, cfg in configs.items():
        root = args.out / f"bins{b}"
        part(root / "sft", lambda d, cfg=cfg: {k: v for k, v in sft_stage(cfg, train, validation, d, progress=False).items()
                                               if k != "history"})
        part(root / "select", lambda d, cfg=cfg, root=root: select_stage(cfg, root / "sft", d))
    first = args.bins[0]
    models = {b: reward_and_policy(cfg, args.out / f"bins{b}" / "select") for b, cfg in configs.items()}
    own: dict[int, dict[str, float]] = {}
    episodes: list[Episode] = []
    for b, cfg in configs.items():
        fns, reward, policy = models[b]
        own[b], _, eps = evaluate_policy(cfg, fns, policy, reward)
        if b == first:
            episodes = eps
    truth = np.concatenate([e.observation_extras[SUCCESS] for e in episodes]).astype(bool)
    demos = read_split(validation, limit=args.validation_episodes)
    true_stg = np.concatenate([np.arange(e.length, -1, -1) for e in demos]).astype(float)
    rows = []
    for b, cfg in configs.items():
        fns, reward, _ = models[b]
        curve = detector_curve(scores(fns, reward, episodes), truth, args.thresholds)
        best = max((c for c in curve if c["f1"] is not None), key=lambda c: c["f1"], default=None)
        error = np.abs(scores(fns, reward, demos) - true_stg)
        rows.append({"bins": b, "bin_width_steps": cfg.tokenizer.steps_to_go_max / b, "detector": curve,
                     "best_f1": best, "validation_abs_error_steps": {"mean": float(error.mean()),
                                                                     "median": float(np.median(error))},
                     "sft_policy": own[b]})
        print(f"{b:4d} bins: best F1 {best['f1'] if best else float('nan'):.3f} at s={best['threshold'] if best else '-'}; "
              f"|d - true| mean {error.mean():.2f} steps; own SFT success {own[b]['success_rate']:.2f}", flush=True)
    result = {"command": "benchmarks/steps_to_go_bins.py", "domain": args.domain, "fraction": args.fraction,
              "seed": args.seed, "scored_on": f"{len(episodes)} evaluation episodes of the {first}-bin SFT policy "
              f"({int(truth.size)} observations, {int(truth.sum())} successful)",
              "seconds_this_invocation": time.time() - t0, "results": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(args.results)


if __name__ == "__main__":
    main()
