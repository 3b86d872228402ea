"""Reading Stage 1's validation history: which step a selection rule picks (Appendix B), which
checkpoints are worth keeping, and when training has stopped improving. Pure functions over the
rows the trainer records, one per evaluation: step + val/<objective>_loss (+ train losses)."""

from __future__ import annotations

import contextlib

History = list[dict[str, float]]

PAST_BEST_BC = "past_best_bc:"
BEST = "best_"


def rule_loss(rule: str) -> str | None:
    """The validation loss a best_<objective> rule minimises (None for the other rules)."""
    return f"val/{rule.removeprefix(BEST)}_loss" if rule.startswith(BEST) else None


def watched_losses(rules: tuple[str, ...]) -> tuple[str, ...]:
    """The validation losses early stopping watches: those the best_* rules among `rules` read."""
    return tuple(k for k in map(rule_loss, rules) if k is not None)


def pick_step(history: History, rule: str) -> int:
    """The evaluation step that a rule selects: best_<objective>, last, step:N, or
    past_best_bc:F, the last step at or before F times the best BC validation loss's step
    (Appendix B: Aloha's policy needed Stage 1 trained well past it; the last step if training
    ended before F times it)."""
    if not history:
        raise ValueError("empty SFT history: nothing to select from")
    if rule == "last":
        return int(history[-1]["step"])
    if rule.startswith(PAST_BEST_BC):
        target = pick_step(history, "best_bc") * float(rule[len(PAST_BEST_BC):])
        return max(int(h["step"]) for h in history if h["step"] <= target)
    if rule.startswith("step:"):
        want = int(rule[5:])
        steps = [int(h["step"]) for h in history]
        if want not in steps:
            raise ValueError(f"select rule {rule!r}: no checkpoint at step {want} (have {steps})")
        return want
    key = rule_loss(rule)
    if key is None or key not in history[0]:
        raise ValueError(f"select rule {rule!r}: history has no {key}")
    return int(min(history, key=lambda h: h[key])["step"])


def stalled(history: History, keys: tuple[str, ...], patience: int) -> bool:
    """Whether none of `keys` reached a new minimum in the last `patience` evaluations: the
    best_* selections can then only change if training would recover later, which early
    stopping bets against (`sft.patience`). False while the history is too short to tell."""
    if patience <= 0 or not keys or len(history) <= patience:
        return False
    recent, before = history[-patience:], history[:-patience]
    return all(min(h[k] for h in recent) >= min(h[k] for h in before) for k in keys)


def keep_steps(history: History, budget: int, rules: tuple[str, ...] = ()) -> set[int]:
    """Checkpoints worth keeping: the latest, the best per objective and what the selection
    `rules` pick so far, then the most recent. (A past_best_bc pick, once made, stays the pick:
    the best BC step came before it, so later steps change neither.)"""
    steps = [int(h["step"]) for h in history]
    keep = {steps[-1]}
    for rule in rules:
        with contextlib.suppress(ValueError):  # step:N before step N
            keep.add(pick_step(history, rule))
    for key in [k for k in history[-1] if k.startswith("val/")]:
        keep.add(int(min(history, key=lambda h, k=key: h[k])["step"]))
    for s in reversed(steps):
        if len(keep) >= budget:
            break
        keep.add(s)
    return keep


def checkpointed(history: History, steps: set[int]) -> History:
    """The rows of `history` whose step has a checkpoint (evaluation may be more frequent than
    checkpoints): what selection, and keeping checkpoints for it, may choose from."""
    return [h for h in history if int(h["step"]) in steps]
