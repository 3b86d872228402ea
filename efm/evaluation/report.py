"""The experiment report: one result row per branch (data fraction x seed), merged into
summary.json, a Markdown table, and success rate against total episodes (the paper's Figure 5).

Plain functions, so the report is tested without kfp; the `evaluate`, `report` and
`report_append` components only call them. Rows have the shape of `efm run`'s summary.json
rows (without the MLflow run id), so both paths feed the same downstream tooling.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SUMMARY = "summary.json"
TABLE = "report.md"
PLOT = "success_vs_episodes.png"
POLICY_KEYS = ("success_rate", "mean_episode_length", "optimal_length_ratio")
DETECTOR_KEYS = ("precision", "recall")

Row = dict[str, Any]


def result_row(domain: str, data_fraction: float, seed: int, dataset_episodes: int, sft_episodes: int,
               self_improvement_episodes: int, self_improvement_env_steps: int, evaluation: Mapping[str, Any]) -> Row:
    """One branch's row from `evaluate_stage`'s metrics and the episode counts it consumed.

    `self_improvement_episodes` counts every practice episode started (all of them finish);
    `self_improvement_env_steps` the environment steps they executed."""
    return {
        "domain": domain,
        "data_fraction": float(data_fraction),
        "seed": int(seed),
        "dataset_episodes": int(dataset_episodes),
        "sft_episodes": int(sft_episodes),
        "self_improvement_episodes": int(self_improvement_episodes),
        "self_improvement_env_steps": int(self_improvement_env_steps),
        "sft": {k: evaluation["sft"][k] for k in POLICY_KEYS},
        "self_improved": {k: evaluation["self_improved"][k] for k in POLICY_KEYS},
        "success_detector": {k: evaluation["success_detector"].get(k) for k in DETECTOR_KEYS},
    }


def branch_result(domain: str, data_fraction: float, seed: int, dataset_dir: str | Path,
                  train_dir: str | Path, self_improve_dir: str | Path,
                  evaluation: Mapping[str, Any]) -> Row:
    """`result_row` with the episode counts read from the branch's artifacts."""
    from efm.data import rlds  # TensorFlow: only where datasets are read
    from efm.self_improve.loop import ROUNDS

    rounds = json.loads((Path(self_improve_dir) / ROUNDS).read_text())
    return result_row(domain, data_fraction, seed, sum(rlds.split_sizes(dataset_dir).values()),
                      sum(rlds.split_sizes(train_dir).values()), int(rounds["total_episodes"]),
                      int(rounds["total_env_steps"]), evaluation)


def merge_results(rows: Sequence[Row], new: Row) -> list[Row]:
    """Rows plus `new`, which replaces a row of the same branch (a retried step stays idempotent)."""
    def key(r: Row) -> tuple[str, float, int]:
        return r["domain"], float(r["data_fraction"]), int(r["seed"])

    return sorted([r for r in rows if key(r) != key(new)] + [dict(new)], key=key)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


TABLE_HEADER = ("domain", "fraction", "seed", "SFT episodes", "SI episodes", "SI env steps", "total episodes",
                "SFT success", "SI success", "SFT length/optimal", "SI length/optimal",
                "detector precision", "detector recall")


def table_cells(rows: Sequence[Row]) -> list[list[str]]:
    """One list of formatted cells per row, in `TABLE_HEADER` order."""
    return [[r["domain"], f"{r['data_fraction']:g}", str(r["seed"]), str(r["sft_episodes"]),
             str(r["self_improvement_episodes"]), _fmt(r.get("self_improvement_env_steps")),  # absent in older rows
             str(r["sft_episodes"] + r["self_improvement_episodes"]),
             _fmt(r["sft"]["success_rate"]), _fmt(r["self_improved"]["success_rate"]),
             _fmt(r["sft"]["optimal_length_ratio"]), _fmt(r["self_improved"]["optimal_length_ratio"]),
             _fmt(r["success_detector"]["precision"]), _fmt(r["success_detector"]["recall"])]
            for r in rows]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(rows)]
    return "\n".join(lines) + "\n"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def plot_success_vs_episodes(rows: Sequence[Row], path: str | Path, full_scale: bool = True,
                              title: str = "Success rate against episodes used") -> Path:
    """Figure 5: ground-truth success against episodes used, SFT and Self-Improved.

    SFT sits at the dataset episodes it trained on; Self-Improved at those plus its practice
    episodes, joined by an arrow per data fraction. Points are means over seeds (bars: std);
    faint dots are single seeds. `full_scale` draws success from 0 to 1; otherwise from 0 to just
    above the highest point (the table's rates are a few %).
    """
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for domain in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == domain]
        prefix = f"{domain}: " if len({r["domain"] for r in rows}) > 1 else ""
        points: dict[str, list[tuple[float, float, float, float]]] = {"sft": [], "self_improved": []}
        for fraction in sorted({r["data_fraction"] for r in mine}):
            group = [r for r in mine if r["data_fraction"] == fraction]
            for stage in points:
                xs = [r["sft_episodes"] + (r["self_improvement_episodes"] if stage == "self_improved" else 0)
                      for r in group]
                ys = [r[stage]["success_rate"] for r in group]
                ax.scatter(xs, ys, s=10, alpha=0.3, color="C0" if stage == "sft" else "C1")
                points[stage].append((*_mean_std(xs), *_mean_std(ys)))
        for stage, label, color in (("sft", "SFT (Stage 1)", "C0"),
                                    ("self_improved", "Self-Improved (Stage 2)", "C1")):
            x, _, y, yerr = zip(*points[stage], strict=True)
            ax.errorbar(x, y, yerr=yerr, fmt="-o", ms=4, capsize=3, color=color, label=prefix + label)
        for (x0, _, y0, _), (x1, _, y1, _) in zip(points["sft"], points["self_improved"], strict=True):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8})
    ax.set_xlabel("total episodes (dataset for SFT + Self-Improvement)")
    ax.set_ylabel("success rate (ground truth)")
    top = 1.03 if full_scale else ax.get_ylim()[1]
    ax.set_ylim(-0.03 * top, top)  # from 0, where points stay visible
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _img(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'


def _html(title: str, header: Sequence[str], cells: Sequence[Sequence[str]], pngs: Sequence[Path]) -> str:
    """A self-contained page: the artifact viewer shows it without fetching anything else."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    images = "".join(f"<p>{_img(p)}</p>" for p in pngs if p.is_file())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head>"
            f"<body><h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>{images}</body></html>\n")


def report_page(rows: Sequence[Row], plot: Path) -> str:
    return _html("Self-Improving EFM: results", TABLE_HEADER, table_cells(rows), [plot])


def evaluation_page(row: Row, trajectories: Path | None) -> str:
    """One branch: SFT against Self-Improved, with the trajectory plot when the domain has one."""
    header = ("policy", *POLICY_KEYS)
    cells = [[name, *(_fmt(row[key][k]) for k in POLICY_KEYS)]
             for name, key in (("SFT (Stage 1)", "sft"), ("Self-Improved (Stage 2)", "self_improved"))]
    cells.append(["success detector", *(f"{k} {_fmt(row['success_detector'][k])}" for k in DETECTOR_KEYS), ""])
    title = f"{row['domain']}: fraction {row['data_fraction']:g}, seed {row['seed']}"
    return _html(title, header, cells, [trajectories] if trajectories is not None else [])


def write_report(rows: Sequence[Row], out_dir: str | Path) -> dict[str, Any]:
    """out_dir/summary.json ({"results": rows}), report.md and the Figure 5 plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"results": list(rows)}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))
    (out / TABLE).write_text(markdown_table(rows))
    plot_success_vs_episodes(rows, out / PLOT)
    return summary


def update_report(result_path: str | Path, out_dir: str | Path, page_path: str | Path,
                  previous_dir: str | Path | None = None) -> dict[str, Any]:
    """The previous report (if any) plus one branch's result row, written to out_dir and a page."""
    rows = json.loads((Path(previous_dir) / SUMMARY).read_text())["results"] if previous_dir else []
    rows = merge_results(rows, json.loads(Path(result_path).read_text()))
    summary = write_report(rows, out_dir)
    Path(page_path).write_text(report_page(rows, Path(out_dir) / PLOT))
    return summary
