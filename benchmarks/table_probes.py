"""Why does the vision-language EFM not learn the table on 2 CPU cores? Probes on a table
dataset, each a short training run measured on held-out episodes (`--parts`):

1. decision: an MLP that reads the simulator's privileged poses (effector, the named block,
   its target) predicts the BC and steps-to-go tokens, at the SFT's 16 samples per objective
   per step. How fast the targets are learnable once perception is solved.
2. policy: the same MLP acting in closed loop on the Stage-1 check's Block2Block tasks
   (tokens sampled, and greedy) at `--policy-steps`, beside the scripted demonstrator on the
   same tasks: which BC NLL makes a policy. Then again with the block positions seen through
   Gaussian noise (`--noise-cm` per axis, in training and acting): how accurate perception
   must be for a policy.
3. localization: where is the effector, from one camera frame? The black effector is the
   easiest thing in the frame to find. Three readers, the same frames and steps:
   - `vlm`: the table's vision-language model, answering with position tokens (the state
     tokenizer's bins, as the model reads the effector position), teacher-forced cross-entropy;
   - `cnn-tokens`: a small CNN with a spatial softmax, the same categorical answer;
   - `cnn-regression`: the same CNN regressing the position (squared error);
   - `vlm-48-frames`: the vision-language model trained and measured on the same 48 frames:
     whether the position reaches the answer through the image tokens at all (memorising).
   Reported as the error of the predicted position in centimetres (argmax bin centre for the
   categorical readers).

Resumable: each finished probe is kept in the results file and skipped on a rerun.

  .venv/bin/python benchmarks/table_probes.py --train runs/table4k/sub/fraction_0.8 \\
      --validation runs/table4k/sub/validation [--parts policy]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from probe_mlp import mlp

from efm.config import default_config, practice_config
from efm.data import rlds
from efm.domains import make_env
from efm.envs.base import TimeStep
from efm.envs.tabletop.demonstrator import TabletopDemonstrator
from efm.envs.tabletop.geometry import BLOCK_TRANSLATION, BLOCKS, EFFECTOR_TRANSLATION
from efm.envs.tabletop.tasks import Task, parse_instruction, task_target
from efm.evaluation.evaluate import episodes_per_env
from efm.math import ordinal_targets
from efm.models.efm import make_model
from efm.models.prefix_lm import IMAGE, TEXT
from efm.models.tokenizers import Vocabulary, make_vocabulary
from efm.rollout import end_on_ground_truth, rollout

RESULTS = Path(__file__).parent / "results" / "table_probes.json"
PARTS = ("decision", "policy", "localization")
READERS = ("cnn-regression", "cnn-tokens", "cnn-tokens-gauss", "cnn-tokens-mean", "vlm", "vlm-gauss")
Arrays = dict[str, np.ndarray]


# --- data ---------------------------------------------------------------------------------------

def pose_features(task: Task, effector: np.ndarray, blocks: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The decision probe's input: the effector, the named block, its target and their
    differences. blocks [len(BLOCKS), 2] (absent blocks anywhere); start: the block at reset."""
    target = task_target(task, dict(zip(BLOCKS, blocks, strict=True)), start)
    block = blocks[BLOCKS.index(task.block)]
    return np.concatenate([effector, block, target, block - effector, target - block,
                           [np.linalg.norm(target - block)]]).astype(np.float32)


PoseEpisode = tuple[Task, np.ndarray, np.ndarray, np.ndarray]  # task, effector [T+1, 2], blocks [T+1, 16, 2], actions [T, 2]


def pose_episodes(directory: str, split: str) -> list[PoseEpisode]:
    """What the decision probe reads of each episode (the frames are decoded and dropped)."""
    return [(parse_instruction(ep.instruction), ep.observations[EFFECTOR_TRANSLATION],
             ep.observations[BLOCK_TRANSLATION], ep.actions) for ep in rlds.iter_episodes(directory, split)]


def decision_data(episodes: list[PoseEpisode], vocab: Vocabulary, noise_cm: float = 0.0, seed: int = 0) -> Arrays:
    """Per step: privileged features (effector, the named block, its target and their
    differences; Gaussian noise of `noise_cm` per axis on every block, as imperfect
    perception), the BC tokens and the steps-to-go token."""
    rng = np.random.default_rng(seed)
    x, actions, stg = [], [], []
    for task, effector, blocks, acts in episodes:
        length = len(acts)
        seen = blocks + rng.normal(0.0, noise_cm / 100, blocks.shape)
        start = seen[0, BLOCKS.index(task.block)]
        x.extend(pose_features(task, effector[t], seen[t], start) for t in range(length))
        actions.append(acts)
        stg.append(np.arange(length, 0, -1))
    return {"x": np.asarray(x, np.float32), "bc": vocab.action.encode(np.concatenate(actions)),
            "stg": vocab.steps_to_go.encode(np.concatenate(stg).astype(np.float32))}


def frame_data(directory: str, split: str, every: int) -> Arrays:
    """Every `every`-th frame of each episode and the effector position in it."""
    frames, xy = [], []
    for ep in rlds.iter_episodes(directory, split):
        frames.append(ep.observations["rgb"][::every])
        xy.append(ep.observations[EFFECTOR_TRANSLATION][::every])
    return {"rgb": np.concatenate(frames), "xy": np.concatenate(xy).astype(np.float32)}


def marginal_xent(train: np.ndarray, val: np.ndarray, k: int) -> float:
    """Validation cross-entropy of the training marginal (add-one smoothed), per token, summed
    over positions: what a model that ignores its inputs scores. targets [N, L]"""
    total = 0.0
    for j in range(train.shape[1]):
        p = (np.bincount(train[:, j], minlength=k) + 1.0)
        total += float(-np.log(p / p.sum())[val[:, j]].mean())
    return total


# --- probes -------------------------------------------------------------------------------------

apply_mlp = jax.jit(mlp)
Logits = Callable[[np.ndarray], np.ndarray]  # pose features [N, F] -> the MLP's outputs [N, na*ka + ks]


def decision_probe(train: Arrays, val: Arrays, vocab: Vocabulary, checkpoints: tuple[int, ...],
                   batch: int, seed: int, as_policy: Callable[[Logits], dict] | None = None) -> dict[str, Any]:
    """Train the MLP; at each checkpoint its validation NLLs and, with `as_policy`, what that
    function measures of it in closed loop."""
    na, ka = vocab.action.num_tokens, vocab.action.vocab_size
    ks = vocab.steps_to_go.vocab_size
    mu, sd = train["x"].mean(0), train["x"].std(0) + 1e-6
    xt, xv = (train["x"] - mu) / sd, (val["x"] - mu) / sd
    sizes = [xt.shape[1], 256, 256, 256, na * ka + ks]
    key = jax.random.PRNGKey(seed)
    params = [(jax.random.normal(jax.random.fold_in(key, i), (a, b)) * np.sqrt(2 / a), jnp.zeros(b))
              for i, (a, b) in enumerate(itertools.pairwise(sizes))]

    def nll(p: list, x: jax.Array, a: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = mlp(p, x)
        la = jax.nn.log_softmax(out[:, :na * ka].reshape(-1, na, ka))
        bc = -jnp.take_along_axis(la, a[..., None], -1).sum((1, 2))
        st = -jnp.take_along_axis(jax.nn.log_softmax(out[:, na * ka:]), s[:, None], -1)[:, 0]
        return bc.mean(), st.mean()

    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p: list, st: Any, x: jax.Array, a: jax.Array, s: jax.Array) -> tuple[list, Any]:
        g = jax.grad(lambda p: sum(nll(p, x, a, s)))(p)
        u, st = opt.update(g, st)
        return optax.apply_updates(p, u), st

    rng = np.random.default_rng(seed)
    curve = []
    for i in range(1, max(checkpoints) + 1):
        idx = rng.integers(0, len(xt), batch)
        params, state = step(params, state, xt[idx], train["bc"][idx], train["stg"][idx])
        if i in checkpoints:
            bc, st = jax.jit(nll)(params, xv, val["bc"], val["stg"])
            curve.append({"step": i, "samples": i * batch, "val_bc": float(bc), "val_steps_to_go": float(st)})
            if as_policy is not None:
                curve[-1]["closed_loop"] = as_policy(lambda x, p=params: np.asarray(apply_mlp(p, (x - mu) / sd)))
            print("decision", curve[-1], flush=True)
    return {"batch": batch, "curve": curve,
            "input_blind": {"val_bc": marginal_xent(train["bc"], val["bc"], ka),
                            "val_steps_to_go": marginal_xent(train["stg"][:, None], val["stg"][:, None], ks)}}


class PosePolicy:
    """The decision probe as an agent (efm.rollout.Agent): reads the privileged poses and the
    instruction, samples each BC token from the MLP (greedy: the most likely), decodes the action."""

    def __init__(self, logits: Logits, vocab: Vocabulary, greedy: bool, seed: int, noise_cm: float = 0.0):
        self._logits, self._vocab, self._greedy, self._noise = logits, vocab, greedy, noise_cm / 100
        self._rng = np.random.default_rng(seed)
        self._tasks: list[Task | None] = []
        self._start: dict[int, np.ndarray] = {}

    def reset(self, mask: np.ndarray) -> None:
        if len(self._tasks) != len(mask):
            self._tasks = [None] * len(mask)
        for i in np.flatnonzero(mask):
            self._tasks[i] = None

    def observe(self, ts: TimeStep) -> dict[str, np.ndarray]:
        return {}

    def act(self, ts: TimeStep) -> dict[str, np.ndarray]:
        blocks, effector = ts.observation[BLOCK_TRANSLATION], ts.observation[EFFECTOR_TRANSLATION]
        if self._noise:  # as the training data saw them (exact positions draw nothing: same samples)
            blocks = blocks + self._rng.normal(0.0, self._noise, blocks.shape)
        x = []
        for i, text in enumerate(ts.instruction):
            if self._tasks[i] is None:  # the episode's first observation
                self._tasks[i] = parse_instruction(text)
                self._start[i] = blocks[i, BLOCKS.index(self._tasks[i].block)]
            x.append(pose_features(self._tasks[i], effector[i], blocks[i], self._start[i]))
        action = self._vocab.action
        na, ka = action.num_tokens, action.vocab_size
        logits = self._logits(np.stack(x))[:, :na * ka].reshape(-1, na, ka)
        logits = np.where(action.valid_tokens(), logits, -np.inf)
        if self._greedy:
            tokens = logits.argmax(-1)
        else:  # Gumbel-max: one sample per token from softmax(logits)
            tokens = (logits + self._rng.gumbel(size=logits.shape)).argmax(-1)
        return {"action": action.decode(tokens)}


def closed_loop(agent_for: Callable[[int], Any], episodes: int, seed: int) -> dict[str, float]:
    """Block2Block success and length of the agent on the Stage-1 check's fixed task list
    (the table's practice config, its evaluation seed), without rendering."""
    cfg = practice_config(default_config("tabletop"))
    cfg = cfg.replace(env=dataclasses.replace(cfg.env, tabletop=dataclasses.replace(
        cfg.env.tabletop, render_images=False, state_observation=True)))
    num_envs = min(episodes, cfg.eval.num_envs)
    env = make_env(cfg.env, num_envs, seed=cfg.eval.seed)
    try:
        done = list(rollout(env, agent_for(num_envs), max_steps=cfg.env.max_episode_steps, end_on=end_on_ground_truth,
                            episodes_per_env=episodes_per_env(episodes, num_envs), fixed_tasks=True))
    finally:
        env.close()
    return {"episodes": len(done), "success_rate": float(np.mean([e.success for e in done])),
            "mean_length": float(np.mean([e.length for e in done])),
            "max_length": cfg.env.max_episode_steps}


class SpatialSoftmaxCNN(nn.Module):
    """Two stride-2 convs, keypoints by spatial softmax, an MLP head."""

    outputs: int

    @nn.compact
    def __call__(self, rgb: jax.Array) -> jax.Array:
        x = rgb.astype(jnp.float32) / 127.5 - 1.0
        x = nn.gelu(nn.Conv(32, (3, 3), 2)(x))
        x = nn.gelu(nn.Conv(64, (3, 3), 2)(x))
        x = nn.Conv(32, (3, 3))(x)
        b, h, w, c = x.shape
        attention = jax.nn.softmax(x.reshape(b, h * w, c), axis=1)
        yy, xx = jnp.mgrid[:h, :w]
        coords = jnp.stack([yy.ravel() / h, xx.ravel() / w], -1)
        keypoints = jnp.einsum("bnc,nd->bcd", attention, coords).reshape(b, -1)
        return nn.Dense(self.outputs)(nn.gelu(nn.Dense(256)(keypoints)))


def localization_probe(reader: str, train: Arrays, val: Arrays, steps: int, eval_every: int,
                       batch: int, seed: int, sigma: float = 1.0, variant: str | None = None) -> dict[str, Any]:
    """Train one reader to find the effector; its validation error (cm) along the way."""
    cfg = default_config("tabletop")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=variant or cfg.model.variant))
    tok = cfg.tokenizer
    lo, hi, bins = np.asarray(tok.state_low), np.asarray(tok.state_high), tok.state_bins
    vocab = make_vocabulary(tok)
    to_bins = lambda xy: np.clip(np.floor((xy - lo) / (hi - lo) * bins), 0, bins - 1).astype(np.int32)  # noqa: E731
    centre = lambda k: lo + (np.asarray(k) + 0.5) / bins * (hi - lo)  # noqa: E731
    predict: Callable[[Any, np.ndarray], np.ndarray]
    gauss = reader.endswith("-gauss")

    def soft(k: jax.Array, n: int) -> jax.Array:
        """Target distribution over the n bins: one-hot, or a Gaussian of --sigma bins."""
        return ordinal_targets(k, 0, n, n, sigma / n if gauss else 0.0)

    if reader.startswith("vlm"):
        model = make_model(cfg.model, vocab)
        empty = vocab.text.encode([""] * batch) if vocab.text else None
        objective = jnp.zeros((batch,), jnp.int32)

        def inputs(rgb: np.ndarray) -> dict:
            return {IMAGE: np.repeat(rgb[:, None], 2, axis=1), TEXT: empty[:len(rgb)]}

        def loss(p: Any, rgb: jax.Array, xy: jax.Array) -> jax.Array:
            targets = vocab.state_offset + xy  # position tokens as answers (teacher-forced)
            logits = model.apply({"params": p}, inputs(rgb), objective[:len(rgb)], targets)
            logp = jax.nn.log_softmax(logits)[..., vocab.state_offset:vocab.state_offset + bins]
            return -jnp.sum(soft(xy, bins) * logp, -1).mean()

        apply = jax.jit(model.apply)

        def first_bins(p: Any, rgb: np.ndarray) -> np.ndarray:
            greedy = np.zeros((len(rgb), 2), np.int32)
            for k in range(2):  # greedy decoding, one coordinate after the other
                logits = apply({"params": p}, inputs(rgb), objective[:len(rgb)],
                                              jnp.asarray(vocab.state_offset + greedy))
                window = logits[:, k, vocab.state_offset:vocab.state_offset + bins]
                greedy[:, k] = np.asarray(jnp.argmax(window, -1))
            return greedy

        params = model.init(jax.random.PRNGKey(seed), inputs(train["rgb"][:batch]), objective,
                            jnp.zeros((batch, 2), jnp.int32))["params"]
        predict = lambda p, rgb: centre(first_bins(p, rgb))  # noqa: E731
        target = to_bins
    else:
        regression = reader == "cnn-regression"
        net = SpatialSoftmaxCNN(2 if regression else 2 * bins)
        params = net.init(jax.random.PRNGKey(seed), train["rgb"][:2])
        scale = lambda xy: (xy - lo) / (hi - lo) * 2 - 1  # noqa: E731

        def loss(p: Any, rgb: jax.Array, xy: jax.Array) -> jax.Array:
            out = net.apply(p, rgb)
            if regression:
                return jnp.mean((out - xy) ** 2)
            logp = jax.nn.log_softmax(out.reshape(-1, 2, bins))
            xent = -jnp.sum(soft(xy, bins) * logp, -1).mean()
            if reader != "cnn-tokens-mean":
                return xent
            centres = (jnp.arange(bins) + 0.5) / bins * 2 - 1  # the bins' centres, scaled to [-1, 1]
            mean = jnp.sum(jnp.exp(logp) * centres, -1)
            return xent + jnp.mean((mean - centres[xy]) ** 2)

        apply = jax.jit(net.apply)

        def predict(p: Any, rgb: np.ndarray) -> np.ndarray:
            out = np.asarray(apply(p, rgb))
            if regression:
                return lo + (out + 1) / 2 * (hi - lo)
            return centre(out.reshape(-1, 2, bins).argmax(-1))

        target = scale if regression else to_bins

    opt = optax.adamw(1e-3, weight_decay=1e-4)
    state = opt.init(params)

    @jax.jit
    def step(p: Any, st: Any, rgb: jax.Array, xy: jax.Array) -> tuple[Any, Any, jax.Array]:
        value, g = jax.value_and_grad(loss)(p, rgb, xy)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st, value

    rng = np.random.default_rng(seed)
    curve, t0 = [], time.time()
    for i in range(1, steps + 1):
        idx = rng.integers(0, len(train["rgb"]), batch)
        params, state, _ = step(params, state, train["rgb"][idx], target(train["xy"][idx]))
        if i % eval_every == 0:
            errors = [np.linalg.norm(predict(params, val["rgb"][k:k + batch]) - val["xy"][k:k + batch], axis=-1)
                      for k in range(0, len(val["rgb"]) - batch + 1, batch)]
            curve.append({"step": i, "error_cm": float(np.concatenate(errors).mean() * 100),
                          "seconds": round(time.time() - t0, 1)})
            print(reader, curve[-1], flush=True)
    guess = np.linalg.norm(val["xy"] - train["xy"].mean(0), axis=-1).mean() * 100
    return {"batch": batch, "curve": curve, "mean_position_error_cm": float(guess)}


def probe_key(reader: str, sigma: float, variant: str | None) -> str:
    """The results entry of a localization probe: the reader, its target width, its variant."""
    key = f"localization/{reader}" + (f"-sigma{sigma:g}" if reader.endswith("-gauss") else "")
    return key + (f"-{variant}" if variant and reader.startswith("vlm") else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--steps", type=int, default=600, help="localization probe steps")
    p.add_argument("--every", type=int, default=4, help="keep every n-th frame for localization")
    p.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS, help="localization readers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default=None, help="the vlm readers' model variant (default: the table's)")
    p.add_argument("--sigma", type=float, default=1.0, help="the -gauss readers' target width, in bins")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which probes to run")
    p.add_argument("--policy-steps", type=int, nargs="+", default=[1000, 5000, 20000],
                   help="decision MLP steps at which it acts in closed loop")
    p.add_argument("--episodes", type=int, default=100, help="closed-loop Block2Block episodes")
    p.add_argument("--noise-cm", type=float, nargs="*", default=[1.0, 2.0, 3.2],
                   help="also the policy from block positions seen with this Gaussian noise per axis "
                        "(3.2: 4 cm mean error, the grounded pretraining's)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    vocab = make_vocabulary(default_config("tabletop").tokenizer)

    def save() -> None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")

    episodes: dict[str, list[PoseEpisode]] = {}

    def decision_split(noise_cm: float) -> tuple[Arrays, Arrays]:
        if not episodes:  # read once, only when a decision part is still to run
            episodes.update(train=pose_episodes(args.train, "train"),
                            validation=pose_episodes(args.validation, "validation"))
        return (decision_data(episodes["train"], vocab, noise_cm, args.seed),
                decision_data(episodes["validation"], vocab, noise_cm, args.seed + 1))

    def policy_part(noise_cm: float) -> dict:
        def as_policy(logits: Logits) -> dict:
            measured = {mode: closed_loop(lambda n, g=mode == "greedy": PosePolicy(logits, vocab, g, args.seed, noise_cm),
                                          args.episodes, args.seed) for mode in ("sampled", "greedy")}
            print("closed loop", noise_cm, measured, flush=True)
            return measured

        return decision_probe(*decision_split(noise_cm), vocab, tuple(args.policy_steps), 16, args.seed, as_policy)

    if "decision" in args.parts and "decision" not in results:
        results["decision"] = decision_probe(*decision_split(0.0), vocab, (250, 500, 1000, 2000, 5000), 16, args.seed)
        save()
    if "policy" in args.parts and "decision_policy" not in results:
        demonstrator = closed_loop(lambda n: TabletopDemonstrator(
            default_config("tabletop").env, n, args.seed), args.episodes, args.seed)
        print("demonstrator", demonstrator, flush=True)
        results["decision_policy"] = {"demonstrator": demonstrator, **policy_part(0.0)}
        save()
    for noise_cm in args.noise_cm if "policy" in args.parts else ():
        key = f"decision_policy/noise{noise_cm:g}cm"
        if key not in results:
            results[key] = {"noise_cm_per_axis": noise_cm, **policy_part(noise_cm)}
            save()
    todo = [r for r in args.readers if probe_key(r, args.sigma, args.variant) not in results
            and "localization" in args.parts]
    if todo:
        train = frame_data(args.train, "train", args.every)
        val = frame_data(args.validation, "validation", args.every)
        for reader in todo:
            results[probe_key(reader, args.sigma, args.variant)] = {
                **localization_probe(reader, train, val, args.steps, 100, 48, args.seed, args.sigma, args.variant),
                **({"sigma_bins": args.sigma} if reader.endswith("-gauss") else {}),
                **({"variant": args.variant} if args.variant and reader.startswith("vlm") else {})}
            save()
    if "localization" in args.parts and "localization/vlm-48-frames" not in results:
        few = {k: v[:48] for k, v in frame_data(args.validation, "validation", args.every).items()}
        results["localization/vlm-48-frames"] = localization_probe("vlm", few, few, 300, 50, 48, args.seed)
        save()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
