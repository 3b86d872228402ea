"""Resumable benchmark parts: a part's result is written when it completes, and a rerun reads it
instead of running the part again (long CPU benchmarks span sessions); `merge` keeps a results
file's rows of branches measured in earlier invocations, when `recipe` says they were measured
the same way; `made_with` refuses a part folder made with other settings than this invocation's;
`code_version` names the code that measured a part (a recipe does not change when the simulation
does), and a part read back from other code is warned about."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from efm.cli import load_config
from efm.config import RunConfig, default_config

DONE = "part.json"  # a part's result, written when it completed
SETTINGS = "made_with.json"  # what a folder's parts were made with, written before the first ran
REPO = Path(__file__).resolve().parents[1]


def part(directory: Path, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The part's result, with its seconds and the commit that ran it: read when it completed
    before (warned about when by other code), else run (resuming what it can)."""
    done = directory / DONE
    if done.exists():
        result = json.loads(done.read_text())
        warn_other_code(str(directory), result.get("commit"), code_version())
        return result
    t0, commit = time.time(), code_version()  # the code the part starts with
    result = {**run(directory), "seconds": time.time() - t0, "commit": commit}
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


def warn_other_code(what: str, commit: str | None, current: str) -> bool:
    """Prints a warning when `what` was measured at another commit than `current`, naming both:
    not an error, as results may mix commits (each part records its own); False when the same
    or not recorded."""
    if commit is None or commit == current:
        return False
    print(f"warning: {what} was measured at {commit}, this code is {current}", flush=True)
    return True


def jsonable(value: Any) -> Any:
    """`value` as JSON reads it back (tuples as lists), so recorded and current settings compare."""
    return json.loads(json.dumps(value, default=float))


def config_changes(domain: str, cfg: RunConfig) -> dict[str, Any]:
    """The config's fields (dotted) that differ from the domain's defaults: what a command asked
    for, unchanged by code that adds a field (a default changed is `code_version`'s to tell)."""
    default, mine = jsonable(default_config(domain).flat()), jsonable(cfg.flat())
    return {k: v for k, v in mine.items() if default.get(k) != v}


def flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (an empty object sets nothing)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: recorded (this invocation: current)' for every setting that differs."""
    old, new = flat(recorded), flat(current)

    def shown(values: dict[str, Any], k: str) -> str:
        return json.dumps(values[k]) if k in values else "unset"

    return [f"{k}: {shown(old, k)} (this invocation: {shown(new, k)})"
            for k in sorted(old.keys() | new.keys()) if (k in old, old.get(k)) != (k in new, new.get(k))]


def made_with(directory: Path, settings: dict[str, Any]) -> None:
    """Records the settings the parts under `directory` are made with, or refuses (SystemExit,
    naming both) a folder made with others: its parts would be read back as this invocation's.
    A folder from before settings were recorded is taken as made with these (said so)."""
    path, current = directory / SETTINGS, jsonable(settings)
    if path.exists():
        differ = differences(json.loads(path.read_text()), current)
        if differ:
            raise SystemExit(f"{directory} was made with other settings: {'; '.join(differ)}. "
                             "Use another output folder, or the settings it was made with")
        return
    if directory.is_dir() and any(directory.iterdir()):
        print(f"{directory}: no record of its settings (made before they were recorded): taken as made with "
              f"{json.dumps(current)}", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=1) + "\n")
