"""The training components' bodies, shared by `sft` and `sft_pretrained` (kfp ships a
component's function source alone, so what two components share lives in the package)."""

from __future__ import annotations

import dataclasses
from typing import Any

from efm.components.artifacts import mirrored
from efm.components.tracking import branch_label, stage_run
from efm.config import RunConfig
from efm.stages import seeded, sft_stage


def run_sft_task(config_json: str, train: Any, validation: Any, fraction: float, seed: int, tracking_uri: str,
                 model: Any, metrics: Any, kfp_run: str, kfp_task: str, pretrained: Any = None) -> None:
    """Stage 1 into the `model` artifact, from `pretrained` (an `efm pretrain` output artifact,
    for model.init="pretrain") or as the config says. Checkpoints are copied to the artifact as
    training goes, so a restarted task resumes from the last one and ends with the same result."""
    cfg = seeded(RunConfig.from_json(config_json), seed)
    inputs = [train, validation]
    if pretrained is not None:
        if cfg.model.init != "pretrain":
            raise ValueError(f"a pretrained input needs model.init='pretrain', not {cfg.model.init!r}")
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, init_path=pretrained.path))
        inputs.append(pretrained)
    with stage_run("sft", cfg, tracking_uri, "", kfp_run, kfp_task, inputs, [model, metrics], fraction, seed) as run:
        label = branch_label(fraction, seed)
        run.log_dataset(train.path, train.uri, f"train-{label}", "training")
        run.log_dataset(validation.path, validation.uri, f"validation-s{seed}", "validation")
        with mirrored(model.path) as (work, sync):
            out = sft_stage(cfg, train.path, validation.path, work, log=run, on_checkpoint=sync)
        run.log_artifacts(model.path, "*.png")
    for k, v in out["history"][-1].items():
        if k.startswith("val/"):
            metrics.log_metric(k.replace("/", "."), float(v))
    metrics.log_metric("final_step", float(out["final_step"]))
    model.metadata.update({"final_step": out["final_step"], "train_episodes": out["train_episodes"]})
