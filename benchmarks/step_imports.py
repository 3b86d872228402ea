"""What each pipeline step pays for imports: a fresh interpreter importing kfp (the task
launcher), what the step's component body imports, and what the library stage it calls imports
when it runs (the imports inside the `efm.stages` functions it reaches), plus mlflow when it
tracks (`--tracking`).

The imports are read from `components/stages.py` and `efm/stages.py` (import statements at
the top of function bodies), run in a new process per step, repeated, and the fastest wall
time kept (the machine may be shared). Also lists the heavy libraries each step loads.

    .venv/bin/python benchmarks/step_imports.py --tracking --results benchmarks/results/step_imports_tracking.json
    .venv/bin/python benchmarks/step_imports.py --results benchmarks/results/step_imports_no_tracking.json

(`step_imports_before.json`: this script run in a checkout of commit 34cfc99 with its own venv.)
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components" / "stages.py"
LIBRARY = ROOT / "efm" / "stages.py"
TRACKING = "import mlflow.tracking"  # what efm.tracking imports once a store is in use
HEAVY = ("tensorflow", "jax", "flax", "orbax.checkpoint", "optax", "reverb", "tensorflow_datasets", "mlflow",
         "pandas", "matplotlib", "pybullet", "ray")


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def _imports(fn: ast.FunctionDef) -> list[ast.Import | ast.ImportFrom]:
    return [s for s in fn.body if isinstance(s, ast.Import | ast.ImportFrom)]


def _reached(name: str, library: dict[str, ast.FunctionDef], seen: set[str]) -> list[str]:
    """Import lines of library function `name` and of the library functions it calls."""
    if name in seen or name not in library:
        return []
    seen.add(name)
    lines = [ast.unparse(s) for s in _imports(library[name])]
    for node in ast.walk(library[name]):
        if isinstance(node, ast.Name):
            lines += _reached(node.id, library, seen)
    return lines


def step_imports(components: Path = COMPONENTS, library_path: Path = LIBRARY) -> dict[str, str]:
    """Component name -> the imports it runs (its body's, then its library stages'), as code."""
    library = _functions(library_path)
    steps = {}
    for name, fn in _functions(components).items():
        lines = [ast.unparse(s) for s in _imports(fn)]
        seen: set[str] = set()
        for stmt in _imports(fn):
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "efm.stages":
                for alias in stmt.names:
                    lines += _reached(alias.name, library, seen)
        steps[name] = "\n".join(dict.fromkeys(lines))
    return steps


def time_imports(code: str) -> tuple[float, list[str]]:
    probe = (f"import kfp.dsl\n{code}\nimport sys, json\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    return time.perf_counter() - t0, json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", help="write the figures to this JSON file")
    p.add_argument("--label", default="", help="e.g. before/after, stored with the figures")
    p.add_argument("--tracking", action="store_true", help="steps also import mlflow (tracking on)")
    args = p.parse_args(argv)
    steps = {"(interpreter + kfp only)": ""}
    for name, code in step_imports().items():
        if args.tracking:
            code += f"\n{TRACKING}"
        steps[name] = code
    rows = {}
    for name, code in steps.items():
        times, heavy = [], []
        for _ in range(args.repeats):
            seconds, heavy = time_imports(code)
            times.append(seconds)
        rows[name] = {"seconds_min": round(min(times), 2), "seconds_all": [round(t, 2) for t in times],
                      "heavy_modules": heavy}
        print(f"{name:28s} {min(times):6.2f} s  {' '.join(heavy)}", flush=True)
    if args.results:
        result = {"label": args.label, "tracking": args.tracking, "repeats": args.repeats, "cpus": len(__import__("os").sched_getaffinity(0)),
                  "python": platform.python_version(), "steps": rows,
                  "note": "fresh process per measurement; minimum of the repeats; machine shared with other jobs"}
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
