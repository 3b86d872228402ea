"""Figures people look at rather than read: trajectories (Figure 4) and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from efm.envs.base import Episode


def plot_trajectories(panels: dict[str, Sequence[Episode]], path: str | Path, *, position_key: str = "position",
                      goal_key: str = "target", success_radius: float | None = None,
                      arena_half_size: float | None = None) -> Path:
    """One panel per policy (e.g. dataset / SFT / Self-Improved), same episodes' tasks."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (title, episodes) in zip(axes[0], panels.items(), strict=True):
        for i, ep in enumerate(episodes):
            c = colors[i % len(colors)]
            xy = ep.observations[position_key]
            ax.plot(xy[:, 0], xy[:, 1], "-", color=c, lw=1.2, alpha=0.85)
            ax.plot(xy[0, 0], xy[0, 1], "o", color=c, ms=4)
            goal = ep.goal[goal_key]
            ax.plot(goal[0], goal[1], "*", color=c, ms=11, mec="k", mew=0.5)
            if success_radius:
                ax.add_patch(plt.Circle(goal, success_radius, color=c, fill=False, lw=0.6, ls="--"))
        mean_len = np.mean([e.length for e in episodes]) if episodes else float("nan")
        ax.set_title(f"{title}: mean length {mean_len:.1f} steps", fontsize=10)
        if arena_half_size:
            ax.set_xlim(-arena_half_size, arena_half_size)
            ax.set_ylim(-arena_half_size, arena_half_size)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.5, 0.01, "start o, target *, dashed circle: success radius", ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


Series = dict[str, tuple[Sequence[float], Sequence[float]]]  # name -> (x, y)


def plot_curves(series: Series, path: str | Path, *, xlabel: str, ylabel: str, title: str,
                ylim: tuple[float, float] | None = None) -> Path:
    """Line plot of named (x, y) series."""
    return plot_curve_panels({title: series}, path, xlabel=xlabel, ylabel=ylabel, ylim=ylim)


def plot_curve_panels(panels: dict[str, Series], path: str | Path, *, xlabel: str, ylabel: str,
                      ylim: tuple[float, float] | None = None) -> Path:
    """One line plot per titled panel, side by side, sharing the y axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        for name, (x, y) in series.items():
            ax.plot(x, y, "-o", ms=3, label=name)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_steps_to_go_strip(frames: np.ndarray, probs: np.ndarray, bin_values: np.ndarray, d: np.ndarray,
                           path: str | Path, title: str, *, steps: Sequence[int] | None = None,
                           success: bool | None = None) -> Path:
    """Figures 2-3: an episode's frames, each with the predicted steps-to-go distribution and
    d(o, g) under it. frames [N, H, W, 3], probs [N, K], d [N]; `steps` label the frames."""
    n = len(frames)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 3.6), squeeze=False,
                             gridspec_kw={"height_ratios": [1.1, 1.0]})
    top = float(probs.max()) * 1.1
    width = float(bin_values[1] - bin_values[0]) if len(bin_values) > 1 else 1.0
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(frames[i])
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"t = {steps[i] if steps is not None else i}", fontsize=8)
        ax = axes[1, i]
        ax.bar(bin_values, probs[i], width=width, color="tab:blue")
        ax.axvline(d[i], color="tab:red", lw=1)
        ax.set_ylim(0, top)
        ax.set_yticks([])
        ax.tick_params(labelsize=6)
        ax.set_xlabel(f"d(o, g) = {d[i]:.1f}", fontsize=8)
    outcome = "" if success is None else ("  (success)" if success else "  (failure)")
    fig.suptitle(title + outcome, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
