"""Tokenizers (Appendix E): continuous actions and steps-to-go <-> discrete tokens.

Each tokenizer owns a local vocabulary [0, vocab_size); `Vocabulary` places them side by side
in the model's output space, as RT-2 maps them onto a language model's token space. Every
output position has a set of valid tokens (a sign position only admits sign tokens), so
log-probabilities are taken over the valid tokens of each position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol

import numpy as np

from efm.config import MAX_LOCATE_OBJECTS, TokenizerConfig


class ActionTokenizer(Protocol):
    action_dim: int
    num_tokens: int  # tokens per action
    vocab_size: int

    def encode(self, actions: np.ndarray) -> np.ndarray: ...  # [..., A] float -> [..., L] int32
    def decode(self, tokens: np.ndarray) -> np.ndarray: ...  # [..., L] int -> [..., A] float32
    def valid_tokens(self) -> np.ndarray: ...  # [L, vocab_size] bool
    def ordinal_runs(self) -> np.ndarray: ...  # [vocab_size, 2]: (start, length) of each token's ordered run


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

    def ordinal_runs(self) -> np.ndarray:
        """The magnitudes are ordered; each sign stands alone."""
        return np.array([(0, 1), (1, 1)] + [(2, self.magnitude_bins)] * self.magnitude_bins, np.int32)


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

    def ordinal_runs(self) -> np.ndarray:
        return np.tile(np.array([[0, self.bins]], np.int32), (self.bins, 1))


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
        """Mean integer step count in each bin: bin k holds steps [k*w, (k+1)*w); a bin narrower
        than a step that holds no integer gets its midpoint. [bins]"""
        k = np.arange(self.bins, dtype=np.float64)
        lo, hi = np.ceil(k * self.width), np.ceil((k + 1) * self.width) - 1  # its first and last integers
        return np.where(lo <= hi, (lo + hi) / 2, (k + 0.5) * self.width).astype(np.float32)


@dataclass(frozen=True)
class TextTokenizer:
    """UTF-8 bytes, plus whole words as single tokens where a word list is given.

    Token b < 256 is byte b (0 pads and, as a target, ends the text). With `words`, token
    256 + 2i is words[i] at the start of the text and 257 + 2i is " " + words[i]: a word
    matches only whole (followed by a space or the end), and anything else falls back to
    bytes, so every text round-trips. The word list is data (the run's config), learned from a
    dataset's instructions by `efm data train-tokenizer`; no vocabulary file is downloaded.
    Words shorten the table's instructions ~4x, which is both faster and easier to ground
    than bytes for a model trained from scratch.
    """

    length: int  # tokens per text, padded or truncated
    words: tuple[str, ...] = ()

    @property
    def vocab_size(self) -> int:
        return 256 + 2 * len(self.words)

    @cached_property
    def _pieces(self) -> dict[bytes, int]:
        out = {}
        for i, w in enumerate(self.words):
            out[w.encode("utf-8")] = 256 + 2 * i
            out[b" " + w.encode("utf-8")] = 257 + 2 * i
        return out

    @cached_property
    def _piece_bytes(self) -> dict[int, bytes]:
        return {t: b for b, t in self._pieces.items()}

    def _encode_one(self, text: str) -> list[int]:
        data, out, i = text.encode("utf-8"), [], 0
        ends = [j for j, c in enumerate(data) if c == 32] + [len(data)]  # word ends
        while i < len(data) and len(out) < self.length:
            token = None
            if self._pieces and (i == 0 or data[i] == 32):
                end = next(j for j in ends if j > i)  # the word starting at i ends here
                token = self._pieces.get(data[i:end])
            if token is None:
                out.append(data[i])
                i += 1
            else:
                out.append(token)
                i = end
        # Truncation may cut a character: drop its bytes. The trailing run of byte tokens
        # starts on a character boundary (after a word or at the start), so check just it.
        start = len(out)
        while start and out[start - 1] < 256:
            start -= 1
        while len(out) > start:
            try:
                bytes(out[start:]).decode("utf-8")
                break
            except UnicodeDecodeError:
                out.pop()
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N] strings -> [N, length] int32 (truncated on a character boundary)."""
        out = np.zeros((len(texts), self.length), np.int32)
        for i, text in enumerate(texts):
            tokens = _cached_encode(self, text)
            out[i, : len(tokens)] = tokens
        return out

    @cached_property
    def _byte_lengths(self) -> np.ndarray:
        pieces = [len(self._piece_bytes[t]) for t in range(256, self.vocab_size)]
        return np.array([0] + [1] * 255 + pieces, np.int64)

    def byte_lengths(self, tokens: np.ndarray) -> np.ndarray:
        """How many bytes of the text each token stands for (0 for padding). [..., L]"""
        return self._byte_lengths[np.asarray(tokens)]

    def decode(self, tokens: np.ndarray) -> list[str]:
        """[N, L] tokens -> strings, each ending at its first 0."""
        out = []
        for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]).astype(np.int64):
            end = int(np.argmin(row != 0)) if (row == 0).any() else len(row)
            data = b"".join(bytes([t]) if 0 < t < 256 else self._piece_bytes.get(int(t), b"") for t in row[:end])
            out.append(data.decode("utf-8", errors="replace"))
        return out


@lru_cache(maxsize=65536)
def _cached_encode(tokenizer: TextTokenizer, text: str) -> tuple[int, ...]:
    """Instructions repeat across an episode's steps: encode each once."""
    return tuple(tokenizer._encode_one(text))


def learn_words(texts: Sequence[str], min_count: int = 5, max_words: int = 1000) -> tuple[str, ...]:
    """The word list of a TextTokenizer: words seen at least `min_count` times, most frequent
    first (ties alphabetical), at most `max_words`."""
    counts: dict[str, int] = {}
    for text in texts:
        for w in text.split(" "):
            if w:
                counts[w] = counts.get(w, 0) + 1
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return tuple(ranked[:max_words])


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
    (an output only of the pretraining objective, which answers positions in them).

    Layout: action | steps-to-go | state | text | begin; with `state_shared` the state tokens
    take no ids of their own: they are the action tokens of the same bins
    (`tokenizer.state_shares_action_tokens`).

    `cameras`: the observation keys whose frames a model with text reads as image tokens (the
    image tower makes those; they take no ids here), so that everything a model reads is
    decided by its tokenizer config.
    """

    action: ActionTokenizer
    steps_to_go: StepsToGoTokenizer
    text: TextTokenizer | None = None
    state: StateTokenizer | None = None
    cameras: tuple[str, ...] = ("rgb",)
    state_shared: bool = False  # valid only as TokenizerConfig.state_shares_action_tokens checks

    @property
    def size(self) -> int:
        return self.text_offset if self.text is None else self.text_offset + self.text.vocab_size + 1

    @property
    def state_offset(self) -> int:
        """Global id of state token 1 (state token k is state_offset + k - 1)."""
        return 0 if self.state_shared else self.action.vocab_size + self.steps_to_go.vocab_size

    @property
    def steps_to_go_offset(self) -> int:
        return self.action.vocab_size

    @property
    def text_offset(self) -> int:
        own_state = 0 if self.state is None or self.state_shared else self.state.vocab_size
        return self.action.vocab_size + self.steps_to_go.vocab_size + own_state

    @property
    def begin(self) -> int:
        """The token that starts every output sequence (text models)."""
        if self.text is None:
            raise ValueError("this vocabulary has no text tokens, hence no begin token")
        return self.size - 1

    @property
    def max_target_length(self) -> int:
        return max(self.action.num_tokens, 1, 0 if self.text is None else self.text.length,
                   0 if self.state is None else self.state.dims)

    @property
    def locate_length(self) -> int:
        """Output positions of the pretraining objective: the position tokens of as many objects
        as a question may name, within the output length (0 without state tokens)."""
        if self.state is None:
            return 0
        return min(MAX_LOCATE_OBJECTS, self.max_target_length // self.state.dims) * self.state.dims

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

    def position_targets(self, values: np.ndarray) -> np.ndarray:
        """[..., dims] positions -> [..., dims] global ids of their state tokens: the answers of
        the pretraining objective `locate`, in the code the model reads proprioception in."""
        if self.state is None:
            raise ValueError("this vocabulary has no state tokens to answer positions in")
        return self.state.encode(values) + self.state_offset - 1

    def position_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Inverse of position_targets (bin centres). [..., dims] global ids -> float32"""
        assert self.state is not None
        return self.state.decode(np.asarray(tokens) - self.state_offset + 1)

    def action_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return self.action.decode(tokens)

    def ordinal_runs(self) -> np.ndarray:
        """[size, 2] int32: (first id, length) of the ordered run of bins each token belongs to
        (an action's magnitudes, the position bins); (id, 1) for tokens the Gaussian target
        smoothing leaves one-hot: those without an order (signs, text, begin) and the
        steps-to-go bins. d(o, g) is the mean of the steps-to-go distribution, and a Gaussian
        cut off at bin 0 moves the mean of a finished episode's target up by 0.8 sigma (8
        steps at sigma 0.1 of 50 two-step bins), where no success threshold can find it."""
        runs = np.stack([np.arange(self.size), np.ones(self.size, int)], axis=-1).astype(np.int32)
        runs[: self.action.vocab_size] = self.action.ordinal_runs()
        if self.state is not None and not self.state_shared:  # shared: the action bins' run already
            runs[self.state_offset : self.state_offset + self.state.vocab_size] = (self.state_offset,
                                                                                   self.state.vocab_size)
        return runs

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
        elif objective == "locate":  # likewise without state tokens
            if self.state is not None:
                n = self.locate_length
                valid[:n, self.state_offset : self.state_offset + self.state.vocab_size] = True
        else:
            raise ValueError(f"unknown objective {objective!r}")
        valid[~valid.any(axis=-1), 0] = True  # padded positions: any fixed token, masked out of losses
        return valid


def make_vocabulary(cfg: TokenizerConfig) -> Vocabulary:
    if cfg.action_scheme == "sign_magnitude":
        action: ActionTokenizer = SignMagnitudeTokenizer(cfg.action_dim, cfg.magnitude_bins, cfg.action_max_abs)
    else:
        action = UniformTokenizer(cfg.action_dim, cfg.uniform_bins, cfg.action_max_abs)
    text = TextTokenizer(cfg.text_tokens, cfg.text_words) if cfg.text_tokens else None
    state = StateTokenizer(cfg.state_key, cfg.state_low, cfg.state_high, cfg.state_bins) if cfg.state_key else None
    return Vocabulary(action, StepsToGoTokenizer(cfg.steps_to_go_bins, cfg.steps_to_go_max), text, state,
                      tuple(cfg.cameras), cfg.state_shares_action_tokens)
