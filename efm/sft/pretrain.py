"""`efm pretrain`: the towers learn to see the table before Stage 1 (DESIGN.md's plan).

The paper fine-tunes PaLI, which arrives knowing what a red moon looks like and where it is;
a model trained from scratch on robot data must learn that from behavioural cloning's weak
signal, and on two CPU cores does not within Stage 1's budget (benchmarks/table_probes.py).
Pretraining trains the whole model on `locate` questions about rendered boards (no actions),
with Stage 1's trainer, and exports its params as an Orbax params checkpoint; Stage 1 starts
from it with `model.init=pretrain, model.init_path=OUT` (in the pipeline, the pretrain step's output).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from efm import checkpoints
from efm.config import RunConfig, check_pretrainable
from efm.data.pretrain import EFFECTOR, TableQuestions
from efm.models.efm import EFMFunctions, make_functions
from efm.models.prefix_lm import split_inputs
from efm.models.tokenizers import make_vocabulary
from efm.models.weights import PRETRAINED_PARAMS
from efm.sft.trainer import Samples, restore_params, train
from efm.types import Logger

SUMMARY = "pretrain.json"
LOCALIZATION = "localization.json"  # localization_errors at each checkpoint


def localization_errors(fns: EFMFunctions, params: Any, data: TableQuestions) -> dict[str, float]:
    """Distance (cm) between the greedy answer and the true position over the validation
    boards: mean for the effector and for the blocks, the blocks' median (a block mistaken for
    another is far off) and the share of blocks found within 3 cm."""
    vocab = fns.vocab
    assert vocab.state is not None
    answers = data.validation_answers()
    most = max(len(objects) for objects, _ in answers)
    predicted = []
    for batch in data.validation():
        inputs, _ = split_inputs(batch)
        tokens = np.asarray(fns.locate(params, inputs, most))
        predicted.extend(vocab.position_from_tokens(tokens.reshape(len(tokens), most, vocab.state.dims)))
    error = np.concatenate([100 * np.linalg.norm(p[:len(xy)] - xy, axis=-1)
                            for p, (_, xy) in zip(predicted, answers, strict=True)])
    effector = np.array([name == EFFECTOR for objects, _ in answers for name in objects])
    return {"effector_cm": float(error[effector].mean()), "blocks_cm": float(error[~effector].mean()),
            "blocks_median_cm": float(np.median(error[~effector])),
            "blocks_within_3cm": float((error[~effector] < 3.0).mean())}


def run_pretrain(cfg: RunConfig, out_dir: str | Path, log: Logger | None = None, progress: bool = True,
                 on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Pretrains (or resumes) in `out_dir`, then writes OUT/params and OUT/pretrain.json.
    `on_checkpoint(step)` runs after each checkpoint is saved and measured."""
    check_pretrainable(cfg)
    out = Path(out_dir)
    model = cfg.model
    if model.init == "pretrain":  # what Stage 1 will start from is made here, from scratch
        model = dataclasses.replace(model, init="scratch", init_path="")
    cfg = cfg.replace(sft=cfg.pretrain.as_sft(), model=model)
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    data = TableQuestions(cfg, fns.vocab)
    curve_path = out / LOCALIZATION
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []

    def measure(step: int) -> None:  # at each checkpoint; kept across resumptions
        curve[:] = [c for c in curve if c["step"] < step]
        curve.append({"step": step, **localization_errors(fns, restore_params(out, step), data)})
        curve_path.write_text(json.dumps(curve, indent=1))
        if on_checkpoint is not None:
            on_checkpoint(step)

    try:
        result = train(cfg, fns, Samples(data.training, data.validation), out, log=log, progress=progress,
                       on_checkpoint=measure, desc="pretrain")
        checkpoints.save_params(out / PRETRAINED_PARAMS, restore_params(out, result.final_step))
    finally:
        data.close()
    summary = {"final_step": result.final_step, "history": result.history,
               "localization": curve[-1] if curve else {}, "localization_curve": curve,
               "params": str((out / PRETRAINED_PARAMS).absolute()), "config": json.loads(cfg.to_json())}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary
