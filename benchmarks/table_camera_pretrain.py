"""How well the table's pretraining locates blocks and the effector, per camera.

Reads the localization curves (held-out boards, `efm pretrain`'s pretrain.json) of pretrainings
that differ in `env.tabletop.camera` only, checks that they do, and writes their curves side by
side: a JSON of the figures and a plot. The shipped pretrainings are made by

    .venv/bin/efm pretrain --domain tabletop --out OUT            (oblique, the default)
    .venv/bin/efm pretrain --domain tabletop --out OUT --config \
        '{"env": {"tabletop": {"camera": "top_down"}, "bananatable": {"camera": "top_down"}}}'

    .venv/bin/python benchmarks/table_camera_pretrain.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
DEFAULT_RUNS = [HERE / "checkpoints" / "table-pretrain", HERE / "checkpoints" / "table-pretrain-topdown"]
METRICS = {"blocks_cm": "blocks: mean error (cm)", "blocks_median_cm": "blocks: median error (cm)",
           "blocks_within_3cm": "blocks within 3 cm (share)", "effector_cm": "effector: mean error (cm)"}


def camera(config: dict) -> str:
    return config["env"]["tabletop"].get("camera") or "oblique"  # older configs predate the option


def recipe(config: dict) -> dict:
    """What must match for the curves to compare cameras alone."""
    env = {k: v for k, v in config["env"]["tabletop"].items() if k != "camera"}
    return {"pretrain": config["pretrain"], "variant": config["model"]["variant"],
            "tokenizer": config["tokenizer"], "tabletop": env}


def differences(a: dict, b: dict, where: str = "") -> list[str]:
    """Where two recipes differ; a key one of them lacks is an option added after it was made
    (at its default) and does not count."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() & b.keys() for d in differences(a[k], b[k], f"{where}.{k}")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def load(run: Path) -> dict:
    path = run / "pretrain.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass directories written by `efm pretrain`")
    return json.loads(path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", default=DEFAULT_RUNS)
    p.add_argument("--out", type=Path, default=HERE / "results" / "table_camera_pretrain")
    args = p.parse_args()
    runs = {str(r): load(r) for r in args.runs}
    first = next(iter(runs.values()))["config"]
    for name, run in runs.items():
        if diff := differences(recipe(run["config"]), recipe(first)):
            raise SystemExit(f"{name} was pretrained with another recipe than {args.runs[0]} ({'; '.join(diff)}): "
                             "not a camera comparison")
    result = {camera(r["config"]): {"run": Path(name).name, "final": r["localization"], "curve": r["localization_curve"]}
              for name, r in runs.items()}

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, (key, title) in zip(axes, METRICS.items(), strict=True):
        for cam, r in result.items():
            ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]], marker=".", label=cam)
        ax.set(title=title, xlabel="pretraining step")
        if key.endswith("_cm"):
            ax.set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=100)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(f"{'camera':<10} {'step':>5} " + " ".join(f"{k:>18}" for k in METRICS))
    for cam, r in result.items():
        for c in r["curve"]:
            if c["step"] % 1000 == 0:
                print(f"{cam:<10} {c['step']:>5} " + " ".join(f"{c[k]:>18.3f}" for k in METRICS))


if __name__ == "__main__":
    main()
