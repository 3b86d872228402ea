"""Tokenizers (Appendix E): continuous actions and steps-to-go <-> discrete tokens.

Each tokenizer owns a local vocabulary [0, vocab_size); `Vocabulary` places them side by side
in the model's output space, as RT-2 maps them onto a language model's token space. Every
output position has a set of valid tokens (a sign position only admits sign tokens), so
log-probabilities are taken over the valid tokens of each position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from efm.config import TokenizerConfig


class ActionTokenizer(Protocol):
    action_dim: int
    num_tokens: int  # tokens per action
    vocab_size: int

    def encode(self, actions: np.ndarray) -> np.ndarray: ...  # [..., A] float -> [..., L] int32
    def decode(self, tokens: np.ndarray) -> np.ndarray: ...  # [..., L] int -> [..., A] float32
    def valid_tokens(self) -> np.ndarray: ...  # [L, vocab_size] bool


@dataclass(frozen=True)
class SignMagnitudeTokenizer:
    """LanguageTable (E.1): per dimension a sign token (+/-) and a magnitude token 0..bins-1."""

    action_dim: int
    magnitude_bins: int = 11
    max_abs: float = 1.0

    @property
    def num_tokens(self) -> int:
        return 2 * self.action_dim

    @property
    def vocab_size(self) -> int:
        return 2 + self.magnitude_bins  # [+, -, m_0 .. m_{bins-1}]

    def encode(self, actions: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(actions, np.float64), -self.max_abs, self.max_abs)
        mag = np.rint(np.abs(a) / self.max_abs * (self.magnitude_bins - 1)).astype(np.int32)
        sign = ((a < 0) & (mag > 0)).astype(np.int32)  # zero is "+" so the code is unique
        return np.stack([sign, 2 + mag], axis=-1).reshape(*a.shape[:-1], self.num_tokens)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens).reshape(*np.shape(tokens)[:-1], self.action_dim, 2)
        sign = np.where(t[..., 0] == 1, -1.0, 1.0)
        mag = (t[..., 1] - 2) / (self.magnitude_bins - 1) * self.max_abs
        return (sign * mag).astype(np.float32)

    def valid_tokens(self) -> np.ndarray:
        valid = np.zeros((self.num_tokens, self.vocab_size), bool)
        valid[0::2, :2] = True
        valid[1::2, 2:] = True
        return valid


@dataclass(frozen=True)
class UniformTokenizer:
    """Aloha (E.2): each dimension is one token of `bins` uniform bins over [-max, max]."""

    action_dim: int
    bins: int = 256
    max_abs: float = 1.0

    @property
    def num_tokens(self) -> int:
        return self.action_dim

    @property
    def vocab_size(self) -> int:
        return self.bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(actions, np.float64), -self.max_abs, self.max_abs)
        return np.rint((a + self.max_abs) / (2 * self.max_abs) * (self.bins - 1)).astype(np.int32)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens, np.float64)
        return (t / (self.bins - 1) * 2 * self.max_abs - self.max_abs).astype(np.float32)

    def valid_tokens(self) -> np.ndarray:
        return np.ones((self.num_tokens, self.vocab_size), bool)


@dataclass(frozen=True)
class StepsToGoTokenizer:
    """Steps-to-go as one token: `bins` equal bins over [0, max_steps); larger values clip."""

    bins: int = 100
    max_steps: float = 100.0

    @property
    def vocab_size(self) -> int:
        return self.bins

    @property
    def width(self) -> float:
        return self.max_steps / self.bins

    def encode(self, steps: np.ndarray) -> np.ndarray:
        k = np.floor(np.asarray(steps, np.float64) / self.width)
        return np.clip(k, 0, self.bins - 1).astype(np.int32)

    def bin_values(self) -> np.ndarray:
        """Mean integer step count in each bin: bin k holds steps [k*w, (k+1)*w). [bins]"""
        k = np.arange(self.bins)
        return (k * self.width + (self.width - 1) / 2).clip(min=0).astype(np.float32)


@dataclass(frozen=True)
class TextTokenizer:
    """Byte-level UTF-8 text: no vocabulary file, and LanguageTable stores instructions as UTF-8
    codes already. Token b is byte b; 0 pads and, as a target, ends the text."""

    length: int  # bytes per text, padded or truncated

    vocab_size: ClassVar[int] = 256

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N] strings -> [N, length] int32 (truncated on a character boundary)."""
        out = np.zeros((len(texts), self.length), np.int32)
        for i, text in enumerate(texts):
            data = text.encode("utf-8")[: self.length]
            data = data.decode("utf-8", errors="ignore").encode("utf-8")  # no split character
            out[i, : len(data)] = np.frombuffer(data, np.uint8)
        return out

    def decode(self, tokens: np.ndarray) -> list[str]:
        """[N, L] byte tokens -> strings, each ending at its first 0."""
        out = []
        for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]):
            row = row.astype(np.int64)
            end = int(np.argmin(row != 0)) if (row == 0).any() else len(row)
            out.append(bytes(row[:end].clip(0, 255).astype(np.uint8)).decode("utf-8", errors="replace"))
        return out


@dataclass(frozen=True)
class StateTokenizer:
    """Proprioception as input tokens (E.2's joint tokens): one token per dimension of the
    observation `key`, `bins` uniform bins over [low, high] (clipped). Tokens are 1..bins; 0
    marks a sample without state (the auxiliary objective), as 0 pads text."""

    key: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    bins: int = 256

    @property
    def dims(self) -> int:
        return len(self.low)

    @property
    def vocab_size(self) -> int:
        return self.bins

    def encode(self, values: np.ndarray) -> np.ndarray:
        """[..., dims] float -> [..., dims] int32 in 1..bins."""
        v = np.asarray(values, np.float64)
        if v.shape[-1:] != (self.dims,):
            raise ValueError(f"state input {self.key!r} has shape {v.shape}; the tokenizer reads {self.dims} values")
        low, high = np.asarray(self.low), np.asarray(self.high)
        u = np.clip((v - low) / (high - low), 0.0, 1.0)
        return (np.rint(u * (self.bins - 1)) + 1).astype(np.int32)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Bin centres of tokens 1..bins. [..., dims] -> float32"""
        low, high = np.asarray(self.low), np.asarray(self.high)
        u = (np.asarray(tokens, np.float64) - 1) / (self.bins - 1)
        return (low + u * (high - low)).astype(np.float32)


@dataclass(frozen=True)
class Vocabulary:
    """The model's token space: action tokens, steps-to-go tokens, and for models that read text
    the 256 byte tokens and a begin-of-output token (RT-2 places actions in a language model's
    vocabulary the same way), and for models that read proprioception its input tokens
    (never an output).

    Layout: action | steps-to-go | state | text | begin.
    """

    action: ActionTokenizer
    steps_to_go: StepsToGoTokenizer
    text: TextTokenizer | None = None
    state: StateTokenizer | None = None

    @property
    def size(self) -> int:
        base = self.state_offset + (0 if self.state is None else self.state.vocab_size)
        return base if self.text is None else base + self.text.vocab_size + 1

    @property
    def state_offset(self) -> int:
        """Global id of state token 1 (state token k is state_offset + k - 1)."""
        return self.action.vocab_size + self.steps_to_go.vocab_size

    @property
    def steps_to_go_offset(self) -> int:
        return self.action.vocab_size

    @property
    def text_offset(self) -> int:
        return self.state_offset + (0 if self.state is None else self.state.vocab_size)

    @property
    def begin(self) -> int:
        """The token that starts every output sequence (text models)."""
        if self.text is None:
            raise ValueError("this vocabulary has no text tokens, hence no begin token")
        return self.size - 1

    @property
    def max_target_length(self) -> int:
        return max(self.action.num_tokens, 1, 0 if self.text is None else self.text.length)

    def text_tokens(self, byte_tokens: np.ndarray) -> np.ndarray:
        """Byte tokens [..., L] -> global ids."""
        assert self.text is not None
        return np.asarray(byte_tokens, np.int32) + self.text_offset

    def instruction_targets(self, byte_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, L] instruction bytes -> (global ids [N, L], mask [N, L]): the text and the one
        0 that ends it (when it fits)."""
        b = np.asarray(byte_tokens)
        n_chars = (b != 0).sum(axis=-1)
        mask = (np.arange(b.shape[-1]) <= n_chars[..., None]).astype(np.float32)
        return self.text_tokens(b), mask

    def action_targets(self, actions: np.ndarray) -> np.ndarray:
        """[..., A] -> [..., L] global token ids."""
        return self.action.encode(actions)

    def steps_to_go_targets(self, steps: np.ndarray) -> np.ndarray:
        """[...] -> [..., 1] global token ids."""
        return (self.steps_to_go.encode(steps) + self.steps_to_go_offset)[..., None]

    def action_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return self.action.decode(tokens)

    def valid_tokens(self, objective: str) -> np.ndarray:
        """[max_target_length, size] bool: which global tokens each output position admits."""
        valid = np.zeros((self.max_target_length, self.size), bool)
        if objective == "bc":
            valid[: self.action.num_tokens, : self.action.vocab_size] = self.action.valid_tokens()
        elif objective == "steps_to_go":
            valid[0, self.steps_to_go_offset : self.steps_to_go_offset + self.steps_to_go.vocab_size] = True
        elif objective == "instruction":  # a vocabulary without text admits only the padding token
            if self.text is not None:
                valid[: self.text.length, self.text_offset : self.text_offset + self.text.vocab_size] = True
        else:
            raise ValueError(f"unknown objective {objective!r}")
        valid[~valid.any(axis=-1), 0] = True  # padded positions: any fixed token, masked out of losses
        return valid


def make_vocabulary(cfg: TokenizerConfig) -> Vocabulary:
    if cfg.action_scheme == "sign_magnitude":
        action: ActionTokenizer = SignMagnitudeTokenizer(cfg.action_dim, cfg.magnitude_bins, cfg.action_max_abs)
    else:
        action = UniformTokenizer(cfg.action_dim, cfg.uniform_bins, cfg.action_max_abs)
    text = TextTokenizer(cfg.text_tokens) if cfg.text_tokens else None
    state = StateTokenizer(cfg.state_key, cfg.state_low, cfg.state_high, cfg.state_bins) if cfg.state_key else None
    return Vocabulary(action, StepsToGoTokenizer(cfg.steps_to_go_bins, cfg.steps_to_go_max), text, state)
