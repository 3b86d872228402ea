"""Does a grounding variant's text find what it names? Its grounding loss alone, from scratch.

The model's own path (`EFMFunctions.grounding_loss`: each name token's query over the stem's
features, the spatial softmax's expected image position, squared error to where the named
object is in the image) trained by Adam on the table's pretraining batches, nothing else: the
answer's cross-entropy and the language model are out of the loop, so a plateau here is the
grounding path's own. Guessing the image centre scores about 16 (squared 20ths of the image).
Which name tokens are supervised: all, block names only (word tokens), or the effector's
phrases only (spelled in byte tokens).

  .venv/bin/python benchmarks/grounding_only.py --steps 400 --tokens all blocks effector
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from efm.config import default_config
from efm.data.pretrain import TableQuestions
from efm.models.efm import GROUND_MASK, GROUND_RC, make_functions, objective_inputs
from efm.models.prefix_lm import TEXT, split_inputs
from efm.models.tokenizers import make_vocabulary

RESULTS = Path(__file__).parent / "results" / "grounding_only.json"
TOKENS = ("all", "blocks", "effector")


def token_mask(batch: dict[str, jax.Array], tokens: str) -> jax.Array:
    """The supervised name tokens: block names are word tokens (after the 256 bytes,
    `TextTokenizer`), the effector's phrases bytes."""
    mask = batch[GROUND_MASK]
    if tokens == "all":
        return mask
    words = batch[f"inputs/{TEXT}"] >= 256
    return mask * (words if tokens == "blocks" else ~words)


def train(variant: str, tokens: str, steps: int, every: int, seed: int) -> list[dict[str, float]]:
    cfg = default_config("tabletop")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=variant, init="scratch"))
    vocab = make_vocabulary(cfg.tokenizer)
    fns = make_functions(cfg.model, vocab)
    data = TableQuestions(cfg, vocab)
    batches = data.training(seed=seed)
    optimizer = optax.adam(cfg.pretrain.learning_rate)

    def loss(params: dict, batch: dict[str, jax.Array]) -> jax.Array:
        inputs, rest = split_inputs(batch)
        return fns.grounding_loss(params, objective_inputs(inputs, "locate"), rest[GROUND_RC],
                                  token_mask(batch, tokens))

    @jax.jit
    def step(params: dict, state: Any, batch: dict[str, jax.Array]) -> tuple[dict, Any, jax.Array]:
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    first = {k: jnp.asarray(v) for k, v in next(batches).items()}
    params = fns.init(jax.random.PRNGKey(seed), objective_inputs(split_inputs(first)[0], "locate"))
    state = optimizer.init(params)
    curve, window, t = [], [], time.time()
    try:
        for s in range(1, steps + 1):
            params, state, value = step(params, state, {k: jnp.asarray(v) for k, v in next(batches).items()})
            window.append(float(value))
            if s % every == 0:
                curve.append({"step": s, "grounding_loss": float(np.mean(window)), "seconds": time.time() - t})
                print(tokens, curve[-1], flush=True)
                window = []
    finally:
        data.close()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="vl-cpu-gkp")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=50, help="report the mean loss over this many steps")
    p.add_argument("--tokens", nargs="+", default=["all"], choices=TOKENS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    results: dict[str, Any] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for tokens in args.tokens:  # resumable: a finished run is kept and skipped
        key = f"{args.variant}-{tokens}-steps{args.steps}-seed{args.seed}"
        if key not in results:
            results[key] = train(args.variant, tokens, args.steps, args.every, args.seed)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v[-1] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
