"""`span_owners`: which tokens of a sentence spell each named object."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from efm.config import default_config
from efm.data.grounding import span_owners
from efm.data.pretrain import BLOCK_QUESTIONS, EFFECTOR_NAMES
from efm.envs.bananatable import REGIONS, all_banana_instructions
from efm.envs.tabletop import (
    BLOCK2BLOCK,
    BLOCK2LOCATION,
    BLOCK2RELATIVE,
    BLOCKS,
    DIRECTIONS,
    LOCATIONS,
    RELATIVE_DISTANCES,
    Task,
    all_instructions,
    block_mentions,
    block_text,
)
from efm.models.tokenizers import TextTokenizer


def _prefix_owners(text: TextTokenizer, sentence: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """The definition before span_owners read one encoding of the whole sentence: each span's
    tokens counted on prefixes (committed results were trained with these owners)."""
    def count(prefix: str) -> int:
        return int(np.count_nonzero(text.encode([prefix.rstrip(" ")])[0]))

    owner = np.full(text.length, -1, np.int32)
    for i, (start, end) in enumerate(spans):
        owner[count(sentence[:start]):count(sentence[:end])] = i
    return owner


def _table_sentences() -> list[tuple[str, list[tuple[int, int]]]]:
    """Every instruction the table envs produce, with its block mentions, and every
    pretraining question form (one object, and two named side by side)."""
    tasks = [Task(BLOCK2BLOCK, a, target_block=b) for a, b in itertools.permutations(BLOCKS, 2)]
    tasks += [Task(BLOCK2LOCATION, b, location=loc) for b in BLOCKS for loc in LOCATIONS]
    tasks += [Task(BLOCK2RELATIVE, b, direction=d, distance=m) for b in BLOCKS for d in DIRECTIONS
              for m in RELATIVE_DISTANCES]
    texts = [t for task in tasks for t in all_instructions(task)]
    texts += [t for region in REGIONS for t in all_banana_instructions(region)]
    out = [(t, [(s, e) for _, s, e in block_mentions(t)]) for t in dict.fromkeys(texts)]
    names = [block_text(b) for b in BLOCKS] + list(EFFECTOR_NAMES)
    for template, name in itertools.product(BLOCK_QUESTIONS, names):
        start = template.index("{}")
        out.append((template.format(name), [(start, start + len(name))]))
    for a, b in itertools.permutations(names, 2):
        out.append((f"{a} {b}", [(0, len(a)), (len(a) + 1, len(a) + 1 + len(b))]))
    return out


@pytest.mark.parametrize("words", [(), "table"], ids=["bytes", "table_words"])
def test_owners_of_every_table_sentence_are_unchanged(words: tuple[str, ...] | str) -> None:
    tok = default_config("tabletop").tokenizer
    text = TextTokenizer(tok.text_tokens, tok.text_words if words == "table" else ())
    sentences = _table_sentences()
    assert sum(bool(spans) for _, spans in sentences) > 1000
    for sentence, spans in sentences:
        np.testing.assert_array_equal(span_owners(text, sentence, spans), _prefix_owners(text, sentence, spans),
                                      err_msg=sentence)


def test_a_name_before_punctuation_owns_the_bytes_it_is_spelled_in() -> None:
    text = TextTokenizer(32, ("push", "the", "red", "moon"))
    sentence = "push the red moon."
    tokens = text.encode([sentence])[0]
    (span,) = [(s, e) for _, s, e in block_mentions(sentence)]
    owned = tokens[span_owners(text, sentence, [span]) == 0]
    assert text.decode(owned[None])[0] == " red moon"  # " red", then "moon" in bytes: "moon." is no word
    assert text.decode(tokens[span_owners(text, sentence, [span]) == -1][None])[0] == "push the."
