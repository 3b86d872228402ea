"""Stage 1: supervised fine-tuning on behavioural cloning + steps-to-go (Section 2.1).

One model; each batch is split uniformly over the objectives (Appendix A.3); AdamW; Orbax
checkpoints at every evaluation; per-objective validation losses recorded for checkpoint
selection. A restarted run resumes from its latest checkpoint and, because each step's batch
is drawn from an RNG keyed by (seed, step), ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from efm import checkpoints
from efm.config import RunConfig, SftConfig
from efm.envs.base import Episode
from efm.models.efm import OBJECTIVE_ID, EFMFunctions, make_functions
from efm.models.tokenizers import make_vocabulary
from efm.progress import progress_bar
from efm.samples import (
    ObjectiveSamples,
    behavioral_cloning_samples,
    evaluation_batches,
    split_inputs,
    steps_to_go_samples,
    training_batch,
)
from efm.types import Logger

HISTORY = "history.json"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def make_optimizer(cfg: SftConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.num_steps, cfg.warmup_steps + 1),
        end_value=0.1 * cfg.learning_rate)
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)


def make_samples(episodes: Sequence[Episode], fns: EFMFunctions) -> dict[str, ObjectiveSamples]:
    return {"bc": behavioral_cloning_samples(episodes, fns.vocab),
            "steps_to_go": steps_to_go_samples(episodes, fns.vocab)}


def _per_sample_nll(fns: EFMFunctions, params: Any, batch: dict) -> jax.Array:
    inputs, rest = split_inputs(batch)
    return -fns.log_likelihood(params, inputs, rest["objective"], rest["targets"], rest["target_mask"])


def make_train_step(fns: EFMFunctions, optimizer: optax.GradientTransformation) -> Callable:
    def loss_fn(params: Any, batch: dict) -> tuple[jax.Array, dict]:
        nll = _per_sample_nll(fns, params, batch)
        metrics = {f"train/{name}_loss": jnp.sum(nll * (batch["objective"] == i)) / jnp.maximum(
            jnp.sum(batch["objective"] == i), 1) for name, i in OBJECTIVE_ID.items()}
        return jnp.mean(nll), metrics

    @jax.jit
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), {"train/loss": loss, **metrics}

    return train_step


def make_validation_losses(fns: EFMFunctions, batch_size: int = 2048) -> Callable[[Any, dict], dict[str, float]]:
    """Mean negative log-likelihood per objective over a whole validation split."""
    nll_fn = jax.jit(lambda p, b: jnp.sum(_per_sample_nll(fns, p, b)))

    def validation_losses(params: Any, val: dict[str, ObjectiveSamples]) -> dict[str, float]:
        out = {}
        for name, s in val.items():
            total = sum(float(nll_fn(params, batch)) for batch in evaluation_batches(
                s, name, batch_size, OBJECTIVE_ID, fns.vocab.max_target_length))
            out[f"val/{name}_loss"] = total / len(s)
        return out

    return validation_losses


@dataclass(frozen=True)
class SftResult:
    workdir: Path
    history: list[dict[str, float]]  # one row per evaluation: step + val/<objective>_loss + train losses
    final_step: int


def _keep_steps(history: list[dict[str, float]], budget: int) -> set[int]:
    """Checkpoints worth keeping: the latest and the best per objective, then the most recent."""
    steps = [int(h["step"]) for h in history]
    keep = {steps[-1]}
    for key in [k for k in history[-1] if k.startswith("val/")]:
        keep.add(int(min(history, key=lambda h, k=key: h[k])["step"]))
    for s in reversed(steps):
        if len(keep) >= budget:
            break
        keep.add(s)
    return keep


def run_sft(cfg: RunConfig, train: Sequence[Episode], validation: Sequence[Episode], workdir: str | Path,
            log: Logger | None = None, progress: bool = True,
            on_checkpoint: Callable[[int], None] | None = None) -> SftResult:
    """Trains from scratch or resumes from `workdir`'s latest checkpoint.

    `on_checkpoint(step)` runs after each checkpoint is complete (history included), e.g. to
    copy the workdir to durable storage that a restarted task resumes from.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sft = cfg.sft
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    samples, val = make_samples(train, fns), make_samples(validation, fns)
    optimizer = make_optimizer(sft)
    example = training_batch(samples, 2, OBJECTIVE_ID, fns.vocab.max_target_length, np.random.default_rng(0))
    params = fns.init(jax.random.PRNGKey(sft.seed), split_inputs(example)[0])
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    manager = checkpoints.training_manager(workdir / "checkpoints")
    history: list[dict[str, float]] = []
    if manager.latest_step() is not None:
        state = TrainState(**checkpoints.restore_step(manager, manager.latest_step(), state._asdict()))
        history = [h for h in _read_history(workdir) if h["step"] <= int(state.step)]

    train_step = make_train_step(fns, optimizer)
    validation_losses = make_validation_losses(fns)
    start = int(state.step)
    bar = progress_bar(total=sft.num_steps, initial=start, desc="sft", enabled=progress)
    running: dict[str, list[float]] = {}
    for step in range(start, sft.num_steps):
        rng = np.random.default_rng([sft.seed, step])
        batch = training_batch(samples, sft.batch_size, OBJECTIVE_ID, fns.vocab.max_target_length, rng)
        state, metrics = train_step(state, batch)
        for k, v in metrics.items():
            running.setdefault(k, []).append(v)
        bar.update(1)
        done = step + 1
        if done % sft.eval_every == 0 or done == sft.num_steps:
            row = {"step": float(done), **{k: float(np.mean(jax.device_get(v))) for k, v in running.items()},
                   **validation_losses(state.params, val)}
            running = {}
            if not all(np.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"non-finite loss at step {done}: {row}")
            history.append(row)
            bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in row.items() if k.startswith("val/")})
            if log is not None:
                log({k: v for k, v in row.items() if k != "step"}, done)
            if done % sft.checkpoint_every == 0 or done == sft.num_steps:
                checkpoints.save_step(manager, done, state._asdict())
                _write_history(workdir, history)
                for s in set(manager.all_steps()) - _keep_steps(history, sft.max_checkpoints):
                    manager.delete(s)
                if on_checkpoint is not None:
                    on_checkpoint(done)
    bar.close()
    manager.close()
    return SftResult(workdir, history, int(state.step))


def _write_history(workdir: Path, history: list[dict[str, float]]) -> None:
    tmp = workdir / f"{HISTORY}.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    tmp.replace(workdir / HISTORY)


def _read_history(workdir: Path) -> list[dict[str, float]]:
    path = workdir / HISTORY
    return json.loads(path.read_text()) if path.exists() else []


def load_history(workdir: str | Path) -> list[dict[str, float]]:
    history = _read_history(Path(workdir))
    if not history:
        raise FileNotFoundError(f"no SFT history at {Path(workdir) / HISTORY}: run the sft stage first")
    return history


def restore_params(workdir: str | Path, step: int) -> Any:
    manager = checkpoints.training_manager(Path(workdir) / "checkpoints")
    if step not in manager.all_steps():
        raise FileNotFoundError(f"SFT checkpoint for step {step} not found in {workdir}/checkpoints "
                                f"(have {sorted(manager.all_steps())})")
    state = checkpoints.restore_step(manager, step)
    manager.close()
    return state["params"]
