"""Time of one Stage-2 learner update (REINFORCE, AdamW) on the table's defaults: the learner (the
gradient of every parameter, the frozen image tower's zeroed by the optimizer), against
differentiating the trained parameters only, and against training the tower too
(`self_improve.freeze` empty). The first two take the same time: inside the jitted step the
frozen gradient is never read, so XLA drops the tower's backward pass either way.

One batch of `self_improve.batch_size` samples: a reset environment's inputs with random
frames, and action tokens sampled from the policy (fresh weights: the time does not depend on
them). Each figure is the median of `--repeats` updates after two warm-up ones (compilation).

  .venv/bin/python benchmarks/learner_update.py --out benchmarks/results/learner_update.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from efm.config import RunConfig, default_config
from efm.data.features import input_spec
from efm.domains import make_env
from efm.models.prefix_lm import TEXT_INPUT, trim_text
from efm.self_improve.actor import ACTION_TOKENS, RETURN
from efm.self_improve.builder import FleetBuilder
from efm.self_improve.learner import Learner, apply_gradients, make_optimizer, reinforce_objective


def make_batch(builder: FleetBuilder, params: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """B samples: one reset environment's inputs (its instruction), each with random frames."""
    cfg = builder.cfg
    b = cfg.self_improve.batch_size
    env = make_env(cfg.env, 1, 0)
    ts = env.reset()
    getattr(env, "close", lambda: None)()
    one = input_spec(builder.fns.vocab).inputs(ts.observation, None, ts.goal, ts.instruction)
    inputs = {k: rng.integers(0, 256, (b, *v.shape[1:])).astype(v.dtype) if v.dtype == np.uint8
              else np.repeat(v, b, axis=0) for k, v in one.items()}
    tokens = np.asarray(builder.fns.sample_action_tokens(params, {k: jnp.asarray(v) for k, v in inputs.items()},
                                                         jax.random.PRNGKey(0)))
    return {**{f"inputs/{k}": v for k, v in inputs.items()}, ACTION_TOKENS: tokens,
            RETURN: rng.normal(size=b).astype(np.float32)}


def trained_only_step(cfg: RunConfig, builder: FleetBuilder, params: Any) -> Callable[[dict], None]:
    """The alternative: differentiate the trained parameters only, zeros for the frozen ones."""
    fns, si = builder.fns, cfg.self_improve
    optimizer = make_optimizer(si, params)
    state = [params, optimizer.init(params)]
    loss_fn = reinforce_objective(fns, si)

    @jax.jit
    def step(p: Any, opt_state: Any, batch: dict) -> tuple[Any, Any]:
        flat = traverse_util.flatten_dict(p)
        held = {k: v for k, v in flat.items() if any(part in si.freeze for part in k)}
        grads, _ = jax.grad(lambda t: loss_fn(traverse_util.unflatten_dict({**t, **held}), batch), has_aux=True)(
            {k: v for k, v in flat.items() if k not in held})
        grads = traverse_util.unflatten_dict({**grads, **jax.tree.map(jnp.zeros_like, held)})
        return apply_gradients(optimizer, p, opt_state, grads, jnp.float32(si.learning_rate))

    def run(batch: dict) -> None:
        state[0], state[1] = step(state[0], state[1], trim_text(batch, TEXT_INPUT))
        jax.block_until_ready(state[0])

    return run


def learner_step(cfg: RunConfig, builder: FleetBuilder, params: Any) -> Callable[[dict], None]:
    learner = Learner(builder.fns, params, cfg.self_improve)

    def run(batch: dict) -> None:
        learner.step(batch)  # synchronous: it reads the loss back

    return run


def median_ms(run: Callable[[dict], None], batch: dict, repeats: int) -> float:
    for _ in range(2):
        run(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="tabletop")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cfg = default_config(args.domain)
    builder = FleetBuilder(cfg)
    params = builder.init_params(0)
    batch = make_batch(builder, params, np.random.default_rng(0))
    unfrozen = cfg.replace(self_improve=dataclasses.replace(cfg.self_improve, freeze=()))
    results = {
        "domain": args.domain, "variant": cfg.model.variant, "batch_size": cfg.self_improve.batch_size,
        "freeze": list(cfg.self_improve.freeze), "repeats": args.repeats,
        "ms_per_update": {
            "learner": median_ms(learner_step(cfg, builder, params), batch, args.repeats),
            "trained_only_gradient": median_ms(trained_only_step(cfg, builder, params), batch, args.repeats),
            "nothing_frozen": median_ms(learner_step(unfrozen, builder, params), batch, args.repeats),
        },
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
