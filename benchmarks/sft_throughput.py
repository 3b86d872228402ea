"""SFT throughput per model variant (examples/s, data pipeline included) and policy latency.

Writes a tabletop dataset once (reused on rerun), then for each variant times `--steps` SFT
steps after `--warmup` (compilation) on this machine's devices, streaming batches from RLDS as
SFT does; and the policy's latency per control step (one environment stepping through an
episode: sample 4 action tokens with the KV cache + d(o, g) from the reward model) as p50/p99
against 10 Hz control's 100 ms, with the frame cache as actors act and with every frame through
the image tower.
On an accelerator it also reports model FLOPs utilisation (MFU) from XLA's cost analysis.

  .venv/bin/python benchmarks/sft_throughput.py --variants vl-tiny vl-cpu --out benchmarks/results/sft_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from without_frame_cache import every_frame

from efm import sharding
from efm.config import ModelConfig, default_config
from efm.data import subsample
from efm.data.stage1 import Stage1Data
from efm.models.efm import make_functions
from efm.models.tokenizers import make_vocabulary
from efm.sft.trainer import device_batch, init_state, make_optimizer, make_train_step
from efm.stages import dataset_stage

PEAK_FLOPS = {"cpu": None, "gpu": {"H200": 989e12, "H100": 989e12, "A100": 312e12}, "tpu": {"v5 lite": 197e12}}


def peak_flops() -> float | None:
    """Dense bf16 peak of device 0 where known (MFU needs it)."""
    d = jax.devices()[0]
    table = PEAK_FLOPS.get(d.platform) or {}
    return next((v for k, v in table.items() if k.lower() in d.device_kind.lower()), None)


def program_flops(compiled: jax.stages.Compiled) -> float | None:
    """A compiled step's FLOPs over every device: XLA's cost analysis counts one device's
    program, a 1/n share of a data-parallel or sharded step (None where it reports none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) * jax.device_count() or None


def ensure_dataset(root: Path, episodes: int) -> Path:
    cfg = default_config("tabletop")
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, num_episodes=episodes, validation_episodes=10,
                                               fractions=(1.0,)))
    if not (root / "sub" / subsample.MANIFEST).exists():
        if not (root / "dataset" / "dataset_info.json").exists():
            dataset_stage(cfg, root / "dataset", overwrite=True, progress=True)
        subsample.subsample_dataset(root / "dataset", root / "sub", (1.0,), 10, seed=0, overwrite=True)
    return root / "sub" / "fraction_1"


def measure_variant(variant: str, train: Path, steps: int, warmup: int, batch_size: int, dtype: str) -> dict:
    cfg = default_config("tabletop")
    model = ModelConfig(variant=variant, compute_dtype=dtype)
    # the table's Stage-1 grounding for a variant that has it (it is part of the step's cost)
    cfg = cfg.replace(model=model, sft=dataclasses.replace(cfg.sft, batch_size=batch_size, num_steps=steps + warmup,
                                                           grounding_weight=cfg.sft.grounding_weight if model.grounded else 0.0))
    mesh = sharding.make_mesh(cfg.sft.fsdp)
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    data = Stage1Data(cfg, fns.vocab)
    batches = data.training(train, seed=0)
    optimizer = make_optimizer(cfg.sft)
    first = next(batches)
    state, shardings = init_state(cfg, fns, optimizer, first, mesh)
    step = make_train_step(fns, optimizer, cfg.sft, mesh, shardings)
    try:
        flops = program_flops(step.lower(state, device_batch(mesh, first)).compile())
    except Exception:  # cost analysis is best effort (not every backend reports it)
        flops = None
    for _ in range(warmup):
        state, m = step(state, device_batch(mesh, next(batches)))
    jax.block_until_ready(m)
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        state, m = step(state, device_batch(mesh, next(batches)))
    jax.block_until_ready(m)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    row = {"variant": variant, "params": int(params), "batch_size": batch_size, "compute_dtype": dtype,
           "steps": steps, "seconds": seconds, "examples_per_s": steps * batch_size / seconds,
           # the process's CPU seconds (data threads included) vary less with other jobs than wall time
           "cpu_seconds": cpu_seconds, "examples_per_cpu_s": steps * batch_size / cpu_seconds,
           "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind}
    if flops is not None:
        row["gflop_per_example"] = flops / batch_size / 1e9
        peak = peak_flops()
        if peak:
            row["mfu"] = flops * steps / seconds / (peak * jax.device_count())
    episode = next(data.validation(train, "bc"))
    row |= policy_latency(fns, state.params, episode)
    with every_frame():  # as before the frame cache
        row |= {k.replace("policy_latency", "policy_latency_every_frame"): v
                for k, v in policy_latency(fns, state.params, episode).items()}
    return row


def policy_latency(fns, params, batch: dict, n: int = 200) -> dict:
    """One control step for one environment, as an actor makes it: action tokens (KV cache) +
    d(o, g) from the steps-to-go service, over the batch's samples in order (an episode's
    consecutive steps: each step's previous frame is the last step's current one, whose image
    tower work both keep, `models.frame_cache`)."""
    from efm.self_improve.actor import LocalPolicy
    from efm.self_improve.service import StepsToGoService

    policy, service = LocalPolicy(fns, params), StepsToGoService(fns, params)
    rows = {k.removeprefix("inputs/"): np.asarray(v) for k, v in batch.items() if k.startswith("inputs/")}
    key = jax.random.PRNGKey(0)
    times = []
    for i in range(n + 5):
        inputs = {k: v[i % len(v)][None] for k, v in rows.items()}
        t = time.perf_counter()
        policy.sample(inputs, key)  # tokens back on the host
        service.steps_to_go(inputs)
        if i >= 5:
            times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {"policy_latency_ms_p50": float(np.percentile(ms, 50)), "policy_latency_ms_p99": float(np.percentile(ms, 99))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["vl-tiny", "vl-cpu"])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--data", default="runs/bench-throughput")
    p.add_argument("--train", type=Path, help="an existing training split to stream instead (e.g. a pipeline's "
                                               "pipeline_root/<run>/subsample/train)")
    p.add_argument("--out", default="benchmarks/results/sft_throughput.json")
    args = p.parse_args()
    train = args.train or ensure_dataset(Path(args.data), args.episodes)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for variant in args.variants:
        row = measure_variant(variant, train, args.steps, args.warmup, args.batch_size, args.dtype)
        print(json.dumps(row), flush=True)
        results[f"{variant}/{row['device_kind']}/{args.dtype}/{row['devices']}"] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
