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

`--head tokens` asks the next question: is it the tokens? The same MLP then classifies each of
the 70 targets into the action tokens' 256 bins (cross-entropy, as the EFM learns them: the
hidden state to 70 x 64 features, one shared 64 -> 256 head, like a decoder's per-position
logits), against one-hot targets or, with `--sigma`, the Gaussian over the ordered bins that
SFT's `ordinal_sigma` trains with (`efm.math.ordinal_targets`). Its policy takes each bin's
argmax; its L1 is that policy's, held out.

    .venv/bin/python benchmarks/aloha_probe.py --dataset D --out runs/aloha-probe
    .venv/bin/python benchmarks/aloha_probe.py --dataset D --out runs/aloha-probe-tokens --head tokens \
        --steps 2000 10000 --results benchmarks/results/aloha_probe_tokens.json

Resumable: the params at each checkpoint step are kept in --out with the optimizer's state, so
training resumes from the last one, and a finished row is not rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from aloha_decoder import KEYS, closed_loop, dataset_demonstrations
from probe_mlp import mlp

from efm import math
from efm.config import default_config
from efm.models.tokenizers import make_vocabulary

RESULTS = Path(__file__).parent / "results" / "aloha_probe.json"
WIDTH, DEPTH = 512, 3
TOKEN_FEATURES = 64  # features per target of the token head
# The EFM's action tokens (one per target): the token head learns exactly what SFT's BC does.
VOCAB = make_vocabulary(default_config("aloha-insertion").tokenizer)
BINS = VOCAB.action.vocab_size


def features(observation: dict[str, np.ndarray]) -> np.ndarray:
    """[N, 28]: joints, peg pose, socket pose, as the state policy reads them."""
    return np.concatenate([np.asarray(observation[k], np.float32).reshape(len(observation[k]), -1) for k in KEYS], 1)


def init(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), jnp.zeros(b)) for k, a, b in zip(keys, sizes, sizes[1:], strict=False)]


def token_logits(params: list, x: jax.Array, dims: int) -> jax.Array:
    """The token head: [B, dims, BINS] logits (params: the MLP to dims x TOKEN_FEATURES, then
    the shared head)."""
    h = jax.nn.gelu(mlp(params[:-1], x).reshape(x.shape[0], dims, TOKEN_FEATURES))
    w, b = params[-1]
    return h @ w + b


def predict(params: list, x: jax.Array, head: str, dims: int) -> np.ndarray:
    """Regressed targets [B, dims] (head l1), or what the argmax tokens decode to (head tokens)."""
    if head == "l1":
        return np.asarray(mlp(params, x))
    return VOCAB.action_from_tokens(np.asarray(jnp.argmax(token_logits(params, x, dims), -1)))


def held_out_metrics(params: list, x: jax.Array, y: np.ndarray, head: str) -> dict[str, float]:
    """Held-out L1 of the policy's targets; for the token head also the NLL a target of the true
    tokens (one-hot, whatever it trained on), comparable with SFT's validation BC loss a token."""
    dims = y.shape[1]
    out = {"held_out_l1": round(float(np.abs(predict(params, x, head, dims) - y).mean()), 4)}
    if head == "tokens":
        logp = jax.nn.log_softmax(token_logits(params, x, dims))
        nll = -jnp.take_along_axis(logp, jnp.asarray(VOCAB.action_targets(y))[..., None], -1).mean()
        out["held_out_nll_per_token"] = round(float(nll), 4)
    return out


def train(x: np.ndarray, y: np.ndarray, checkpoints: list[int], batch: int, seed: int, out: Path,
          head: str = "l1", sigma: float = 0.0, report: Callable[[list], dict] | None = None) -> dict[int, list]:
    """The params at each checkpoint step (`x` normalised; `y` the targets, for head tokens their
    action tokens), `report`ed as they are saved. What
    --out holds is reused: the params of every checkpoint saved before, and training resumes
    from the last one that kept its optimizer and sampler state (the same steps as unbroken)."""
    dims = y.shape[1]
    key = jax.random.PRNGKey(seed)
    params = init(key, [x.shape[1]] + [WIDTH] * DEPTH + [dims if head == "l1" else dims * TOKEN_FEATURES])
    if head == "tokens":
        params += init(jax.random.fold_in(key, 1), [TOKEN_FEATURES, BINS])
    saved = {s: out / f"probe-{s}.msgpack" for s in checkpoints}
    result = {s: flax.serialization.from_bytes(params, path.read_bytes()) for s, path in saved.items() if path.exists()}
    if len(result) == len(saved):
        return result

    def loss(p: list, xb: jax.Array, yb: jax.Array) -> jax.Array:
        if head == "l1":
            return jnp.abs(mlp(p, xb) - yb).mean()
        targets = math.ordinal_targets(yb, 0, BINS, BINS, sigma)
        return -jnp.sum(targets * jax.nn.log_softmax(token_logits(p, xb, dims)), -1).mean()

    warmup = min(500, max(checkpoints) // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup, max(checkpoints), 1e-5)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(params)
    rng, first = np.random.default_rng(seed), 0
    resumable = [s for s in result if saved[s].with_suffix(".state").exists()]
    if resumable:  # the optimizer's state and the sampler's, beside the last such checkpoint's params
        first = max(resumable)
        params = result[first]
        state = flax.serialization.msgpack_restore(saved[first].with_suffix(".state").read_bytes())
        opt_state = flax.serialization.from_state_dict(opt_state, state["optimizer"])
        rng.bit_generator.state = json.loads(state["sampler"])
        print(f"resuming at step {first}", flush=True)

    @jax.jit
    def step(p: list, st, xb: jax.Array, yb: jax.Array):
        grads = jax.grad(loss)(p, xb, yb)
        updates, st = optimizer.update(grads, st, p)
        return optax.apply_updates(p, updates), st

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i in range(first, max(checkpoints) + 1):
        if i in saved and i not in result:
            saved[i].write_bytes(flax.serialization.to_bytes(params))
            state = {"optimizer": flax.serialization.to_state_dict(opt_state),
                     "sampler": json.dumps(rng.bit_generator.state)}
            saved[i].with_suffix(".state").write_bytes(flax.serialization.msgpack_serialize(state))
            result[i] = params
            print(f"step {i}: {report(params) if report else ''} ({time.perf_counter() - start:.0f} s)", flush=True)
        if i < max(checkpoints):
            rows = rng.integers(0, len(x), batch)
            params, opt_state = step(params, opt_state, x[rows], y[rows])
    return result


def head_name(args: argparse.Namespace) -> str:
    if args.head == "l1":
        return "L1 regression"
    targets = f"Gaussian targets, sigma {args.sigma} of the bins" if args.sigma > 0 else "one-hot targets"
    return f"{BINS}-bin tokens ({TOKEN_FEATURES} features per target, a shared head), cross-entropy, {targets}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="an RLDS dataset of successful demonstrations")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--held-out", type=int, default=20, help="demonstrations held out")
    p.add_argument("--steps", type=int, nargs="+", default=[2000, 10000, 30000])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head", choices=["l1", "tokens"], default="l1")
    p.add_argument("--sigma", type=float, default=0.0, help="head tokens: Gaussian targets over the bins (0: one-hot)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    data = dataset_demonstrations(args.dataset)
    held = np.isin(data["episode"], np.unique(data["episode"])[:args.held_out])
    x, y = features(data), data["action"].astype(np.float32)
    mean, std = x[~held].mean(0), x[~held].std(0) + 1e-6  # the training demonstrations' statistics
    print(f"{len(np.unique(data['episode']))} demonstrations, {len(x)} samples ({held.sum()} held out)", flush=True)
    xn = (x - mean) / std
    x_held, y_held = jnp.asarray(xn[held]), y[held]
    y_train = VOCAB.action_targets(y[~held]) if args.head == "tokens" else y[~held]

    def report(params: list) -> dict[str, float]:
        return held_out_metrics(params, x_held, y_held, args.head)

    trained = train(xn[~held], y_train, sorted(args.steps), args.batch, args.seed, args.out, args.head, args.sigma,
                    report)
    done = json.loads(args.results.read_text())["rows"] if args.results.exists() else []
    rows = []
    for steps, params in sorted(trained.items()):
        for tokenized in (False, True) if args.head == "l1" else (True,):
            found = [r for r in done if r["steps"] == steps and r["tokenized"] == tokenized]
            if found:  # its held-out figures again, from the saved params
                rows.append({**found[0], **report(params)})
            else:
                def act(observation: dict, key: jax.Array, params: list = params, tokenized: bool = tokenized,
                        ) -> np.ndarray:
                    del key  # deterministic
                    chunk = predict(params, (features(observation) - mean) / std, args.head, y.shape[1])
                    chunk = np.clip(chunk, -1.0, 1.0)
                    return VOCAB.action_from_tokens(VOCAB.action_targets(chunk)) if tokenized else chunk

                t0 = time.perf_counter()
                rows.append({"steps": steps, "tokenized": tokenized, **report(params),
                             **closed_loop(act, args.eval_episodes, args.seed + 10_000),
                             "eval_seconds": round(time.perf_counter() - t0)})
                print(rows[-1], flush=True)
            summary = {"command": "benchmarks/aloha_probe.py", "dataset": args.dataset.name,
                       "demonstrations": len(np.unique(data["episode"])), "held_out_episodes": args.held_out,
                       "mlp": f"{DEPTH} x {WIDTH}, gelu, batch {args.batch}", "head": head_name(args),
                       "eval_episodes": args.eval_episodes, "rows": rows}
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(summary, indent=1) + "\n")

if __name__ == "__main__":
    main()
