"""Aloha state mode: do the demonstrations make a policy at all? A decision probe.

The EFM's state policy raises the objects now and then but never inserts. Before blaming its
tokens or its training, this asks whether the data teach the task to the plainest learner that
reads the same state: an MLP regressing the 70 joint targets of a chunk (L1, as ACT regresses
its chunks) from the 14 joints and the peg and socket poses, trained on an RLDS dataset's
demonstrations (`efm dataset`), the first `--held-out` episodes held out. At each of `--steps`
it is rolled out in `--eval-episodes` new scenes (100 chunks at most), with its targets as
regressed and rounded to the 256 bins of the action tokens (what a perfect token policy could
do). Reported per row: held-out L1, closed-loop success, mean length and the share of episodes
that lifted the peg and the socket (held up, `efm.envs.aloha.env.lift_progress`).

    .venv/bin/python benchmarks/aloha_probe.py --dataset D --out runs/aloha-probe

Resumable: the params at each step are kept in --out and a finished row is not rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from aloha_decoder import KEYS, closed_loop, dataset_demonstrations
from probe_mlp import mlp

from efm.config import default_config
from efm.models.tokenizers import make_vocabulary

RESULTS = Path(__file__).parent / "results" / "aloha_probe.json"
WIDTH, DEPTH = 512, 3


def features(observation: dict[str, np.ndarray]) -> np.ndarray:
    """[N, 28]: joints, peg pose, socket pose, as the state policy reads them."""
    return np.concatenate([np.asarray(observation[k], np.float32).reshape(len(observation[k]), -1) for k in KEYS], 1)


def init(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), jnp.zeros(b)) for k, a, b in zip(keys, sizes, sizes[1:], strict=False)]


def train(x: np.ndarray, y: np.ndarray, x_held: np.ndarray, y_held: np.ndarray, checkpoints: list[int],
          batch: int, seed: int, out: Path) -> dict[int, tuple[list, float]]:
    """(params, held-out L1) at each checkpoint step; `x` is normalised. Read from --out when a
    run saved them all before."""
    params = init(jax.random.PRNGKey(seed), [x.shape[1]] + [WIDTH] * DEPTH + [y.shape[1]])
    saved = {s: out / f"probe-{s}.msgpack" for s in checkpoints}

    def loss(p: list, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return jnp.abs(mlp(p, xb) - yb).mean()

    if all(path.exists() for path in saved.values()):
        loaded = {s: flax.serialization.from_bytes(params, path.read_bytes()) for s, path in saved.items()}
        return {s: (q, float(loss(q, x_held, y_held))) for s, q in loaded.items()}
    warmup = min(500, max(checkpoints) // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup, max(checkpoints), 1e-5)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(p: list, st, xb: jax.Array, yb: jax.Array):
        grads = jax.grad(loss)(p, xb, yb)
        updates, st = optimizer.update(grads, st, p)
        return optax.apply_updates(p, updates), st

    out.mkdir(parents=True, exist_ok=True)
    result, rng, start = {}, np.random.default_rng(seed), time.perf_counter()
    for i in range(max(checkpoints) + 1):
        if i in saved:
            l1 = float(loss(params, x_held, y_held))
            saved[i].write_bytes(flax.serialization.to_bytes(params))
            result[i] = (params, l1)
            print(f"step {i}: held-out L1 {l1:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
        if i < max(checkpoints):
            rows = rng.integers(0, len(x), batch)
            params, opt_state = step(params, opt_state, x[rows], y[rows])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="an RLDS dataset of successful demonstrations")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--held-out", type=int, default=20, help="demonstrations held out")
    p.add_argument("--steps", type=int, nargs="+", default=[2000, 10000, 30000])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    data = dataset_demonstrations(args.dataset)
    held = np.isin(data["episode"], np.unique(data["episode"])[:args.held_out])
    x, y = features(data), data["action"].astype(np.float32)
    mean, std = x[~held].mean(0), x[~held].std(0) + 1e-6  # the training demonstrations' statistics
    vocab = make_vocabulary(default_config("aloha-insertion").tokenizer)
    print(f"{len(np.unique(data['episode']))} demonstrations, {len(x)} samples ({held.sum()} held out)", flush=True)
    xn = (x - mean) / std
    trained = train(xn[~held], y[~held], xn[held], y[held], sorted(args.steps), args.batch, args.seed, args.out)
    done = json.loads(args.results.read_text())["rows"] if args.results.exists() else []
    rows = []
    for steps, (params, l1) in sorted(trained.items()):
        for tokenized in (False, True):
            found = [r for r in done if r["steps"] == steps and r["tokenized"] == tokenized]
            if found:
                rows.append(found[0])
                continue

            def act(observation: dict, key: jax.Array, params: list = params, tokenized: bool = tokenized) -> np.ndarray:
                del key  # deterministic
                chunk = np.clip(np.asarray(mlp(params, (features(observation) - mean) / std)), -1.0, 1.0)
                return vocab.action_from_tokens(vocab.action_targets(chunk)) if tokenized else chunk

            t0 = time.perf_counter()
            row = {"steps": steps, "tokenized": tokenized, "held_out_l1": round(l1, 4),
                   **closed_loop(act, args.eval_episodes, args.seed + 10_000),
                   "eval_seconds": round(time.perf_counter() - t0)}
            print(row, flush=True)
            rows.append(row)
            summary = {"command": "benchmarks/aloha_probe.py", "dataset": args.dataset.name,
                       "demonstrations": len(np.unique(data["episode"])), "held_out_episodes": args.held_out,
                       "mlp": f"{DEPTH} x {WIDTH}, gelu, L1, batch {args.batch}", "eval_episodes": args.eval_episodes,
                       "rows": rows}
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
