"""A restarted SFT task (a Vertex retry after a TPU preemption) resumes from the checkpoint the
killed attempt synced to its artifact, and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pytest
from kfp.dsl import Dataset, Metrics, Model

from efm import checkpoints
from efm.components import stages
from efm.components.artifacts import SYNC_MANIFEST
from efm.config import RunConfig, debug_config
from efm.stages import dataset_stage, subsample_stage

SEED = 3
# Long enough that the process cannot finish between the first synced checkpoint and the kill.
STEPS, EVERY = 1500, 100


def _config() -> RunConfig:
    cfg = debug_config()
    return cfg.replace(sft=replace(cfg.sft, num_steps=STEPS, eval_every=EVERY, checkpoint_every=EVERY))


def _sft_kwargs(cfg: RunConfig, data: dict[str, Path], model_dir: Path) -> dict:
    return {"config_json": cfg.to_json(), "train": Dataset(uri=str(data["train"])),
            "validation": Dataset(uri=str(data["validation"])), "fraction": 0.5, "seed": SEED,
            "tracking_uri": "", "model": Model(uri=str(model_dir)),
            "metrics": Metrics(uri=str(model_dir.parent / "metrics"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    cfg = _config()
    dataset_stage(cfg, root / "dataset", progress=False)
    manifest = subsample_stage(cfg, root / "dataset", root / "sub", SEED)
    return {"train": root / "sub" / manifest["fractions"]["0.5"]["path"],
            "validation": root / "sub" / manifest["validation"]["path"]}


def _synced_steps(model_dir: Path) -> set[int]:
    manifest = model_dir / SYNC_MANIFEST
    if not manifest.is_file():
        return set()
    try:
        files = json.loads(manifest.read_text())
    except json.JSONDecodeError:  # caught mid-write
        return set()
    return {int(f.split("/")[1]) for f in files if f.startswith("checkpoints/") and f.split("/")[1].isdigit()}


def test_killed_sft_task_resumes_and_matches_an_uninterrupted_run(data: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config()
    monkeypatch.chdir(tmp_path)

    # Attempt 1: the task in its own process, SIGKILLed once a checkpoint reached the artifact.
    retried = tmp_path / "retried" / "model"
    retried.parent.mkdir()
    code = ("import sys, pickle; from efm.components import stages; "
            "stages.sft.python_func(**pickle.loads(sys.stdin.buffer.read()))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    proc.stdin.write(pickle.dumps(_sft_kwargs(cfg, data, retried)))
    proc.stdin.close()
    deadline = time.time() + 300
    while not _synced_steps(retried) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the first attempt finished before it could be killed"
    synced = _synced_steps(retried)
    assert synced and max(synced) < STEPS

    # Attempt 2, same artifact path: resumes after the synced checkpoint, never redoing it.
    saved: list[int] = []
    save_step = checkpoints.save_step
    monkeypatch.setattr(checkpoints, "save_step",
                        lambda manager, step, state: (saved.append(step), save_step(manager, step, state)))
    stages.sft.python_func(**_sft_kwargs(cfg, data, retried))
    assert saved and min(saved) > max(synced)

    # The uninterrupted run: same history, same final parameters.
    clean = tmp_path / "clean" / "model"
    clean.parent.mkdir()
    stages.sft.python_func(**_sft_kwargs(cfg, data, clean))
    assert json.loads((retried / "history.json").read_text()) == json.loads((clean / "history.json").read_text())
    final = [checkpoints.restore_step(checkpoints.training_manager(d / "checkpoints"), STEPS)["params"]
             for d in (retried, clean)]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, *final))
