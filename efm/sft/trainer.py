"""Stage 1: supervised fine-tuning on behavioural cloning + steps-to-go (Section 2.1).

One model; each batch is split uniformly over the objectives (Appendix A.3) and streamed from
the RLDS directories (`efm.data.stage1`); AdamW; the step runs on a device mesh (data-parallel,
FSDP by config, `efm.sharding`); Orbax checkpoints (sharded) at every evaluation; per-objective
validation losses recorded for checkpoint selection, and early stopping on them (`sft.patience`).
A restarted run resumes from its latest checkpoint and, because the batch stream is fixed by the
seed and skips the batches already trained on, ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from efm import checkpoints, sharding
from efm.config import RunConfig, SftConfig
from efm.data.stage1 import Batch, Stage1Data
from efm.models.efm import (
    GROUND_MASK,
    GROUND_RC,
    OBJECTIVE_ID,
    EFMFunctions,
    grounding_mean,
    grounding_sums,
    make_functions,
    objective_inputs,
    reads_text,
)
from efm.models.prefix_lm import TEXT_INPUT, split_inputs, trim_text
from efm.models.tokenizers import make_vocabulary
from efm.models.weights import load_initial
from efm.progress import progress_bar
from efm.sft.history import checkpointed, keep_steps, stalled, watched_losses
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


def target_length(fns: EFMFunctions, objective: str) -> int:
    """Output tokens an objective has (batches pad every objective to the longest)."""
    vocab = fns.vocab
    return {"bc": vocab.action.num_tokens, "steps_to_go": 1,
            "instruction": vocab.text.length if vocab.text is not None else 0,
            "locate": vocab.locate_length}[objective]


def _per_sample_nll(fns: EFMFunctions, params: Any, batch: dict, objective: str,
                    sigma: float = 0.0) -> tuple[jax.Array, jax.Array | None]:
    """Negative log-likelihood per sample of a batch of one objective; the auxiliary
    instruction's is per token, so a 40-byte instruction weighs like one output rather than
    forty. sigma > 0: the cross-entropy of Gaussian-smoothed ordinal targets (training). [B]
    Also, for a grounding variant, where the pass found each text token ([B, L, 2], else None)."""
    inputs, rest = split_inputs(batch)
    inputs = objective_inputs(inputs, objective)
    length = target_length(fns, objective)
    targets, mask = rest["targets"][:, :length], rest["target_mask"][:, :length]
    ll, grounded = fns.log_likelihood_and_ground(params, inputs, rest["objective"], targets, mask, sigma)
    per_token = rest["objective"] == OBJECTIVE_ID["instruction"]
    return -ll / jnp.where(per_token, jnp.maximum(jnp.sum(mask, axis=-1), 1.0), 1.0), grounded


def objective_nll(fns: EFMFunctions, params: Any, batch: dict, objectives: tuple[str, ...], sigma: float = 0.0,
                  grounding: bool = False) -> tuple[dict[str, jax.Array], jax.Array | None]:
    """Per-sample NLL of each objective's share of a training batch (B / K samples each), and
    with `grounding` the grounding loss over the whole batch (else None).

    The batch is grouped by objective (a stable sort: its layout across hosts does not matter)
    and each group decodes only its own outputs: 4 action tokens, not the 64 an instruction has.
    A group whose objective reads the instruction has its grounding from that same pass. A group
    that hides it (the auxiliary objective) has nothing to ground: its samples carry no names
    (`efm.data.stage1` gives them no grounding targets), so no pass is spent on it.
    """
    names = sorted(objectives, key=OBJECTIVE_ID.__getitem__)
    per = batch["objective"].shape[0] // len(names)
    order = jnp.argsort(batch["objective"], stable=True)
    nll, total, count = {}, jnp.zeros(()), jnp.zeros(())
    for j, name in enumerate(names):
        group = {k: v[order[j * per:(j + 1) * per]] for k, v in batch.items()}
        nll[name], grounded = _per_sample_nll(fns, params, group, name, sigma)
        if grounding and reads_text(name):
            t, c = grounding_sums(grounded, group[GROUND_RC], group[GROUND_MASK])
            total, count = total + t, count + c
    return nll, (grounding_mean(total, count) if grounding else None)


def make_train_step(fns: EFMFunctions, optimizer: optax.GradientTransformation, cfg: SftConfig,
                    mesh: jax.sharding.Mesh, state_shardings: Any) -> Callable:
    """One jitted update on a batch split over cfg.objectives; the training loss smooths the
    ordinal targets by cfg.ordinal_sigma (the validation losses never do)."""
    def loss_fn(params: Any, batch: dict) -> tuple[jax.Array, dict]:
        grounding = cfg.grounding_weight > 0  # where each name token's query fires, supervised
        nll, ground = objective_nll(fns, params, batch, cfg.objectives, cfg.ordinal_sigma, grounding)
        metrics = {f"train/{name}_loss": jnp.mean(v) for name, v in nll.items()}
        loss = jnp.mean(jnp.concatenate(list(nll.values())))
        if ground is not None:
            metrics["train/grounding_loss"] = ground
            loss = loss + cfg.grounding_weight * ground
        return loss, metrics

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), {"train/loss": loss, **metrics}

    return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def device_batch(mesh: jax.sharding.Mesh, batch: Batch) -> dict[str, jax.Array]:
    """A host batch onto the mesh, without its text padding on one host (`trim_text`: the same
    losses and gradients). Several hosts keep it: each would cut its own slice to its own
    length, and a global batch has one shape."""
    if TEXT_INPUT in batch and jax.process_count() == 1:
        batch = trim_text(batch, TEXT_INPUT, aligned=(GROUND_RC, GROUND_MASK))
    return sharding.put_batch(mesh, batch)


def _pad(batch: Batch, size: int) -> Batch:
    """Pads a short batch to `size` rows with target_mask 0 (they add nothing to a sum)."""
    n = len(batch["objective"])
    if n == size:
        return batch
    out = {k: np.concatenate([v, np.repeat(v[:1], size - n, axis=0)]) for k, v in batch.items()}
    out["target_mask"][n:] = 0.0
    if GROUND_MASK in out:
        out[GROUND_MASK][n:] = 0.0
    return out


class Samples(NamedTuple):
    """What the trainer reads: `training(seed=, start_step=, shard=)` endless batches (a
    generator, closed when training ends), `validation(objective)` each held-out sample of an
    objective once. Stage 1 binds Stage1Data to its RLDS directories; pretraining renders its
    own (efm.sft.pretrain)."""

    training: Callable[..., Generator[Batch, None, None]]
    validation: Callable[[str], Iterator[Batch]]


def make_validation_losses(fns: EFMFunctions, samples: Samples, cfg: SftConfig, mesh: jax.sharding.Mesh,
                           ) -> Callable[[Any], dict[str, float]]:
    """Mean negative log-likelihood per objective over a whole validation split."""
    def summed(objective: str) -> Callable:
        return jax.jit(lambda p, b: jnp.sum(_per_sample_nll(fns, p, b, objective)[0]),
                       out_shardings=sharding.replicated(mesh))

    nll_fns = {name: summed(name) for name in cfg.objectives}
    size = -(-cfg.validation_batch_size // mesh.size) * mesh.size
    # Every host reads the whole split; each puts its own slice of a batch on the mesh, so the
    # global batch holds every sample once (on one host: the whole batch).
    local = size // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

    def validation_losses(params: Any) -> dict[str, float]:
        out = {}
        for name in cfg.objectives:
            total, count = 0.0, 0
            for batch in samples.validation(name):
                count += len(batch["objective"])
                part = {k: v[rows] for k, v in _pad(batch, size).items()}
                total += float(nll_fns[name](params, device_batch(mesh, part)))
            out[f"val/{name}_loss"] = total / max(count, 1)
        return out

    return validation_losses


def init_state(cfg: RunConfig, fns: EFMFunctions, optimizer: optax.GradientTransformation, example: Batch,
               mesh: jax.sharding.Mesh) -> tuple[TrainState, Any]:
    """(initial state placed on the mesh, its shardings): scratch or `model.init` weights."""
    inputs = {k: jnp.asarray(v[:1]) for k, v in split_inputs(example)[0].items()}
    params = load_initial(cfg.model, jax.device_get(fns.init(jax.random.PRNGKey(cfg.sft.seed), inputs)))

    def make(p: Any) -> TrainState:
        return TrainState(p, optimizer.init(p), jnp.zeros((), jnp.int32))

    shardings = sharding.state_shardings(mesh, jax.eval_shape(make, params))
    return jax.jit(make, out_shardings=shardings)(params), shardings


@dataclass(frozen=True)
class SftResult:
    workdir: Path
    history: list[dict[str, float]]  # one row per evaluation: step + val/<objective>_loss + train losses
    final_step: int


def run_sft(cfg: RunConfig, train_dir: str | os.PathLike[str], validation_dir: str | os.PathLike[str],
            workdir: str | Path, log: Logger | None = None, progress: bool = True,
            on_checkpoint: Callable[[int], None] | None = None) -> SftResult:
    """Stage 1 on RLDS directories: trains from scratch (or `model.init`) or resumes from
    `workdir`'s latest checkpoint.

    `on_checkpoint(step)` runs after each checkpoint is complete (history included), e.g. to
    copy the workdir to durable storage that a restarted task resumes from.
    """
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    data = Stage1Data(cfg, fns.vocab)
    data.check(train_dir, shard=(jax.process_count(), jax.process_index()))  # what this host trains on
    data.check(validation_dir)
    samples = Samples(partial(data.training, train_dir), partial(data.validation, validation_dir))
    return train(cfg, fns, samples, workdir, log=log, progress=progress, on_checkpoint=on_checkpoint, desc="sft")


def train(cfg: RunConfig, fns: EFMFunctions, samples: Samples, workdir: str | Path, log: Logger | None = None,
          progress: bool = True, on_checkpoint: Callable[[int], None] | None = None, desc: str = "train",
          ) -> SftResult:
    """The training loop of Stage 1 and of pretraining, as `cfg.sft` sets it; resumes from
    `workdir`'s latest checkpoint and ends where an uninterrupted run would."""
    sharding.initialize_distributed()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sft = cfg.sft
    mesh = sharding.make_mesh(sft.fsdp)
    sharding.check_batch(mesh, sft.batch_size)
    optimizer = make_optimizer(sft)
    example = next(samples.validation(sft.objectives[0]))
    state, shardings = init_state(cfg, fns, optimizer, example, mesh)

    manager = checkpoints.training_manager(workdir / "checkpoints")
    history: list[dict[str, float]] = []
    if manager.latest_step() is not None:
        state = TrainState(**checkpoints.restore_step(manager, manager.latest_step(), state._asdict()))
        history = [h for h in _read_history(workdir) if h["step"] <= int(state.step)]

    train_step = make_train_step(fns, optimizer, sft, mesh, shardings)
    validation_losses = make_validation_losses(fns, samples, sft, mesh)
    rules = (cfg.select.policy_rule, cfg.select.reward_rule) if "bc" in sft.objectives else ()
    watched = watched_losses(rules)
    start = int(state.step)
    stopped = stalled(history, watched, sft.patience)  # a resumed run that had stopped stays stopped
    bar = progress_bar(total=sft.num_steps, initial=start, desc=desc, enabled=progress)
    running: dict[str, list[Any]] = {}
    # Closed however the loop ends: a pretraining renderer thread stops before its env closes.
    with contextlib.closing(samples.training(seed=sft.seed, start_step=start,
                                             shard=(jax.process_count(), jax.process_index()))) as batches:
        for step in range(start, start if stopped else sft.num_steps):
            state, metrics = train_step(state, device_batch(mesh, next(batches)))
            for k, v in metrics.items():
                running.setdefault(k, []).append(v)
            bar.update(1)
            done = step + 1
            if done % sft.eval_every == 0 or done == sft.num_steps:
                row = {"step": float(done), **{k: float(np.mean(jax.device_get(v))) for k, v in running.items()},
                       **validation_losses(state.params)}
                running = {}
                if not all(np.isfinite(v) for v in row.values()):
                    raise FloatingPointError(f"non-finite loss at step {done}: {row}")
                history.append(row)
                stopped = stalled(history, watched, sft.patience)
                bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in row.items() if k.startswith("val/")})
                if log is not None:
                    log({k: v for k, v in row.items() if k != "step"}, done)
                if done % sft.checkpoint_every == 0 or done == sft.num_steps or stopped:
                    # History first: a resume drops rows past its checkpoint, but could not recompute
                    # a saved checkpoint's missing row.
                    if jax.process_index() == 0:
                        _write_history(workdir, history)
                    checkpoints.save_step(manager, done, state._asdict())
                    saved = set(manager.all_steps())
                    for s in saved - keep_steps(checkpointed(history, saved), sft.max_checkpoints, rules):
                        manager.delete(s)
                    if on_checkpoint is not None:
                        on_checkpoint(done)
                if stopped:
                    bar.write(f"{desc}: stopped at step {done}: no new best {', '.join(watched)} "
                              f"in {sft.patience} evaluations (sft.patience)")
                    break
    bar.close()
    manager.close()
    return SftResult(workdir, history, int(state.step))


def checkpoint_steps(workdir: str | Path) -> set[int]:
    manager = checkpoints.training_manager(Path(workdir) / "checkpoints")
    steps = set(manager.all_steps())
    manager.close()
    return steps


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
