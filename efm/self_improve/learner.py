"""The Self-Improvement learner: REINFORCE on replay samples (Eq. 4), AdamW, frozen modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from efm import math
from efm.config import SelfImproveConfig
from efm.models.efm import EFMFunctions
from efm.models.prefix_lm import TEXT_INPUT, split_inputs, trim_text
from efm.self_improve.actor import ACTION_TOKENS, POLICY_VERSION, RETURN, SAMPLE_ID
from efm.self_improve.monitor import EPISODE_KEY_SHIFT
from efm.self_improve.replay import Replay


class LearnerState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def module_names(params: Any, model: Any = None, probe: tuple[str, ...] = ()) -> set[str]:
    """Every module name on a parameter path (leaf names such as 'kernel' excluded), plus the
    top-level submodules a Flax `model` declares without parameters for these inputs (the
    state-only pointmass policy declares a vision encoder that no camera input reaches)."""
    names = {part for path in traverse_util.flatten_dict(params) for part in path[:-1]}
    if isinstance(model, nn.Module):
        bound = model.bind({"params": params})
        for name in probe:  # attribute access runs the module's setup, declaring its submodules
            getattr(bound, name, None)
        names |= {k for k, v in vars(bound).items() if isinstance(v, nn.Module)}
    return names


def check_freeze(params: Any, frozen: tuple[str, ...], model: Any = None) -> None:
    """Raises ValueError for a name in `self_improve.freeze` that names no module: it would
    freeze nothing, silently."""
    if not frozen:
        return
    available = module_names(params, model, probe=frozen)
    unknown = [name for name in frozen if name not in available]
    if unknown:
        raise ValueError(f"self_improve.freeze: no module named {', '.join(map(repr, unknown))} in the policy; "
                         f"available module names: {sorted(available)}")


def freeze_labels(params: Any, frozen: tuple[str, ...]) -> Any:
    """'frozen' for parameters under a module named in `frozen` (e.g. the vision encoder)."""
    flat = traverse_util.flatten_dict(params)
    labels = {k: "frozen" if any(part in frozen for part in k) else "trained" for k in flat}
    return traverse_util.unflatten_dict(labels)


def make_optimizer(cfg: SelfImproveConfig, params: Any) -> optax.GradientTransformation:
    """AdamW at unit learning rate: `sgd_step` scales the update by the round's learning rate."""
    return optax.multi_transform(
        {"trained": optax.adamw(1.0, weight_decay=cfg.weight_decay), "frozen": optax.set_to_zero()},
        freeze_labels(params, cfg.freeze))


def reinforce_objective(fns: EFMFunctions, cfg: SelfImproveConfig) -> Callable[[Any, dict], tuple[jax.Array, dict]]:
    """(params, replay batch) -> (Eq. 4's loss, metrics)."""

    def loss_fn(params: Any, batch: dict) -> tuple[jax.Array, dict]:
        inputs, _ = split_inputs(batch)
        log_probs = fns.action_log_prob(params, inputs, batch[ACTION_TOKENS])
        loss = math.reinforce_loss(log_probs, batch[RETURN], cfg.loss_scale)
        return loss, {"loss": loss, "mean_return": jnp.mean(batch[RETURN]), "mean_log_prob": jnp.mean(log_probs)}

    return loss_fn


def apply_gradients(optimizer: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any,
                    learning_rate: jax.Array) -> tuple[Any, Any]:
    """One optimizer step, scaled by the round's learning rate (`make_optimizer` is at unit rate)."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, jax.tree_util.tree_map(lambda u: learning_rate * u, updates)), opt_state


def draw_without_replacement(episodes: list[dict[str, np.ndarray]], num: int, rng: np.random.Generator,
                             ) -> dict[str, np.ndarray]:
    """`num` of all the episodes' steps, uniformly without replacement, in an order fixed by `rng`.

    The steps are put in sample-id order before the seeded draw, so the draw does not depend
    on the order in which the server hands episodes out.
    """
    data = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
    pick = np.argsort(data[SAMPLE_ID], kind="stable")[rng.permutation(len(data[RETURN]))[:num]]
    return {k: v[pick] for k, v in data.items()}


def check_on_policy(episodes: list[dict[str, np.ndarray]], version: int) -> int:
    """Every sample must come from the policy the learner is about to update (Algorithm 1).
    Returns the version the samples carry (-1 for none)."""
    versions = sorted({int(v) for e in episodes for v in np.unique(e[POLICY_VERSION])})
    if versions and versions != [version]:
        raise ValueError(f"off-policy samples: the replay holds policy versions {versions}, "
                         f"the learner is at version {version}")
    return versions[0] if versions else -1


class Learner:
    def __init__(self, fns: EFMFunctions, params: Any, cfg: SelfImproveConfig):
        self._cfg = cfg
        check_freeze(params, cfg.freeze, fns.model)
        self._optimizer = make_optimizer(cfg, params)
        self.state = LearnerState(params, self._optimizer.init(params), jnp.zeros((), jnp.int32))
        self.version = 0  # policy version of `get_variables()`: rounds learned so far
        # The last round's episodes by key (sample_id >> 12): every one taken from the replay,
        # and those at least one of whose steps was drawn; the others were discarded.
        self.last_episodes: dict[str, list[int]] = {"taken": [], "learned": []}

        loss_fn = reinforce_objective(fns, cfg)

        @jax.jit
        def sgd_step(state: LearnerState, batch: dict, learning_rate: jax.Array) -> tuple[LearnerState, dict]:
            grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
            params, opt_state = apply_gradients(self._optimizer, state.params, state.opt_state, grads, learning_rate)
            return LearnerState(params, opt_state, state.step + 1), metrics

        self._sgd_step = sgd_step

    def step(self, batch: dict[str, np.ndarray], learning_rate: float | None = None) -> dict[str, float]:
        lr = self._cfg.learning_rate if learning_rate is None else learning_rate
        if TEXT_INPUT in batch:  # the same gradient without the work on text padding
            batch = trim_text(batch, TEXT_INPUT)
        self.state, metrics = self._sgd_step(self.state, batch, jnp.float32(lr))
        out = {k: float(v) for k, v in metrics.items()}
        if not np.isfinite(out["loss"]):
            raise FloatingPointError(f"non-finite REINFORCE loss at learner step {int(self.state.step)}")
        return out

    def get_variables(self) -> Any:
        return self.state.params

    def get_state(self) -> dict[str, Any]:
        """What a restarted coordinator restores: weights, optimizer state, step, version."""
        return {"state": self.state, "version": self.version}

    def set_state(self, saved: dict[str, Any]) -> None:
        state = saved["state"]
        self.state = LearnerState(state.params, state.opt_state, jnp.asarray(state.step, jnp.int32))
        self.version = int(saved["version"])

    def run_round(self, replay: Replay, learning_rate: float | None = None) -> dict[str, float]:
        """N updates on N*B samples drawn without replacement from every episode the replay
        holds; the rest is discarded and the replay cleared. Raises ValueError on samples of
        another policy version."""
        cfg = self._cfg
        held_episodes = replay.num_episodes()
        episodes = replay.take_episodes(held_episodes) if held_episodes else []
        replay.clear()  # on-policy: whatever was not drawn is discarded
        sample_version = check_on_policy(episodes, self.version)
        held = int(sum(len(e[RETURN]) for e in episodes))
        num_updates = min(cfg.updates_per_round, held // cfg.batch_size)
        data = draw_without_replacement(episodes, num_updates * cfg.batch_size,
                                        np.random.default_rng([cfg.seed, int(self.state.step)])) if num_updates else {}
        data.pop(POLICY_VERSION, None)
        self.last_episodes = {
            "taken": [int(e[SAMPLE_ID][0] >> EPISODE_KEY_SHIFT) for e in episodes],
            "learned": sorted({int(k) for k in np.unique(data.pop(SAMPLE_ID) >> EPISODE_KEY_SHIFT)}) if data else []}
        metrics = []
        for i in range(num_updates):
            batch = {k: v[i * cfg.batch_size:(i + 1) * cfg.batch_size] for k, v in data.items()}
            metrics.append(self.step(batch, learning_rate))
        self.version += 1
        lr = cfg.learning_rate if learning_rate is None else learning_rate
        return {"updates": float(num_updates), "learning_rate": lr, "samples_held": float(held),
                "policy_version": float(sample_version),  # read off the samples: the weights that acted
                "samples_used": float(num_updates * cfg.batch_size),
                **{k: float(np.mean([m[k] for m in metrics])) for k in (metrics[0] if metrics else {})}}
