"""Does the vision-language EFM learn on the table? A short SFT of a variant on a table dataset's
fraction, its validation NLL per objective against what ignoring the inputs would score (the
marginal of the training targets), and Block2Block success of the selected policy on fixed
tasks. Resumable: rerunning with the same --name continues the SFT from its last checkpoint.

  .venv/bin/efm dataset --domain tabletop --out runs/table4k/dataset
  .venv/bin/efm subsample --domain tabletop --dataset runs/table4k/dataset --out runs/table4k/sub --fractions 0.1 0.8
  .venv/bin/python benchmarks/table_learning_check.py --train runs/table4k/sub/fraction_0.8 \\
      --validation runs/table4k/sub/validation --steps 1500

From pretrained towers (benchmarks/table_pretrain.py): add --init runs/table-pretrain/pretrain/params.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np

from efm.config import default_config, practice_config
from efm.data import rlds
from efm.models.tokenizers import make_vocabulary

RESULTS = Path(__file__).parent / "results" / "table_learning_check.json"


def marginal_nll(train_dir: str, cfg, limit: int = 2000) -> dict[str, float]:
    """Entropy of the BC and steps-to-go targets' empirical distribution (nats): the
    validation NLL of a model that ignores its inputs."""
    vocab = make_vocabulary(cfg.tokenizer)
    split = "validation" if "validation" in rlds.split_sizes(train_dir) else "train"
    episodes = list(itertools.islice(rlds.iter_episodes(train_dir, split), limit))
    out = {}
    for name, tokens in (
            ("bc", vocab.action_targets(np.concatenate([e.actions for e in episodes]))),
            ("steps_to_go", vocab.steps_to_go_targets(
                np.concatenate([np.arange(e.length, -1, -1) for e in episodes if e.success])))):
        counts = np.array(list(collections.Counter(map(tuple, tokens)).values()), float)
        p = counts / counts.sum()
        out[name] = float(-(p * np.log(p)).sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--variant", default=None, help="model variant (default: the table's)")
    p.add_argument("--init", default=None,
                   help="start from this Orbax params checkpoint (e.g. `efm pretrain`'s OUT/params); default: scratch")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--ordinal-sigma", type=float, default=None, help="sft.ordinal_sigma (default: the table's)")
    p.add_argument("--grounding-weight", type=float, default=0.0,
                   help="sft.grounding_weight: supervise the instruction's block names to their blocks "
                        "(a grounded variant; privileged positions as training targets only)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--episodes", type=int, default=50, help="Block2Block evaluation episodes")
    p.add_argument("--name", default="check")
    p.add_argument("--out", default="runs/table-learning-check")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    cfg = default_config("tabletop")
    cfg = cfg.replace(
        model=dataclasses.replace(cfg.model, variant=args.variant or cfg.model.variant,
                                  **({"init": "orbax", "init_path": args.init} if args.init
                                     else {"init": "scratch", "init_path": ""})),
        sft=dataclasses.replace(cfg.sft, num_steps=args.steps, eval_every=args.eval_every,
                                checkpoint_every=args.eval_every, warmup_steps=min(100, args.steps // 10),
                                ordinal_sigma=cfg.sft.ordinal_sigma if args.ordinal_sigma is None else args.ordinal_sigma,
                                grounding_weight=args.grounding_weight),
        eval=dataclasses.replace(cfg.eval, num_episodes=args.episodes, plot_episodes=4))
    from efm.stages import evaluate_stage, select_stage, sft_stage  # after the config is checked

    out = Path(args.out) / args.name
    t = time.time()
    sft = sft_stage(cfg, args.train, args.validation, out / "sft", progress=True)
    sft_seconds = time.time() - t
    select_stage(cfg, out / "sft", out / "select")
    metrics = evaluate_stage(practice_config(cfg), out / "select", None, out / "eval", None)
    result = {"variant": cfg.model.variant, "init": args.init or "scratch", "ordinal_sigma": cfg.sft.ordinal_sigma,
              "train": args.train, "steps": args.steps,
              "batch_size": cfg.sft.batch_size, "sft_seconds_this_call": sft_seconds,
              "grounding_weight": args.grounding_weight,
              "validation_nll": [{k: v for k, v in h.items() if k in ("step", "train/grounding_loss") or k.startswith("val/")}
                                 for h in sft["history"]],
              "input_blind_nll": marginal_nll(args.train, cfg), "block2block": metrics["sft"]}
    print(json.dumps(result, indent=1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
