"""The plain MLP the decision probes train (`table_probes.py`, `aloha_probe.py`): gelu hidden
layers and a linear head, params a list of (weight, bias)."""

from __future__ import annotations

import jax


def mlp(params: list, x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jax.nn.gelu(x @ w + b)
    w, b = params[-1]
    return x @ w + b
