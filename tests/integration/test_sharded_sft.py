"""SFT on a mesh of 4 host devices (data-parallel, and FSDP) gives the single-device losses."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from efm.data import rlds
from efm.envs.base import Episode

SCRIPT = """
import json, sys
import jax
from efm import sharding
from efm.config import RunConfig
from efm.sft.trainer import run_sft
cfg = RunConfig.from_json(sys.argv[1])
result = run_sft(cfg, sys.argv[2], sys.argv[3], sys.argv[4], progress=False)
mesh = sharding.make_mesh(cfg.sft.fsdp)
from efm.sft.trainer import restore_params
params = restore_params(sys.argv[4], result.final_step)
specs = jax.tree_util.tree_leaves(sharding.state_shardings(mesh, params))
print(json.dumps({"devices": jax.device_count(), "history": result.history,
                  "sharded_arrays": sum(any(a is not None for a in s.spec) for s in specs)}))
"""


def episode(t: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(observations={"rgb": rng.integers(0, 256, (t + 1, 36, 64, 3)).astype(np.uint8),
                                 "effector_translation": rng.uniform([0.15, -0.3], [0.6, 0.3], (t + 1, 2))},
                   actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                   instruction=["push the red moon left", "slide the blue cube up"][seed % 2],
                   success=True, episode_id=f"ep-{seed}")


def run(devices: int, fsdp: int, dirs: tuple[Path, Path], out: Path) -> dict:
    from efm.config import debug_config

    # Batches of 12 (4 per objective, 3 per device) and validation batches of 8 (2 per device):
    # small, still split over the mesh, and the 3 validation episodes of 4 steps need more than
    # one validation batch per objective (the last padded), so the losses sum over batches.
    cfg = debug_config("tabletop")
    cfg = cfg.replace(sft=dataclasses.replace(cfg.sft, num_steps=4, eval_every=2, checkpoint_every=2, fsdp=fsdp,
                                              batch_size=12, validation_batch_size=8))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, cfg.to_json(), str(dirs[0]), str(dirs[1]), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sharded")
    return (rlds.write_episodes([episode(5, i) for i in range(8)], root / "train"),
            rlds.write_episodes([episode(4, 100 + i) for i in range(3)], root / "val", split="validation"))


def test_sharded_losses_equal_single_device(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """4 devices as a 2 (data) x 2 (fsdp) mesh: the batch split 4 ways, parameters 2 ways."""
    single = run(1, 1, dirs, tmp_path / "single")
    mesh = run(4, 2, dirs, tmp_path / "mesh")
    assert (single["devices"], mesh["devices"]) == (1, 4)
    assert single["sharded_arrays"] == 0
    assert mesh["sharded_arrays"] > 0  # FSDP really splits parameters
    assert len(mesh["history"]) == len(single["history"]) == 2
    for a, b in zip(single["history"], mesh["history"], strict=True):
        assert set(a) == set(b)
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-4, abs=1e-4), k
