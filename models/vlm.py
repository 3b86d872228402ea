"""The vision-language EFM (RT-2 / PaliGemma pattern): frames and an instruction in, tokens out.

Sequence = prefix + suffix. The prefix is read with full attention: the image tokens of two
frames of each camera the tokenizer config names (`tokenizer.cameras`; the current and the
previous one, Appendix D.1; the first and the last for the auxiliary instruction objective):
one camera on the table, Aloha's two stacked images (D.3), all through one image tower, camera
after camera in the sequence; then the instruction's tokens, proprioception tokens where
the model reads them (E.2 appends them to the instruction), and the objective named in words
("act", "steps to go", "instruction", and "where" for pretraining). The suffix is causal: a begin token, then the
output tokens, so output k is predicted at suffix position k from the prefix and outputs < k.

Decoding encodes the prefix once into a KV cache, then runs one token per output (the layout and
the decoding are `prefix_lm.PrefixLM`'s, shared with the state model's transformer decoder).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from efm.config import OBJECTIVES, TransformerVariant
from efm.models.llm import LLM
from efm.models.prefix_lm import (
    IMAGE,
    IMAGE_TOKENS,
    IMAGE_WHERE,
    STATE,
    TEXT,
    Inputs,
    PrefixLM,
    state_ids,
)
from efm.models.tokenizers import TextTokenizer
from efm.models.vit import FrameCodes, ViT

# Where the teacher-forced pass of a grounding variant leaves, per text token, where its query
# fires in the current frame (flax `sow`, collection "intermediates"), so the grounding loss
# reuses the pass instead of running the image tower again (`EFMFunctions.log_likelihood_and_ground`).
GROUNDED = "grounded"
OBJECTIVE_PROMPTS = {"bc": "act", "steps_to_go": "steps to go", "instruction": "instruction", "locate": "where"}
PROMPT_LENGTH = max(len(p) for p in OBJECTIVE_PROMPTS.values())


def objective_prompts() -> np.ndarray:
    """[num objectives, PROMPT_LENGTH] byte tokens, in OBJECTIVES order."""
    return TextTokenizer(PROMPT_LENGTH).encode([OBJECTIVE_PROMPTS[o] for o in OBJECTIVES])


class VisionLanguageEFM(PrefixLM):
    variant: TransformerVariant
    vocab_size: int
    text_offset: int
    begin_token: int
    state_offset: int = 0  # global id of state token 1
    dtype: jnp.dtype = jnp.float32
    text_length: int = 0  # the tokenizer's text tokens; 0: as long as the inputs' text

    def setup(self) -> None:
        v = self.variant
        self.vision_encoder = ViT(v.patch, v.vit_width, v.vit_depth, v.vit_mlp, v.vit_heads, v.width, self.dtype,
                                  v.stem, v.keypoints, v.grounding, v.feature_convs)
        self.llm = LLM(self.vocab_size, v.width, v.depth, v.heads, v.head_dim, v.mlp, self.dtype)

    def prefix(self, inputs: Inputs, objective: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(embeddings [B, P, D], valid [B, P])."""
        frames, codes = _frames(inputs)
        b, f = _frame_shape(inputs)
        text = inputs[TEXT]
        if self.variant.grounding:  # the tower also says where each instruction token is seen
            img, where, rc = self.vision_encoder(frames, self.llm.embed(text + self.text_offset), text != 0, codes)
            self.sow("intermediates", GROUNDED, rc.reshape(b, f, *rc.shape[1:])[:, 0])
        else:
            img = self.vision_encoder(frames, codes=codes)
        img = img.reshape(b, -1, img.shape[-1])  # [B, F*N, D], frame after frame
        prompt = jnp.asarray(objective_prompts())[objective]  # [B, PROMPT_LENGTH]
        words = [(inputs[TEXT], inputs[TEXT] + self.text_offset)]  # (tokens, global ids)
        if STATE in inputs:  # after the instruction (E.2), before the objective's words
            words.append((inputs[STATE], state_ids(inputs[STATE], self.state_offset)))
        words.append((prompt, prompt + self.text_offset))
        word_emb = self.llm.embed(jnp.concatenate([ids for _, ids in words], axis=1))
        if self.variant.grounding:
            word_emb = word_emb.at[:, :text.shape[1]].add(where.astype(word_emb.dtype))
        emb = jnp.concatenate([img.astype(self.dtype), word_emb], axis=1)
        valid = jnp.concatenate([jnp.ones(img.shape[:2], bool), *(t != 0 for t, _ in words)], axis=1)
        return emb, valid

    def prefix_positions(self, inputs: Inputs, length: int) -> np.ndarray:
        """Text cut short of `text_length` (its padding trimmed, `prefix_lm.trim_text`) leaves
        a gap: what follows it keeps its place in the padded layout. A hidden text (the
        auxiliary objective's, no tokens at all) leaves none."""
        text = inputs[TEXT].shape[1]
        if not text or not self.text_length:
            return np.arange(length)
        if text > self.text_length:
            raise ValueError(f"{text} text tokens, the tokenizer has {self.text_length}")
        after = length - PROMPT_LENGTH - (inputs[STATE].shape[1] if STATE in inputs else 0)  # where the text ends
        return np.arange(length) + np.where(np.arange(length) >= after, self.text_length - text, 0)

    def ground(self, inputs: Inputs) -> jax.Array:
        """Grounding variants: where each text token's query fires in the current frame (of the
        first camera), as (row, column) [B, L, 2], the image spanning [-1, 1]."""
        if not self.variant.grounding:
            raise ValueError("this variant has no grounded text (TransformerVariant.grounding)")
        frames, codes = _frames(inputs)
        b, f = _frame_shape(inputs)
        text = inputs[TEXT]
        _, _, rc = self.vision_encoder(frames, self.llm.embed(text + self.text_offset), text != 0, codes)
        return rc.reshape(b, f, *rc.shape[1:])[:, 0]

    def encode_frames(self, frames: jax.Array, text: jax.Array) -> FrameCodes:
        """The tower's work on each frame on its own (frames [M, H, W, C], each with its sample's
        text [M, L] -> `FrameCodes` of M frames), which inputs may carry instead of their frames
        (IMAGE_TOKENS, IMAGE_WHERE)."""
        return self.vision_encoder(frames, self.llm.embed(text + self.text_offset), encode_only=True)


def _frame_shape(inputs: Inputs) -> tuple[int, int]:
    """(B samples, F frames each) of inputs holding frames or their codes."""
    return (inputs[IMAGE_TOKENS] if IMAGE_TOKENS in inputs else inputs[IMAGE]).shape[:2]


def _frames(inputs: Inputs) -> tuple[jax.Array | None, FrameCodes | None]:
    """(every frame [B*F, H, W, C], None), or (None, their codes flattened alike) where the inputs
    carry the tower's per-frame work instead of the frames."""
    if IMAGE_TOKENS in inputs:
        where = inputs.get(IMAGE_WHERE)
        return None, FrameCodes(_flat(inputs[IMAGE_TOKENS]), None if where is None else _flat(where))
    return _flat(inputs[IMAGE]), None  # F = 2 x cameras, one tower for every frame


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
