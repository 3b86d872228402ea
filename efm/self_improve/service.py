"""The steps-to-go service: a frozen Stage-1 checkpoint answering d(o, g) in batches.

Used for success detection during episodes (Eq. 3) and reward labelling after them (Eq. 2).
Actors call `steps_to_go` on it directly in single-process runs, or through a Ray actor handle.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from efm.models.efm import EFMFunctions


class StepsToGoService:
    def __init__(self, fns: EFMFunctions, params: Any, version: str = "reward-sft"):
        self._fns = fns
        self._params = params
        self.version = version
        self.num_queries = 0

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """d(o, g) for a batch of observations. [B]"""
        self.num_queries += 1
        return np.asarray(self._fns.steps_to_go(self._params, {k: jnp.asarray(v) for k, v in inputs.items()}))
