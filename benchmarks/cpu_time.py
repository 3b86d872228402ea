"""Wall time and CPU seconds of a command's whole process tree, Ray's workers included.

On a shared machine wall time says more about the other jobs than about the command; the CPU
seconds its processes used do not depend on them. Every `--every` seconds each descendant's
user + system time is read from /proc (a process is found through its parent chain while that
chain lives; Ray's workers are children of its raylet, itself a child of the command); each
process counts with the last value seen, so a short-lived one may be missed by up to `--every`.

  .venv/bin/python benchmarks/cpu_time.py -- .venv/bin/python -m pytest tests/integration/test_self_improve.py -q
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system seconds) of every readable process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def descendants(root: int, table: dict[int, tuple[int, float]], known: set[int]) -> set[int]:
    """`root`'s descendants, plus processes already known to be (reparented ones keep counting)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root, *(p for p in known if p in table)]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo += children.get(pid, [])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None, help="append the figures to this JSON-lines file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.monotonic()
    load = os.getloadavg()
    child = subprocess.Popen(command)
    seen: dict[int, float] = {}
    while child.poll() is None:
        table = processes()
        for pid in descendants(child.pid, table, set(seen)):
            if pid in table:
                seen[pid] = max(seen.get(pid, 0.0), table[pid][1])
        time.sleep(args.every)
    wall = time.monotonic() - t0
    result = {"command": " ".join(command), "rc": child.returncode, "wall_s": round(wall, 1),
              "cpu_s": round(sum(seen.values()), 1), "processes": len(seen),
              "load_average_before": load, "load_average_after": os.getloadavg()}
    print(json.dumps(result), file=sys.stderr)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
