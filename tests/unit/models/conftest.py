"""Shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efm.models.efm import EFMFunctions


def _cached_logits(fns: EFMFunctions, params: dict, x: dict, objective: jax.Array, tokens: jax.Array) -> np.ndarray:
    """Every output position's logits through the KV cache (prefill, then one decode step per
    token of `tokens` [B, L]), to hold against the teacher-forced pass. [B, L, V]"""
    length = tokens.shape[1]
    logits, state = jax.jit(lambda p, x: fns.model.apply({"params": p}, x, objective, length, method="prefill"))(
        params, x)
    step = jax.jit(lambda p, s, t, k: fns.model.apply({"params": p}, s, t, k, method="decode_step"))
    got = [np.asarray(logits)]
    for k in range(length - 1):
        logits, state = step(params, state, tokens[:, k], jnp.int32(k))
        got.append(np.asarray(logits))
    return np.stack(got, axis=1)


@pytest.fixture
def cached_logits() -> Callable[..., np.ndarray]:
    return _cached_logits
