"""Where a multi-object pretraining checkpoint's answers go wrong: the error (cm) per object
position in the answer ("red moon blue cube arm" -> 1st, 2nd, 3rd), teacher-forced (earlier
answers given) and greedy (the model's own earlier answers), on held-out boards.

  .venv/bin/python benchmarks/table_pretrain_slots.py --workdir runs/table-pretrain-k5/pretrain --step 6000
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax.numpy as jnp
import numpy as np

from efm.config import default_config
from efm.data.pretrain import TableQuestions
from efm.models.efm import make_functions, objective_inputs
from efm.models.prefix_lm import split_inputs
from efm.models.tokenizers import make_vocabulary
from efm.sft.trainer import restore_params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the pretraining OUT directory")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--objects", type=int, default=5, help="objects per question the checkpoint was trained on")
    p.add_argument("--boards", type=int, default=32)
    p.add_argument("--variant", default=None, help="the checkpoint's model variant (default: the table's)")
    args = p.parse_args()
    cfg = default_config("tabletop")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=args.variant or cfg.model.variant),
                      pretrain=dataclasses.replace(cfg.pretrain, validation_scenes=args.boards,
                                                   objects_per_question=args.objects, questions_per_scene=1))
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    vocab, k = fns.vocab, args.objects
    data = TableQuestions(cfg, vocab)
    params = restore_params(args.workdir, args.step)
    answers = [a for a in data.validation_answers() if len(a[0]) == k]
    batches = list(data.validation())
    data.close()
    greedy, forced = [], []
    for batch in batches:
        inputs, rest = split_inputs(batch)
        full = rest["target_mask"].sum(axis=1) == 2 * k
        inputs, rest = {n: v[full] for n, v in inputs.items()}, {n: v[full] for n, v in rest.items()}
        greedy.append(np.asarray(fns.locate(params, inputs, k)))
        x = objective_inputs({n: jnp.asarray(v) for n, v in inputs.items()}, "locate")
        length = vocab.locate_length
        logits = np.asarray(fns.model.apply({"params": params}, x, jnp.asarray(rest["objective"]),
                                            jnp.asarray(rest["targets"][:, :length])))
        valid = vocab.valid_tokens("locate")[:length]
        forced.append(np.where(valid[None], logits, -np.inf).argmax(-1)[:, :2 * k])
    true = np.stack([xy for _, xy in answers])
    out = {}
    for name, tokens in (("teacher_forced", forced), ("greedy", greedy)):
        xy = vocab.position_from_tokens(np.concatenate(tokens).reshape(-1, k, 2))
        error = 100 * np.linalg.norm(xy - true, axis=-1)
        out[name] = {"median_cm_per_slot": np.median(error, axis=0).round(1).tolist(),
                     "mean_cm_per_slot": error.mean(axis=0).round(1).tolist()}
    print(json.dumps({"workdir": args.workdir, "step": args.step, "boards": args.boards, **out}, indent=1))


if __name__ == "__main__":
    main()
