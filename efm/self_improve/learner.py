"""The Self-Improvement learner: REINFORCE on replay samples (Eq. 4), AdamW, frozen modules."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from efm import math
from efm.config import SelfImproveConfig
from efm.models.efm import EFMFunctions
from efm.self_improve.actor import ACTION_TOKENS, INPUTS, RETURN, SAMPLE_ID
from efm.self_improve.replay import Replay


class LearnerState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


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


def draw_without_replacement(replay: Replay, num: int, held: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`num` of the `held` samples, uniformly without replacement, in an order fixed by `rng`.

    Everything is taken from the replay and put in sample-id order before the seeded draw, so
    the draw does not depend on the order in which the server hands samples out.
    """
    data = replay.sample(held)
    pick = np.argsort(data.pop(SAMPLE_ID), kind="stable")[rng.permutation(held)[:num]]
    return {k: v[pick] for k, v in data.items()}


class Learner:
    def __init__(self, fns: EFMFunctions, params: Any, cfg: SelfImproveConfig):
        self._cfg = cfg
        self._optimizer = make_optimizer(cfg, params)
        self.state = LearnerState(params, self._optimizer.init(params), jnp.zeros((), jnp.int32))

        def loss_fn(p: Any, batch: dict) -> tuple[jax.Array, dict]:
            inputs = {k.removeprefix(INPUTS): v for k, v in batch.items() if k.startswith(INPUTS)}
            log_probs = fns.action_log_prob(p, inputs, batch[ACTION_TOKENS])
            loss = math.reinforce_loss(log_probs, batch[RETURN], cfg.loss_scale)
            return loss, {"loss": loss, "mean_return": jnp.mean(batch[RETURN]),
                          "mean_log_prob": jnp.mean(log_probs)}

        @jax.jit
        def sgd_step(state: LearnerState, batch: dict, learning_rate: jax.Array) -> tuple[LearnerState, dict]:
            grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
            updates, opt_state = self._optimizer.update(grads, state.opt_state, state.params)
            updates = jax.tree_util.tree_map(lambda u: learning_rate * u, updates)
            params = optax.apply_updates(state.params, updates)
            return LearnerState(params, opt_state, state.step + 1), metrics

        self._sgd_step = sgd_step

    def step(self, batch: dict[str, np.ndarray], learning_rate: float | None = None) -> dict[str, float]:
        lr = self._cfg.learning_rate if learning_rate is None else learning_rate
        self.state, metrics = self._sgd_step(self.state, batch, jnp.float32(lr))
        out = {k: float(v) for k, v in metrics.items()}
        if not np.isfinite(out["loss"]):
            raise FloatingPointError(f"non-finite REINFORCE loss at learner step {int(self.state.step)}")
        return out

    def get_variables(self) -> Any:
        return self.state.params

    def run_round(self, replay: Replay, learning_rate: float | None = None) -> dict[str, float]:
        """N updates on N*B samples drawn without replacement, then the replay is cleared."""
        cfg = self._cfg
        held = replay.size()
        num_updates = min(cfg.updates_per_round, held // cfg.batch_size)
        data = draw_without_replacement(replay, num_updates * cfg.batch_size, held,
                                        np.random.default_rng([cfg.seed, int(self.state.step)])) if num_updates else {}
        replay.clear()  # on-policy: whatever was not drawn is discarded
        metrics = []
        for i in range(num_updates):
            batch = {k: v[i * cfg.batch_size:(i + 1) * cfg.batch_size] for k, v in data.items()}
            metrics.append(self.step(batch, learning_rate))
        lr = cfg.learning_rate if learning_rate is None else learning_rate
        return {"updates": float(num_updates), "learning_rate": lr, **{k: float(np.mean([m[k] for m in metrics])) for k in
                                                  (metrics[0] if metrics else {})}}
