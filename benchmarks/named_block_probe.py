"""Can the table's image stem find a block by its name? A probe without the language model.

Pretraining finds the effector to 2 cm but named blocks no better than picking one of the
board's blocks (README, "Pretraining with the three changes"). This probe separates seeing
from binding: `vl-cpu`'s stem (two stride-2 3x3 convs, 16 and 32 channels) reads one rendered
board, and a learned query per block name (its 16 names, an embedding each) fires over the
stem's features; the spatial softmax's expected position is regressed onto the named block's
board position (squared error), for every block on the board. Readers:
- `query`: the name's embedding is the query (what `vl-cpu-gkp`'s grounding does, without
  the text tower in between);
- `query-mlp`: the query through an MLP, a 3x3 conv on the features first (more capacity);
- `effector`: the same stem and one learned query for the effector (the control: found by
  pretraining).
Boards are rendered by the tabletop env (4 of the 16 blocks each) and split into training and
held-out boards; error in cm on the held-out boards.

  .venv/bin/python benchmarks/named_block_probe.py --boards 3000 --steps 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from efm.config import default_config
from efm.envs.tabletop.env import TabletopEnv
from efm.envs.tabletop.geometry import BLOCK_TRANSLATION, BLOCKS, EFFECTOR_TRANSLATION, RGB
from efm.models.vit import spatial_keypoints

RESULTS = Path(__file__).parent / "results" / "named_block_probe.json"
READERS = ("query", "query-mlp", "effector")
EFFECTOR_ID = len(BLOCKS)  # the effector's query id, after the 16 blocks


def render_boards(count: int, first: int, num_envs: int = 16) -> dict[str, np.ndarray]:
    """Frames [n, H, W, 3], and per board its on-board object ids [n, 5] (4 blocks, then the
    effector) with their positions [n, 5, 2]."""
    cfg = default_config("tabletop")
    table = dataclasses.replace(cfg.env.tabletop, render_images=True, state_observation=True)
    env = TabletopEnv(dataclasses.replace(cfg.env, tabletop=table), num_envs, seed=0)
    frames, ids, xy = [], [], []
    try:
        for start in range(first, first + count, num_envs):
            n = min(num_envs, first + count - start)
            mask = np.arange(num_envs) < n
            obs = env.reset(mask, start + np.arange(num_envs)).observation
            for j in range(n):
                names = env.blocks_on_board[j]
                frames.append(obs[RGB][j])
                ids.append([BLOCKS.index(b) for b in names] + [EFFECTOR_ID])
                xy.append([obs[BLOCK_TRANSLATION][j, BLOCKS.index(b)] for b in names] + [obs[EFFECTOR_TRANSLATION][j]])
    finally:
        env.close()
    return {"rgb": np.stack(frames), "ids": np.asarray(ids, np.int32), "xy": np.asarray(xy, np.float32)}


class NamedLocator(nn.Module):
    """A frame and object ids [B, K] -> expected positions [B, K, 2] in the board's frame."""

    mlp: bool

    @nn.compact
    def __call__(self, rgb: jax.Array, ids: jax.Array) -> jax.Array:
        x = rgb.astype(jnp.float32) / 127.5 - 1.0
        for i, channels in enumerate((16, 32)):  # vl-cpu's stem
            x = nn.gelu(nn.Conv(channels, (3, 3), strides=2, padding="SAME", name=f"stem_{i}")(x))
        if self.mlp:
            x = nn.gelu(nn.Conv(64, (3, 3), padding="SAME", name="features")(x))
        query = nn.Embed(EFFECTOR_ID + 1, x.shape[-1], name="names")(ids)  # [B, K, C]
        if self.mlp:
            query = nn.Dense(x.shape[-1], name="query_out")(nn.gelu(nn.Dense(64, name="query_in")(query)))
        heat = jnp.einsum("bhwc,bkc->bhwk", x, query)
        rc = spatial_keypoints(heat)  # [B, K, 2] (row, column) in [-1, 1]
        return nn.Dense(2, name="to_board")(rc)  # the camera's perspective: image -> board, learned


def probe(reader: str, train: dict[str, np.ndarray], val: dict[str, np.ndarray], steps: int, eval_every: int,
          batch: int, seed: int) -> list[dict[str, float]]:
    model = NamedLocator(mlp=reader == "query-mlp")
    objects = slice(4, 5) if reader == "effector" else slice(0, 4)
    mean = train["xy"][:, objects].reshape(-1, 2).mean(0)
    params = model.init(jax.random.PRNGKey(seed), train["rgb"][:2], train["ids"][:2, objects])
    opt = optax.adam(1e-3)
    state = opt.init(params)

    def loss(p: Any, rgb: jax.Array, ids: jax.Array, xy: jax.Array) -> jax.Array:
        return jnp.mean(jnp.sum((model.apply(p, rgb, ids) + mean - xy) ** 2, -1))

    @jax.jit
    def step(p: Any, st: Any, rgb: jax.Array, ids: jax.Array, xy: jax.Array) -> tuple[Any, Any]:
        g = jax.grad(loss)(p, rgb, ids, xy)
        updates, st = opt.update(g, st)
        return optax.apply_updates(p, updates), st

    predict = jax.jit(lambda p, rgb, ids: model.apply(p, rgb, ids) + mean)

    def error_cm(p: Any) -> float:
        got = np.concatenate([np.asarray(predict(p, val["rgb"][i:i + 256], val["ids"][i:i + 256, objects]))
                              for i in range(0, len(val["rgb"]), 256)])
        return float(100 * np.linalg.norm(got - val["xy"][:, objects], axis=-1).mean())

    rng = np.random.default_rng(seed)
    curve = [{"step": 0, "error_cm": error_cm(params)}]
    for s in range(1, steps + 1):
        i = rng.integers(0, len(train["rgb"]), batch)
        params, state = step(params, state, train["rgb"][i], train["ids"][i, objects], train["xy"][i, objects])
        if s % eval_every == 0:
            curve.append({"step": s, "error_cm": error_cm(params)})
            print(f"{reader}: step {s}, {curve[-1]['error_cm']:.1f} cm", flush=True)
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boards", type=int, default=3000, help="training boards")
    p.add_argument("--validation-boards", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    t = time.time()
    train = render_boards(args.boards, 0)
    val = render_boards(args.validation_boards, 10**9)
    render_s = time.time() - t
    guess = float(100 * np.linalg.norm(val["xy"][:, :4] - train["xy"][:, :4].reshape(-1, 2).mean(0), axis=-1).mean())
    results: dict[str, Any] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results.update({"boards": args.boards, "validation_boards": args.validation_boards, "batch": args.batch,
                    "render_s": render_s, "blocks_mean_guess_cm": guess})
    for reader in args.readers:  # resumable: a finished reader is kept and skipped
        key = f"{reader}-steps{args.steps}"
        if key in results:
            continue
        t = time.time()
        results[key] = {"curve": probe(reader, train, val, args.steps, args.eval_every, args.batch, 0),
                        "seconds": time.time() - t}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: (v["curve"][-1] if isinstance(v, dict) and "curve" in v else v) for k, v in results.items()},
                     indent=1))


if __name__ == "__main__":
    main()
