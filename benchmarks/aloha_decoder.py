"""Aloha state mode: which decoder learns the 70-token action chunks (behavioural cloning alone).

First, whether the tokens can carry the task at all: the first `--held-out` successful
demonstrations' actions replayed open loop in the same scenes (the episode id is the env seed),
as recorded and through the 256-bin action tokens. Then scripted demonstrations (the dataset's
demonstrator, successful episodes kept) train each state variant on BC with SFT's optimizer and its BC share of a batch (64 of 128). Reported per variant:
held-out NLL per action token during training and, at the end, per (target in the chunk, joint),
then closed-loop success and mean length on `--eval-episodes` new scenes, greedy and sampled
(evaluation samples). The MLP decoder sees earlier tokens through one dense layer over all of
them; the transformer decoder attends to the one it needs (the same joint one target earlier).

    .venv/bin/python benchmarks/aloha_decoder.py --out runs/aloha-decoder
    .venv/bin/python benchmarks/aloha_decoder.py --out OUT --dataset D --variants mlp-tx-small+joints \
        --steps 3000 --sigma 0.01     # Gaussian targets over the bins (aloha_probe.py --head tokens)

Parts already in --out (the demonstrations, each variant's row) are reused, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from efm.config import ModelConfig, RunConfig, SftConfig, default_config
from efm.data import rlds
from efm.data.features import InputSpec, input_spec
from efm.envs.aloha.demonstrator import AlohaDemonstrator
from efm.envs.aloha.env import JOINTS, PEG_POSE, SOCKET_POSE, AlohaInsertionEnv, lift_progress
from efm.models.efm import OBJECTIVE_ID, EFMFunctions, make_functions
from efm.models.tokenizers import make_vocabulary
from efm.rollout import rollout
from efm.sft.trainer import make_optimizer, objective_nll

RESULTS = Path(__file__).parent / "results" / "aloha_decoder.json"
KEYS = (JOINTS, PEG_POSE, SOCKET_POSE)
MAX_STEPS = 100  # chunks per episode (the demonstrator's successes take 17 to 58)


def demonstrations(path: Path, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Observations, actions and episode ids of the successful episodes among `episodes`."""
    if path.exists():
        return dict(np.load(path))
    cfg = default_config("aloha-insertion").env
    rows: dict[str, list] = {k: [] for k in (*KEYS, "action", "episode")}
    for e in range(seed, seed + episodes):
        env, demo = AlohaInsertionEnv(cfg, 1, e), AlohaDemonstrator(cfg, 1, e)
        episode = next(rollout(env, demo, max_steps=MAX_STEPS, interrupt=demo.gave_up, episodes_per_env=1))
        env.close()
        if episode.success:  # the observations each action was taken in (all but the last)
            for k in KEYS:
                rows[k].extend(episode.observations[k][:-1])
            rows["action"].extend(episode.actions)
            rows["episode"].extend([e] * episode.length)
    data = {k: np.asarray(v) for k, v in rows.items()}
    np.savez(path, **data)
    return data


def dataset_demonstrations(directory: Path) -> dict[str, np.ndarray]:
    """The same arrays from an RLDS dataset of successful demonstrations (`efm dataset`);
    episode ids are their order in it."""
    rows: dict[str, list] = {k: [] for k in (*KEYS, "action", "episode")}
    for i, episode in enumerate(rlds.iter_episodes(directory)):
        for k in KEYS:
            rows[k].extend(episode.observations[k][:-1])
        rows["action"].extend(episode.actions)
        rows["episode"].extend([i] * episode.length)
    return {k: np.asarray(v) for k, v in rows.items()}


def replay(data: dict[str, np.ndarray], episodes: np.ndarray, tokenized: bool) -> int:
    """How many of `episodes` succeed when their recorded actions are replayed open loop (then
    held for 10 more steps), exactly or through the action tokens."""
    cfg = default_config("aloha-insertion")
    vocab = make_vocabulary(cfg.tokenizer)
    succeeded = 0
    for e in episodes:
        actions = list(data["action"][data["episode"] == e])
        env = AlohaInsertionEnv(cfg.env, 1, int(e))
        env.reset()
        for a in actions + actions[-1:] * 10:
            a = vocab.action_from_tokens(vocab.action_targets(a[None])) if tokenized else a[None]
            if env.step(a).success[0]:
                succeeded += 1
                break
        env.close()
    return succeeded


def consecutive_target_bins(actions: np.ndarray, bins: int = 256) -> float:
    """Median distance, in action bins, between consecutive targets of one joint in a chunk:
    how nearly each target after the first copies the same joint's token 14 places earlier."""
    chunks = actions.reshape(len(actions), -1, 14)
    return float(np.median(np.abs(np.diff(chunks, axis=1)))) / (2 / (bins - 1))


JOINT_TOKENS = {"+joints": True, "+joints-own": False}  # row suffix -> state_shares_action_tokens


def row_config(row: str) -> RunConfig:
    """A row's config: `VARIANT`, or `VARIANT+joints` (the joints also as input tokens, the
    action tokens of the same bins) or `VARIANT+joints-own` (tokens of their own)."""
    cfg = default_config("aloha-insertion")  # its tokenizer reads the joints as shared tokens
    variant, _, suffix = row.partition("+")
    if suffix:
        tok = dataclasses.replace(cfg.tokenizer, state_shares_action_tokens=JOINT_TOKENS["+" + suffix])
    else:
        tok = dataclasses.replace(cfg.tokenizer, state_key="", state_low=(), state_high=(),
                                  state_shares_action_tokens=False)
    return cfg.replace(tokenizer=tok, model=ModelConfig(variant=variant))


GRIPPERS = (6, 13)  # the joints whose targets are open/closed commands, not where they are


def first_target_bins(data: dict[str, np.ndarray], bins: int = 256) -> float:
    """Median distance, in action bins, between a chunk's first target of an arm joint and that
    joint's current position: how nearly the first target copies the joint's input token."""
    arm = [j for j in range(14) if j not in GRIPPERS]
    gap = np.abs(data["action"][:, :14] - data[JOINTS])[:, arm]
    return float(np.median(gap)) / (2 / (bins - 1))


def inputs(spec: InputSpec, observation: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    n = len(observation[JOINTS])
    return {k: jnp.asarray(v) for k, v in spec.inputs({k: observation[k] for k in KEYS}, None, {}, [""] * n).items()}


def token_nll(fns: EFMFunctions, params: dict, x: dict, targets: jax.Array) -> np.ndarray:
    """Held-out NLL of each action token, [target in chunk, joint], averaged over samples."""
    objective = jnp.full((targets.shape[0],), OBJECTIVE_ID["bc"], jnp.int32)
    logits = fns.model.apply({"params": params}, x, objective, targets)
    logits = jnp.where(jnp.asarray(fns.vocab.valid_tokens("bc")), logits, -jnp.inf)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    return -np.asarray(logp).mean(0).reshape(-1, 14)


Act = Callable[[dict[str, np.ndarray], jax.Array], np.ndarray]  # (observation, key) -> [N, 70] chunks


def closed_loop(act: Act, episodes: int, seed: int) -> dict:
    """Success and mean length of `episodes` new scenes, and how far the policy got: the share
    of episodes that lifted the peg and the socket (`lift_progress`: each held up a while)."""
    env = AlohaInsertionEnv(default_config("aloha-insertion").env, episodes, seed)
    ts, done, length = env.reset(), np.zeros(episodes, bool), np.full(episodes, MAX_STEPS)
    poses = {k: [ts.observation[k]] for k in (PEG_POSE, SOCKET_POSE)}
    key = jax.random.PRNGKey(seed)
    for t in range(MAX_STEPS):
        key, sub = jax.random.split(key)
        ts = env.step(act(ts.observation, sub))
        for k, seen in poses.items():
            seen.append(ts.observation[k])
        length[ts.success & ~done] = t + 1
        done |= ts.success
        if done.all():
            break
    env.close()
    stages = [lift_progress({k: np.stack(seen)[:, i] for k, seen in poses.items()}) for i in range(episodes)]
    return {"success": float(done.mean()), "mean_length": float(length.mean()),
            **{k: float(np.mean([s[k] for s in stages])) for k in ("peg_lifted", "socket_lifted")}}


def token_policy(fns: EFMFunctions, params: dict, greedy: bool) -> Act:
    """The EFM's action chunks, decoded from its tokens."""
    spec = input_spec(fns.vocab)
    return lambda observation, key: fns.sample_actions(params, inputs(spec, observation), key, greedy=greedy)[0]


def train(variant: str, data: dict, held_out: np.ndarray, steps: int, eval_episodes: int, seed: int,
          params_path: Path, sigma: float = 0.0) -> dict:
    """BC for `steps` (sigma > 0: against Gaussian targets over the bins, SFT's `ordinal_sigma`),
    then the row; the trained params go to `params_path` (flax msgpack), so the policy can be
    looked at again without retraining."""
    cfg = row_config(variant)
    vocab = make_vocabulary(cfg.tokenizer)
    fns, spec = make_functions(cfg.model, vocab), input_spec(vocab)
    targets = vocab.action_targets(data["action"])
    x_all = {k: data[k] for k in KEYS}
    x_held, t_held = inputs(spec, {k: v[held_out] for k, v in x_all.items()}), jnp.asarray(targets[held_out])
    train_rows = np.flatnonzero(~held_out)
    optimizer = make_optimizer(dataclasses.replace(SftConfig(), num_steps=steps))
    params = fns.init(jax.random.PRNGKey(seed), inputs(spec, {k: v[:2] for k, v in x_all.items()}))
    opt_state = optimizer.init(params)
    batch = SftConfig().batch_size // 2  # SFT splits a batch over BC and steps-to-go

    @jax.jit
    def step(params: dict, opt_state, x: dict, t: jax.Array):
        batch = {**{f"inputs/{k}": v for k, v in x.items()}, "targets": t, "target_mask": jnp.ones(t.shape),
                 "objective": jnp.full((t.shape[0],), OBJECTIVE_ID["bc"], jnp.int32)}
        grads = jax.grad(lambda p: objective_nll(fns, p, batch, ("bc",), sigma)[0]["bc"].mean())(params)  # SFT's BC loss
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng, curve, start = np.random.default_rng(seed), [], time.perf_counter()
    for i in range(steps + 1):
        if i % 500 == 0:
            nll = float(token_nll(fns, params, x_held, t_held).mean())
            curve.append({"step": i, "held_out_nll_per_token": round(nll, 3)})
            print(f"{variant} step {i}: held-out NLL {nll:.3f} a token ({time.perf_counter() - start:.0f} s)", flush=True)
        if i < steps:
            rows = rng.choice(train_rows, batch)
            params, opt_state = step(params, opt_state, inputs(spec, {k: v[rows] for k, v in x_all.items()}),
                                     jnp.asarray(targets[rows]))
    train_s = time.perf_counter() - start
    params_path.write_bytes(flax.serialization.to_bytes(params))
    per_token = token_nll(fns, params, x_held, t_held)
    row = {"variant": variant, "sft_steps": steps, "ordinal_sigma": sigma, "train_seconds": round(train_s),
           "held_out_curve": curve,
           "held_out_nll_per_target": [round(float(v), 3) for v in per_token.mean(1)],
           "held_out_nll_per_joint": [round(float(v), 3) for v in per_token.mean(0)]}
    for greedy in (True, False):
        row["greedy" if greedy else "sampled"] = closed_loop(token_policy(fns, params, greedy), eval_episodes,
                                                             seed + 10_000)
        print(variant, "greedy" if greedy else "sampled", row["greedy" if greedy else "sampled"], flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=300, help="demonstrations attempted")
    p.add_argument("--held-out", type=int, default=20, help="successful demonstrations held out")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--variants", nargs="+", default=["mlp-small", "mlp-tx-small", "mlp-tx-small+joints"],
                   help="model variants; +joints: the joints as input tokens too (+joints-own: not the action's)")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--sigma", type=float, default=0.0,
                   help="train on Gaussian targets over the action bins (SFT's ordinal_sigma; 0: one-hot)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", type=Path, help="train on this RLDS dataset's demonstrations instead (no replay "
                   "check: its episodes' scenes are not known here)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dataset:
        data, replayed = dataset_demonstrations(args.dataset), None
        attempted = rlds.read_metadata(args.dataset)["stats"]["demonstrations_attempted"]
    else:
        data, attempted = demonstrations(args.out / "demonstrations.npz", args.episodes, 1000 + args.seed), args.episodes
    episodes = np.unique(data["episode"])
    held_out = np.isin(data["episode"], episodes[:args.held_out])
    print(f"{len(episodes)} successful demonstrations of {attempted}, {len(held_out)} samples", flush=True)
    if not args.dataset:
        replayed = {"episodes": args.held_out, "exact": replay(data, episodes[:args.held_out], False),
                    "tokenized": replay(data, episodes[:args.held_out], True)}
        print("open-loop replay of held-out demonstrations, successes:", replayed, flush=True)
    rows = []
    for variant in args.variants:
        path = args.out / f"{variant}-{args.steps}{f'-sigma{args.sigma:g}' if args.sigma else ''}.json"
        if not path.exists():
            row = train(variant, data, held_out, args.steps, args.eval_episodes, args.seed,
                        path.with_suffix(".msgpack"), args.sigma)
            path.write_text(json.dumps(row, indent=1))
        rows.append(json.loads(path.read_text()))
    summary = {"command": "benchmarks/aloha_decoder.py", "dataset": args.dataset and args.dataset.name,
               "demonstrations": len(episodes), "attempted": attempted, "held_out_episodes": args.held_out, "samples": len(held_out),
               "eval_episodes": args.eval_episodes, "replay": replayed,
               "median_bins_between_consecutive_targets": round(consecutive_target_bins(data["action"]), 2),
               "median_bins_first_target_to_arm_joint": round(first_target_bins(data), 2),
               "rows": rows}
    args.results.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
