"""Resumable benchmark parts: a part's result is written when it completes, and a rerun reads it
instead of running the part again (long CPU benchmarks span sessions); `merge` keeps a results
file's rows of branches measured in earlier invocations, when `recipe` says they were measured
the same way; `code_version` names the code that measured a part (a recipe does not change when
the simulation does)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from efm.cli import load_config

DONE = "part.json"  # a part's result, written when it completed
REPO = Path(__file__).resolve().parents[1]


def part(directory: Path, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The part's result: read when it completed before, else run (resuming what it can)."""
    done = directory / DONE
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    result = {**run(directory), "seconds": time.time() - t0}
    directory.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1, default=float))
    print(f"{directory}: {result['seconds']:.0f} s", flush=True)
    return result


def merge(previous: list[dict], new: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """previous rows with new ones replacing those of the same key, in key order."""
    fresh = {key(r) for r in new}
    return sorted([r for r in previous if key(r) not in fresh] + new, key=key)


def recipe(domain: str, config: dict[str, Any], drop: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """A recorded config as today's defaults complete it (fields added since it was recorded take
    their defaults), less data.fractions and the `drop` fields (section, field). A fraction's
    episodes are a prefix of one seeded permutation (`subsample.nested_fractions`), the same
    whichever other fractions are run, so invocations may run different branches."""
    full = json.loads(load_config(domain, json.dumps(config)).to_json())
    dropped = {("data", "fractions"), *drop}
    return {**full, **{section: {k: v for k, v in full[section].items() if (section, k) not in dropped}
                       for section in {s for s, _ in dropped}}}


def code_version() -> str:
    """The checkout's commit, "-dirty" if it has uncommitted changes ("unknown" outside git)."""
    done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"
