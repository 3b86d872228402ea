"""benchmarks/sft_throughput.py: a sharded step's FLOPs are every device's, not one device's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = """
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sft_throughput import program_flops
x, w = jnp.ones((256, 512)), jnp.ones((512, 512))
mesh = Mesh(jax.devices(), ("data",))
rows = NamedSharding(mesh, P("data"))
sharded = jax.jit(jnp.dot, in_shardings=(rows, None), out_shardings=rows).lower(x, w).compile()
print(jax.device_count(), program_flops(sharded))
"""


def test_a_sharded_steps_flops_count_every_device() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    devices, flops = out.stdout.split()
    assert int(devices) == 2
    assert float(flops) == 2 * 256 * 512 * 512  # the whole matmul, though each device ran half
