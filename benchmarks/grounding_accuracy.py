"""How well does a table model see the blocks its instructions name?

A grounded variant's `ground` output (where each block-name token's query fires in the current
frame) read back onto the table (`envs.tabletop.table_position`), against where the block is,
on every `--every`-th step of a table dataset's episodes: the perception the Stage-1 policy acts
on. `table_probes.py --parts policy` measured what the decision needs (blocks seen to about
1 cm make a policy, 4 cm do not). Per checkpoint: the error in cm over all block-name tokens, and
separately for the task's block and the Block2Block target. Resumable per checkpoint name.

    .venv/bin/python benchmarks/grounding_accuracy.py --dataset runs/table4k/sub/validation \\
        --params pretrained=runs/table-pretrain-gkp-ground/pretrain/params \\
        sft=runs/table-learning-check/gkp-ground-pretrained/select/policy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from efm import checkpoints
from efm.config import default_config
from efm.data import rlds
from efm.data.features import input_spec
from efm.data.grounding import instruction_grounding, span_owners
from efm.envs.tabletop import (
    BLOCK_HALF_HEIGHT,
    BLOCK_TRANSLATION,
    RGB,
    block_mentions,
    table_position,
)
from efm.models.efm import make_functions
from efm.models.prefix_lm import IMAGE
from efm.models.tokenizers import make_vocabulary

RESULTS = Path(__file__).parent / "results" / "grounding_accuracy.json"
Arrays = dict[str, np.ndarray]


def name_samples(dataset: str, split: str, every: int, cfg) -> tuple[Arrays, np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs of every `every`-th step, the true image position of each text token's
    block, the mask of block-name tokens and each token's role (0: the task's block, 1: the
    target block, -1: not a name)."""
    vocab = make_vocabulary(cfg.tokenizer)
    spec, text = input_spec(vocab), vocab.text
    inputs: list[Arrays] = []
    rcs, masks, roles = [], [], []
    for ep in rlds.iter_episodes(dataset, split, batch_size=16):
        steps = np.arange(0, ep.length + 1, every)
        frames = ep.observations[RGB]
        aspect = frames.shape[2] / frames.shape[1]
        rc, mask = instruction_grounding(text, [ep.instruction] * len(steps),
                                         ep.observations[BLOCK_TRANSLATION][steps], aspect, cfg.env.tabletop.camera)
        spans = [(a, b) for _, a, b in block_mentions(ep.instruction)]
        inputs.append({k: v[steps] for k, v in spec.episode_inputs(ep).items()})
        rcs.append(rc)
        masks.append(mask)
        roles.append(np.broadcast_to(span_owners(text, ep.instruction, spans), mask.shape))
    return ({k: np.concatenate([x[k] for x in inputs]) for k in inputs[0]}, np.concatenate(rcs),
            np.concatenate(masks) > 0, np.concatenate(roles))


def summary(errors_cm: np.ndarray) -> dict[str, float]:
    return {"tokens": int(errors_cm.size), "mean_cm": float(errors_cm.mean()), "median_cm": float(np.median(errors_cm)),
            **{f"within_{k}cm": float(np.mean(errors_cm <= k)) for k in (1, 2, 3)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="an RLDS table dataset directory")
    p.add_argument("--split", default="validation")
    p.add_argument("--params", nargs="+", required=True, help="NAME=PATH of Orbax params checkpoints")
    p.add_argument("--variant", default="vl-cpu-gkp", help="their model variant (a grounded one)")
    p.add_argument("--camera", default="oblique", help="the table camera the dataset was rendered with")
    p.add_argument("--every", type=int, default=4, help="every n-th step of each episode")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    named = dict(item.split("=", 1) for item in args.params)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    todo = {k: v for k, v in named.items() if k not in results}
    if not todo:
        print(json.dumps(results, indent=1))
        return
    cfg = default_config("tabletop")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=args.variant, init="scratch", init_path=""),
                      env=dataclasses.replace(cfg.env, tabletop=dataclasses.replace(cfg.env.tabletop,
                                                                                   camera=args.camera)))
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    inputs, true_rc, mask, roles = name_samples(args.dataset, args.split, args.every, cfg)
    aspect = inputs[IMAGE].shape[3] / inputs[IMAGE].shape[2]
    true_xy = table_position(true_rc[mask], BLOCK_HALF_HEIGHT, aspect, args.camera)
    ground = jax.jit(lambda p, x: fns.model.apply({"params": p}, x, method="ground"))
    for name, path in todo.items():
        params = checkpoints.load_params(path)
        seen = np.concatenate([np.asarray(ground(params, {k: v[i:i + 64] for k, v in inputs.items()}))
                               for i in range(0, len(mask), 64)])
        errors = np.linalg.norm(table_position(seen[mask], BLOCK_HALF_HEIGHT, aspect, args.camera) - true_xy,
                                axis=-1) * 100
        role = roles[mask]
        results[name] = {"params": path, "variant": args.variant, "dataset": args.dataset, "every": args.every,
                         "all_names": summary(errors), "task_block": summary(errors[role == 0]),
                         "target_block": summary(errors[role == 1])}
        print(name, json.dumps(results[name], indent=1), flush=True)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
