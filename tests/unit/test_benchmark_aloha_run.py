"""benchmarks/aloha_run.py: --out and the results file answer only for the dataset they were
measured on; a fraction names one branch however it is written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aloha_run as bench
import pytest
from resumable import merge

from efm.cli import load_config


class Started(Exception):
    """The benchmark got past its checks to its first branch."""


def run(monkeypatch: pytest.MonkeyPatch, out: Path, dataset: Path) -> None:
    def branch(*_: Any) -> dict[str, Any]:
        raise Started

    monkeypatch.setattr(bench, "branch", branch)
    monkeypatch.setattr(bench, "rlds", SimpleNamespace(read_metadata=lambda _: {}))
    monkeypatch.setattr(sys, "argv", ["aloha_run.py", "--out", str(out), "--results", str(out / "r.json"),
                                      "--dataset", str(dataset)])
    bench.main()


def test_an_out_made_from_another_dataset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, a, b = tmp_path / "out", tmp_path / "a" / "aloha-data", tmp_path / "b" / "aloha-data"
    with pytest.raises(Started):
        run(monkeypatch, out, a)
    with pytest.raises(Started):  # the same dataset resumes
        run(monkeypatch, out, a)
    with pytest.raises(SystemExit, match=re.escape(f'dataset: "{a}" (this invocation: "{b}")')):
        run(monkeypatch, out, b)  # was: b's rows from a's subsamples


def test_results_of_another_dataset_are_not_merged(tmp_path: Path) -> None:
    cfg = load_config(bench.DOMAIN)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"config": json.loads(cfg.to_json()), "dataset": {"source": "aloha-data"},
                                "results": [{"seed": 0, "data_fraction": 0.3333}]}))
    assert bench.previous_rows(path, cfg, "aloha-data") == [{"seed": 0, "data_fraction": 0.3333}]
    assert bench.previous_rows(path, cfg, "other-data") == []
    assert bench.previous_rows(path, cfg, None) == []  # generated from the config


def test_a_third_and_0_3333_are_one_branch() -> None:
    old, new = {"seed": 0, "data_fraction": 0.3333, "v": 1}, {"seed": 0, "data_fraction": 1 / 3, "v": 2}
    assert merge([old], [new], bench.key) == [new]
    assert bench.normalised(1 / 3) == bench.normalised(0.3333) == 0.3333


@pytest.mark.parametrize("name", ["aloha-insertion.json", "aloha-insertion-mlp-small.json"])
def test_the_committed_rows_are_the_default_fractions_branches(name: str) -> None:
    """A rerun with the default fractions (1/3 and 2/3 as 0.3333 and 0.6667) replaces them."""
    rows = json.loads((Path(bench.__file__).parent / "results" / name).read_text())["results"]
    rerun = {bench.key({"seed": r["seed"], "data_fraction": f}) for r in rows for f in (1 / 3, 2 / 3)}
    assert {bench.key(r) for r in rows} <= rerun
