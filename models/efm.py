"""The embodied foundation model (EFM): one network, every objective, token outputs.

RT-2 style: the model reads an observation, the goal and an objective prompt, and emits tokens
in one shared vocabulary. Behavioural cloning asks for the action tokens, steps-to-go for one
token, LanguageTable's auxiliary objective for the instruction's bytes. Decoding is
autoregressive, so log pi(a | o, g) is the sum of the action tokens' log-probs.

Three networks honour one contract (`__call__` teacher-forced, `first_logits`, `prefill`,
`decode_step`): the state models (`mlp.py`: an MLP decoder for pointmass, a transformer decoder
for long outputs such as Aloha's chunks) and the vision-language transformer of the table
domains (`vlm.py`). Everything else (trainer, actors, learner,
evaluation) sees only `EFMFunctions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efm import math
from efm.config import MODEL_VARIANTS, OBJECTIVES, MlpVariant, ModelConfig
from efm.models.mlp import MlpEFM, StateTransformerEFM
from efm.models.prefix_lm import IMAGE_TOKENS, IMAGE_WHERE, STATE, TEXT, trim_text
from efm.models.tokenizers import Vocabulary
from efm.models.vlm import GROUNDED, VisionLanguageEFM

Inputs = dict[str, jax.Array]
OBJECTIVE_ID = {name: i for i, name in enumerate(OBJECTIVES)}
# Pretraining batches: per text token, where the object it names is in the camera image (row,
# column in [-1, 1], `envs.tabletop.image_position`), and whether it names one
# (data/pretrain.py); the grounding loss's squared error is in units of GROUND_SCALE (a 20th of
# the image's height or width).
GROUND_RC, GROUND_MASK = "ground_rc", "ground_mask"
GROUND_SCALE = 0.1


def reads_text(objective: str) -> bool:
    """Whether an objective's inputs keep the instruction (the auxiliary one predicts it)."""
    return objective != "instruction"


def objective_inputs(inputs: Inputs, objective: str) -> Inputs:
    """What an objective reads. The auxiliary instruction objective sees the first and last
    frame only: its hidden text and state are dropped, not just masked, which spares the
    attention and MLPs ~40% of its sequence. The pretraining question "where is X" reads no
    state: the effector's position would answer it."""
    if objective not in ("instruction", "locate") or TEXT not in inputs:
        return inputs
    kept = {k: v for k, v in inputs.items() if k != STATE}
    return kept if reads_text(objective) else {**kept, TEXT: inputs[TEXT][:, :0]}


def grounding_sums(where: jax.Array, rc: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of the masked squared distances in GROUND_SCALE units, how many) between where name
    tokens' queries fire and where their objects are: a batch's parts add up to its loss."""
    error = jnp.sum(jnp.square(where - rc), axis=-1) / GROUND_SCALE**2
    return jnp.sum(error * mask), jnp.sum(mask)


def grounding_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    return total / jnp.maximum(count, 1.0)


def make_model(cfg: ModelConfig, vocab: Vocabulary) -> nn.Module:
    v = MODEL_VARIANTS[cfg.variant]
    if isinstance(v, MlpVariant):
        if v.decoder_depth:
            return StateTransformerEFM(v, vocab.size, vocab.state_offset)
        if vocab.state is not None:
            raise ValueError(f"model variant {cfg.variant!r} has an MLP decoder, which reads no input tokens: "
                             "clear tokenizer.state_key or use a transformer decoder (mlp-tx-*)")
        return MlpEFM(v, vocab.size, vocab.max_target_length)
    if vocab.text is None:
        raise ValueError(f"model variant {cfg.variant!r} reads text: set tokenizer.text_tokens > 0")
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    return VisionLanguageEFM(v, vocab.size, vocab.text_offset, vocab.begin, vocab.state_offset, dtype, vocab.text.length)


@dataclass(frozen=True)
class EFMFunctions:
    """The model's jitted uses: losses, action sampling and steps-to-go, given params."""

    model: nn.Module
    vocab: Vocabulary

    def init(self, rng: jax.Array, inputs: Inputs) -> dict:
        b = next(iter(inputs.values())).shape[0]
        tokens = jnp.zeros((b, self.vocab.max_target_length), jnp.int32)
        return self.model.init(rng, inputs, jnp.zeros((b,), jnp.int32), tokens)["params"]

    def _valid(self, objective: str, length: int | None = None) -> jax.Array:
        return jnp.asarray(self.vocab.valid_tokens(objective)[:length])

    def log_likelihood(self, params: dict, inputs: Inputs, objective: jax.Array, targets: jax.Array,
                       target_mask: jax.Array, sigma: float = 0.0) -> jax.Array:
        """log p(targets | o, g, objective) for a batch mixing objectives. [B]

        sigma > 0 (training only): minus the cross-entropy against targets spread over their
        ordered bins as a Gaussian (`math.ordinal_targets`: sigma x the run's bins), not a
        likelihood."""
        return self.log_likelihood_and_ground(params, inputs, objective, targets, target_mask, sigma)[0]

    def log_likelihood_and_ground(self, params: dict, inputs: Inputs, objective: jax.Array, targets: jax.Array,
                                  target_mask: jax.Array, sigma: float = 0.0) -> tuple[jax.Array, jax.Array | None]:
        """`log_likelihood` and, for a grounding variant, what `ground` would return for these
        inputs, from the same pass ([B, L, 2]; None for other variants)."""
        logits, state = self.model.apply({"params": params}, inputs, objective, targets, mutable=["intermediates"])
        grounded = state.get("intermediates", {}).get(GROUNDED)
        return self._log_likelihood(logits, objective, targets, target_mask, sigma), (
            None if grounded is None else grounded[0])

    def _log_likelihood(self, logits: jax.Array, objective: jax.Array, targets: jax.Array, target_mask: jax.Array,
                        sigma: float) -> jax.Array:
        length = targets.shape[1]
        valid = jnp.stack([self._valid(o, length) for o in OBJECTIVES])[objective]  # [B, L, V]
        if sigma <= 0:
            return math.token_log_likelihood(logits, targets, valid, target_mask)
        runs = jnp.asarray(self.vocab.ordinal_runs())[targets]  # [B, L, 2]
        probs = math.ordinal_targets(targets, runs[..., 0], runs[..., 1], self.vocab.size, sigma)
        return -math.token_cross_entropy(logits, probs, valid, target_mask)

    def grounding_loss(self, params: dict, inputs: Inputs, rc: jax.Array, mask: jax.Array) -> jax.Array:
        """Grounding variants: mean squared distance (in GROUND_SCALE units) between where each
        name token's query fires in the current frame and where the object it names is (`rc`
        [B, L, 2], `mask` [B, L])."""
        return grounding_mean(*grounding_sums(self.ground(params, inputs), rc, mask))

    def ground(self, params: dict, inputs: Inputs) -> jax.Array:
        """Grounding variants: where each text token's query fires in the current frame. [B, L, 2]"""
        return self.model.apply({"params": params}, inputs, method="ground")

    @property
    def encodes_frames(self) -> bool:
        """Whether the model's image tower can run ahead of the rest (`encode_frames`)."""
        return isinstance(self.model, VisionLanguageEFM)

    @partial(jax.jit, static_argnums=0)
    def encode_frames(self, params: dict, frames: jax.Array, text: jax.Array) -> dict[str, jax.Array]:
        """The image tower's work on each frame on its own, which inputs may carry instead of
        IMAGE: frames [M, H, W, C], each with its sample's text [M, L] -> {IMAGE_TOKENS: [M, N,
        D], and for grounding variants IMAGE_WHERE: [M, L, 2]}."""
        codes = self.model.apply({"params": params}, frames, text, method="encode_frames")
        return {IMAGE_TOKENS: codes.tokens} | ({} if codes.where is None else {IMAGE_WHERE: codes.where})

    def action_log_prob(self, params: dict, inputs: Inputs, action_tokens: jax.Array) -> jax.Array:
        """log pi(a | o, g) of tokenized actions. [B, L_a] -> [B]"""
        b, la = action_tokens.shape
        objective = jnp.full((b,), OBJECTIVE_ID["bc"], jnp.int32)
        logits = self.model.apply({"params": params}, inputs, objective, action_tokens)
        return math.token_log_likelihood(logits, action_tokens, self._valid("bc", la), jnp.ones((b, la)))

    def steps_to_go_log_probs(self, params: dict, inputs: Inputs) -> jax.Array:
        """The predicted steps-to-go distribution over the bins, one forward pass. [B, K]"""
        return self._steps_to_go_log_probs(params, _trimmed(inputs))

    @partial(jax.jit, static_argnums=0)
    def _steps_to_go_log_probs(self, params: dict, inputs: Inputs) -> jax.Array:
        b = next(iter(inputs.values())).shape[0]
        objective = jnp.full((b,), OBJECTIVE_ID["steps_to_go"], jnp.int32)
        logits = self.model.apply({"params": params}, inputs, objective, method="first_logits")
        off, n = self.vocab.steps_to_go_offset, self.vocab.steps_to_go.vocab_size
        return jax.nn.log_softmax(logits[:, off:off + n], axis=-1)

    def steps_to_go(self, params: dict, inputs: Inputs) -> jax.Array:
        """Eq. 1: d(o, g) for a batch. [B]"""
        return self._steps_to_go(params, _trimmed(inputs))

    @partial(jax.jit, static_argnums=0)
    def _steps_to_go(self, params: dict, inputs: Inputs) -> jax.Array:
        log_probs = self._steps_to_go_log_probs(params, inputs)
        return math.expected_steps_to_go(log_probs, jnp.asarray(self.vocab.steps_to_go.bin_values()))

    def _decode(self, params: dict, inputs: Inputs, objective_name: str, length: int, rng: jax.Array,
                greedy: bool) -> jax.Array:
        """Autoregressive decoding of `length` tokens: the prefix is encoded once. [B, length]"""
        variables = {"params": params}
        b = next(iter(inputs.values())).shape[0]
        objective = jnp.full((b,), OBJECTIVE_ID[objective_name], jnp.int32)
        valid = self._valid(objective_name, length)

        def pick(logits: jax.Array, k: jax.Array, key: jax.Array) -> jax.Array:
            logits = jnp.where(valid[k], logits, -1e9)
            token = jnp.argmax(logits, axis=-1) if greedy else jax.random.categorical(key, logits)
            return token.astype(jnp.int32)

        keys = []
        for _ in range(length):  # one split per token, as a sequential sampler would
            rng, key = jax.random.split(rng)
            keys.append(key)
        keys = jnp.stack(keys)
        logits, state = self.model.apply(variables, inputs, objective, length, method="prefill")
        first = pick(logits, 0, keys[0])

        def step(carry: tuple[jax.Array, Any], k: jax.Array) -> tuple[tuple[jax.Array, Any], jax.Array]:
            token, state = carry
            logits, state = self.model.apply(variables, state, token, k, method="decode_step")
            nxt = pick(logits, k + 1, keys[k + 1])
            return (nxt, state), nxt

        _, rest = jax.lax.scan(step, (first, state), jnp.arange(length - 1))
        return jnp.concatenate([first[:, None], rest.T], axis=1)

    @partial(jax.jit, static_argnums=(0, 4))
    def sample_action_tokens(self, params: dict, inputs: Inputs, rng: jax.Array, greedy: bool = False) -> jax.Array:
        """Samples from pi(a | o, g), or decodes greedily. [B, L_a]"""
        return self._decode(params, inputs, "bc", self.vocab.action.num_tokens, rng, greedy)

    @partial(jax.jit, static_argnums=0)
    def predict_instruction(self, params: dict, inputs: Inputs) -> jax.Array:
        """Greedy byte tokens of the instruction (auxiliary objective). [B, text length]"""
        assert self.vocab.text is not None
        tokens = self._decode(params, objective_inputs(inputs, "instruction"), "instruction", self.vocab.text.length,
                              jax.random.PRNGKey(0), True)
        return tokens - self.vocab.text_offset

    @partial(jax.jit, static_argnums=(0, 3))
    def locate(self, params: dict, inputs: Inputs, objects: int = 1) -> jax.Array:
        """Greedy position tokens answering the question in inputs' text (pretraining): x, y of
        each of the `objects` it names, in order. [B, objects * dims]"""
        assert self.vocab.state is not None
        return self._decode(params, objective_inputs(inputs, "locate"), "locate", objects * self.vocab.state.dims,
                            jax.random.PRNGKey(0), True)

    def sample_actions(self, params: dict, inputs: Inputs, rng: jax.Array,
                       greedy: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Continuous actions [B, A] and their tokens [B, L_a]."""
        tokens = np.asarray(self.sample_action_tokens(params, _trimmed(inputs), rng, greedy))
        return self.vocab.action_from_tokens(tokens), tokens


def _trimmed(inputs: Inputs) -> Inputs:
    """Host inputs without the work on text padding (`trim_text`: the same outputs)."""
    return trim_text(inputs) if TEXT in inputs else inputs


def make_functions(cfg: ModelConfig, vocab: Vocabulary) -> EFMFunctions:
    return EFMFunctions(make_model(cfg, vocab), vocab)
