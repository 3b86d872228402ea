"""Evaluation: roll out a policy with ground-truth termination and measure it.

Reports ground-truth success rate, mean episode length and its ratio to the optimal length,
the share of episodes reaching the task's intermediate stages where the domain defines them, and
how the learned success detector d(o, g) <= s agrees with ground truth over every observation
visited (precision and recall at s, and the threshold that would agree best).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from efm.config import RunConfig
from efm.domains import make_env, progress_metrics
from efm.envs.base import Episode, counters
from efm.math import detect_success
from efm.models.efm import EFMFunctions
from efm.progress import progress_bar
from efm.rollout import SUCCESS, end_on_ground_truth, rollout
from efm.self_improve.actor import STEPS_TO_GO, PolicyAgent
from efm.self_improve.service import StepsToGoService


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Failures count at their full (max) length, so the length ratio punishes them too."""
    lengths = np.array([e.length for e in episodes], float)
    optimal = np.array([e.optimal_length for e in episodes], float)
    return {
        "success_rate": float(np.mean([e.success for e in episodes])),
        "mean_episode_length": float(lengths.mean()),
        "mean_optimal_length": float(optimal.mean()),
        "optimal_length_ratio": float(lengths.mean() / max(optimal.mean(), 1e-9)),
    }


def precision_recall(steps_to_go: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Precision and recall of the detector d <= s against ground-truth success, per
    observation. None where undefined (the detector never fired, or no observation was a success)."""
    pred = detect_success(np.asarray(steps_to_go), threshold)
    truth = np.asarray(truth, bool)
    tp = float(np.sum(pred & truth))
    return {
        "precision": tp / float(pred.sum()) if pred.any() else None,
        "recall": tp / float(truth.sum()) if truth.any() else None,
    }


def best_threshold(steps_to_go: np.ndarray, truth: np.ndarray) -> dict[str, float] | None:
    """The threshold s at which d <= s agrees best with ground truth (the highest F1 over the
    values d took), with its precision and recall: what s could be for this reward model. None
    without a successful observation."""
    d, truth = np.asarray(steps_to_go, float), np.asarray(truth, bool)
    positives = int(truth.sum())
    if not positives:
        return None
    order = np.argsort(d, kind="stable")
    d, tp = d[order], np.cumsum(truth[order])
    fired = np.arange(1, len(d) + 1)  # observations with d <= d[i]...
    closes = np.r_[d[1:] != d[:-1], True]  # ...counted only where a run of equal values ends
    f1 = np.where(closes, 2 * tp / (fired + positives), -1.0)
    i = int(np.argmax(f1))
    return {"threshold": float(d[i]), "precision": float(tp[i] / fired[i]), "recall": float(tp[i] / positives),
            "f1": float(f1[i])}


def detector_metrics(episodes: list[Episode], threshold: float) -> dict[str, Any]:
    """`precision_recall` at s of the d(o, g) recorded over every observation of the episodes,
    and the `best_threshold` of the same observations."""
    d = np.concatenate([e.observation_extras[STEPS_TO_GO] for e in episodes])
    truth = np.concatenate([e.observation_extras[SUCCESS] for e in episodes])
    return {**precision_recall(d, truth, threshold), "best_f1": best_threshold(d, truth)}


def episodes_per_env(num_episodes: int, num_envs: int) -> np.ndarray:
    """[num_envs] quotas running tasks 0 .. num_episodes - 1 of the fixed list (env i: tasks
    i, i + num_envs, ...): exactly `num_episodes` episodes, as the reported counts and
    intervals assume (a ceiling per env ran up to num_envs - 1 more), each env's decided
    before any episode runs so that none favours quick episodes."""
    return (num_episodes - np.arange(num_envs) + num_envs - 1) // num_envs


def evaluate_policy(cfg: RunConfig, fns: EFMFunctions, policy_params: Any, reward_params: Any,
                    progress: bool = False, name: str = "policy",
                    ) -> tuple[dict[str, float], dict[str, Any], list[Episode]]:
    """(policy metrics, detector metrics, episodes) on a fixed task list, deterministic per eval
    seed; the policy metrics include the stages reached (`efm.domains.progress_metrics`) and the
    env's counters (`efm.envs.base.counters`)."""
    ev = cfg.eval
    env = make_env(cfg.env, ev.num_envs, seed=ev.seed)
    agent = PolicyAgent(fns, policy_params, StepsToGoService(fns, reward_params), seed=ev.seed)
    # fixed_tasks: env i's k-th episode runs task k * num_envs + i, so every policy evaluated
    # with this config sees the same task list, whatever order its episodes finish in.
    source = rollout(env, agent, max_steps=cfg.env.max_episode_steps, end_on=end_on_ground_truth,
                     episodes_per_env=episodes_per_env(ev.num_episodes, ev.num_envs), fixed_tasks=True,
                     id_prefix="eval")
    try:
        episodes = list(progress_bar(source, total=ev.num_episodes, desc=f"evaluate {name}", enabled=progress))
        events = counters(env)  # e.g. Aloha's rejected action chunks
    finally:
        env.close()  # worker processes (subprocess envs) end here, not at garbage collection
    policy = {**episode_metrics(episodes), **progress_metrics(cfg.env, episodes), **events}
    return policy, detector_metrics(episodes, cfg.self_improve.success_threshold), episodes
