"""benchmarks/steps_to_go_bins.py: the parts under --out answer only for the fraction, seed and
config they were made with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import steps_to_go_bins as bench


class Started(Exception):
    """The benchmark got past its checks to its first part."""


def run(monkeypatch: pytest.MonkeyPatch, out: Path, *args: str) -> None:
    def dataset_stage(*_: Any, **__: Any) -> dict[str, Any]:
        raise Started

    monkeypatch.setattr(bench, "dataset_stage", dataset_stage)
    monkeypatch.setattr(sys, "argv", ["steps_to_go_bins.py", "--out", str(out), "--results", str(out / "r.json"),
                                      *args])
    bench.main()


def test_an_out_made_with_another_seed_or_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with pytest.raises(Started):
        run(monkeypatch, out, "--seed", "0")
    with pytest.raises(Started):  # the same settings resume
        run(monkeypatch, out, "--seed", "0")
    with pytest.raises(SystemExit, match=r"seed: 0 \(this invocation: 1\)"):  # was: seed 0's training reused
        run(monkeypatch, out, "--seed", "1")
    with pytest.raises(SystemExit, match=r"fraction: 0\.1 \(this invocation: 0\.2\)"):
        run(monkeypatch, out, "--fraction", "0.2")
    with pytest.raises(SystemExit, match=r"config\.sft\.num_steps: unset \(this invocation: 7\)"):
        run(monkeypatch, out, "--config", '{"sft": {"num_steps": 7}}')
