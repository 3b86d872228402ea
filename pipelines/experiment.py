"""The experiment as a KFP pipeline: dataset, the data validation gate (validate), with
model.init="pretrain" one pretrain step, then per seed and data fraction a branch subsample ->
sft -> select -> self_improve -> evaluate, then the report. The data and Stage-1 steps take
the config as they read it (stage-configs, `efm.config.stage_view`), so that a run that changes
anything else reuses them from the cache.

kfp 2.13 runs neither dsl.ParallelFor nor dsl.If locally, so branches are unrolled with plain
Python loops when the pipeline is defined: `make_experiment_pipeline` takes the fractions and
seeds and returns a pipeline whose parameters are the config (JSON) and the MLflow tracking
URI ("" for none): its first step opens the parent MLflow run that every stage's run hangs under
(found by the KFP run name, so that cached stages stay cached with tracking on). The report is a chain
of small steps, one per branch, each adding that branch's result row to the previous step's
summary: locally kfp 2.13 can neither collect outputs of several tasks into one input
(dsl.Collected needs ParallelFor) nor leave an optional artifact input unset, while a chain of
plain required inputs runs the same under kfp.local and on Vertex AI, for any number of
branches. The last step's summary is the pipeline's output.

    python -m efm.pipelines.experiment --fractions 0.1 0.2 0.8 --seeds 0 1 2 --out pipeline.yaml

Two targets share the graph. "local" (the default) is what kfp.local runs: every step a
lightweight component. "vertex" makes SFT (and pretraining) a Vertex AI custom job on a TPU VM (gcpc's
`create_custom_training_job_from_component`; kfp.local cannot run that launcher) and puts CPU
and memory limits, and optionally an accelerator for Self-Improvement, on the other steps; the
machines come from `efm.pipelines.vertex.VertexResources`. On Vertex the graph runs inside an
exit handler (kfp.local runs none) whose exit step fails the MLflow runs of a failed run.

No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.
"""

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kfp import compiler, dsl

from efm.components import stages
from efm.components.tracking import branch_label
from efm.config import RunConfig
from efm.envs import simulation_version
from efm.pipelines.vertex import VertexResources

Target = Literal["local", "vertex"]
TARGETS: tuple[str, ...] = ("local", "vertex")

PIPELINE_NAME = "efm-experiment"

# Retries cover preemptions and transient storage errors; training stages retry once since a
# deterministic failure (bad config, NaN loss) would only fail again at full cost; so does
# the data gate (validate), whose anomalies are deterministic.
RETRIES: dict[str, int] = {"tracking": 2, "config": 2, "dataset": 2, "validate": 1, "subsample": 2, "pretrain": 1, "sft": 1,
                           "select": 2, "self_improve": 1, "evaluate": 2, "report": 2}
# Every stage is a deterministic function of its inputs and the config (seeds included), so a
# cached result is the result. No stage task takes anything that changes from one pipeline run
# to the next (its MLflow run finds the parent by the KFP run name, see
# efm.components.tracking), so a new run with tracking on reuses them: an expensive dataset step
# is generated (and validated) once. start-tracking (opens the parent run) and the report steps
# (finish it with the lineage, reused runs included) run in every pipeline run. Locally the
# cache is efm.pipelines.cache (kfp 2.13's local runner has none).
CACHING: dict[str, bool] = {"tracking": False, "config": True, "dataset": True, "validate": True, "subsample": True,
                            "pretrain": True, "sft": True, "select": True, "self_improve": True, "evaluate": True,
                            "report": False}


@dataclass(frozen=True)
class GraphShape:
    """What of the config changes the pipeline's graph (the config itself is a run parameter):
    Self-Improvement in each of `transfer_domains` beside the data's domain, and a pretrain
    step that every branch's SFT starts from (model.init="pretrain" without an init_path; with
    one, every branch starts from that earlier `efm pretrain` output instead)."""

    transfer_domains: tuple[str, ...] = ()
    pretrain: bool = False

    @classmethod
    def of(cls, cfg: RunConfig) -> "GraphShape":
        return cls(tuple(cfg.self_improve.transfer_domains), cfg.model.init == "pretrain" and not cfg.model.init_path)


def _check(fractions: Sequence[float], seeds: Sequence[int]) -> tuple[list[float], list[int]]:
    fractions, seeds = [float(f) for f in fractions], [int(s) for s in seeds]
    if not fractions or not seeds:
        raise ValueError(f"need at least one fraction and one seed (got {fractions}, {seeds})")
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1]: {fractions}")
    if len({f"{f:g}" for f in fractions}) != len(fractions) or len(set(seeds)) != len(seeds):
        raise ValueError(f"fractions and seeds must be unique: {fractions}, {seeds}")
    return fractions, seeds


def _configure(task: dsl.PipelineTask, stage: str, display_name: str) -> dsl.PipelineTask:
    return (task.set_display_name(display_name)
            .set_retry(num_retries=RETRIES[stage], backoff_duration="60s", backoff_factor=2.0)
            .set_caching_options(enable_caching=CACHING[stage]))


def _vertex_job(component: Any, display_name: str, resources: VertexResources,
                ) -> tuple[Callable[..., dsl.PipelineTask], dict[str, Any]]:
    """A training component (sft, pretrain) as a Vertex custom job on
    `resources.sft_machine_type`, and the extra task arguments it needs.

    A single-host TPU VM is just a machine type (ct5lp-hightpu-4t: 4 v5e chips), so the gcpc
    util's worker pool spec (the default of the op's `worker_pool_specs` input) is enough. The
    util has no topology argument, so for a multi-host slice its spec is copied with
    `machine_spec.tpu_topology` added and passed to each sft task as `worker_pool_specs`.
    """
    from google_cloud_pipeline_components.v1.custom_job import (
        create_custom_training_job_from_component,
    )

    op = create_custom_training_job_from_component(
        component, display_name=display_name, machine_type=resources.sft_machine_type,
        accelerator_type=resources.sft_accelerator_type, accelerator_count=resources.sft_accelerator_count,
        boot_disk_size_gb=resources.sft_boot_disk_gb, service_account=resources.sft_service_account)
    if not resources.sft_tpu_topology:
        return op, {}
    pools = copy.deepcopy(op.component_spec.inputs["worker_pool_specs"].default)
    pools[0]["machine_spec"] = resources.sft_machine_spec
    return op, {"worker_pool_specs": pools}


def _on_cpu(task: dsl.PipelineTask, resources: VertexResources | None) -> dsl.PipelineTask:
    """Vertex picks a CPU machine for a step from its limits; the local target sets none."""
    if resources is None:
        return task
    return task.set_cpu_limit(resources.cpu_limit).set_memory_limit(resources.memory_limit)


def make_experiment_pipeline(fractions: Sequence[float], seeds: Sequence[int],
                             name: str = PIPELINE_NAME, target: Target = "local",
                             resources: VertexResources | None = None,
                             shape: GraphShape = GraphShape()) -> Callable[..., Any]:
    """A pipeline function with one branch per (seed, fraction); its parameter is `config_json`
    (a `RunConfig.to_json()`), whose own data.fractions the branches do not use (the parent
    MLflow run logs theirs). `shape`
    (`GraphShape.of(config)`): each branch also self-improves in its transfer domains from its
    selected checkpoints, and with `pretrain` one pretrain step feeds every branch's SFT.

    target "vertex" runs SFT as a TPU custom job and sizes the other steps by `resources`
    (default `VertexResources()`); "local" uses plain components that kfp.local can run.
    """
    fractions, seeds = _check(fractions, seeds)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "local" and resources is not None:
        raise ValueError("resources only apply to target 'vertex'")
    sft_component = stages.sft_pretrained if shape.pretrain else stages.sft
    sft_op: Callable[..., dsl.PipelineTask] = sft_component
    pretrain_op: Callable[..., dsl.PipelineTask] = stages.pretrain
    sft_args: dict[str, Any] = {}
    pretrain_args: dict[str, Any] = {}
    if target == "vertex":
        resources = resources or VertexResources()
        sft_op, sft_args = _vertex_job(sft_component, "efm-sft", resources)
        pretrain_op, pretrain_args = _vertex_job(stages.pretrain, "efm-pretrain", resources)

    # The steps that first run the simulation take its code's digest: the cache keys on inputs,
    # not on library code, and a change of physics must not reuse data made with the old one.
    simulation = simulation_version()

    def graph(config_json: str, tracking_uri: str) -> Any:
        """Every task; returns the final report's summary."""
        start = _on_cpu(_configure(stages.start_tracking(
            config_json=config_json, tracking_uri=tracking_uri,
            branches=" ".join(branch_label(f, s) for s in seeds for f in fractions),
            fractions=" ".join(str(f) for f in fractions)), "tracking", "start-tracking"),
            resources)
        track = {"tracking_uri": tracking_uri}
        report_track = {**track, "parent_run_id": start.output}  # reports run every time: they may take it
        # The data and Stage-1 steps take the config as they read it (cached on the whole config:
        # a rerun with other practice settings gets the same views, and so reuses those steps).
        views = _on_cpu(_configure(stages.stage_configs(config_json=config_json), "config", "stage-configs"),
                        resources)
        # The parent run exists before any stage's run looks for it.
        data = _on_cpu(_configure(stages.dataset(config_json=views.outputs["data"], simulation=simulation,
                                                 **track).after(start),
                                  "dataset", "dataset"), resources)
        # The data gate: every branch's subsample (hence SFT) waits for it; it also checks the
        # train/validation skew of the branches, drawn as subsample will draw them.
        gate = _on_cpu(_configure(stages.validate(
            config_json=views.outputs["validate"], episodes=data.outputs["episodes"],
            fractions=" ".join(f"{f:g}" for f in fractions),
            seeds=" ".join(str(s) for s in seeds), **track), "validate", "validate"), resources)
        # Pretraining reads no dataset: it renders its own boards, once for every branch.
        pretrained: dict[str, Any] = {}
        if shape.pretrain:
            job = {"display_name": "efm-pretrain", **pretrain_args} if target == "vertex" else {}
            pre = _configure(pretrain_op(config_json=views.outputs["pretrain"], simulation=simulation,
                                         **track, **job).after(start), "pretrain", "pretrain")
            pretrained = {"pretrained": pre.outputs["model"]}
        summary = None
        branches = [(seed, fraction) for seed in seeds for fraction in fractions]
        for i, (seed, fraction) in enumerate(branches):
            b = branch_label(fraction, seed)
            common = {"config_json": config_json, "fraction": fraction, "seed": seed, **track}
            sub = _configure(stages.subsample(episodes=data.outputs["episodes"],
                                              **{**common, "config_json": views.outputs["data"]}),
                             "subsample", f"subsample-{b}").after(gate)
            job = {"display_name": f"efm-sft-{b}", **sft_args} if target == "vertex" else {}
            stage1 = {**common, "config_json": views.outputs["stage1"]}
            sft = _configure(sft_op(train=sub.outputs["train"], validation=sub.outputs["validation"],
                                    **pretrained, **stage1, **job), "sft", f"sft-{b}")
            sel = _configure(stages.select(sft_model=sft.outputs["model"], **stage1), "select", f"select-{b}")
            _on_cpu(sub, resources)
            _on_cpu(sel, resources)
            for domain in ("", *shape.transfer_domains):  # the data's domain, then transfer (Section 4.3.2)
                name = f"{b}-{domain}" if domain else b
                si = _configure(stages.self_improve(selected=sel.outputs["model"], practice_domain=domain, **common),
                                "self_improve", f"self-improve-{name}")
                if resources is not None and resources.self_improve_accelerator_type:
                    si.set_accelerator_type(resources.self_improve_accelerator_type).set_accelerator_limit(
                        resources.self_improve_accelerator_count)
                ev = _configure(stages.evaluate(episodes=data.outputs["episodes"], train=sub.outputs["train"],
                                                selected=sel.outputs["model"], improved=si.outputs["model"],
                                                practice_domain=domain, **common),
                                "evaluate", f"evaluate-{name}")
                final = i == len(branches) - 1 and domain == ("", *shape.transfer_domains)[-1]
                if summary is None:
                    rep = stages.report(result=ev.outputs["result"], final=final, **report_track)
                else:
                    rep = stages.report_append(previous=summary, result=ev.outputs["result"], final=final,
                                               **report_track)
                rep = _configure(rep, "report", f"report-{name}")
                for task in (si, ev, rep):
                    _on_cpu(task, resources)
                summary = rep.outputs["summary"]
        return summary

    description = ("Self-Improving Embodied Foundation Models: SFT then "
                   f"Self-Improvement for data fractions {fractions} and seeds {seeds}.")
    if target == "local":
        @dsl.pipeline(name=name, description=description)
        def experiment_pipeline(config_json: str, tracking_uri: str = "") -> dsl.Artifact:
            return graph(config_json, tracking_uri)

        return experiment_pipeline

    # On Vertex the graph runs inside an exit handler whose exit task ends the MLflow runs of a
    # failed pipeline run FAILED (kfp.local runs no exit handler: locally `run_local` does it).
    # kfp takes pipeline outputs from the top level only, so here the summary is the final
    # report task's output alone.
    @dsl.pipeline(name=name, description=description)
    def vertex_pipeline(config_json: str, tracking_uri: str = ""):
        end = _on_cpu(_configure(stages.end_tracking(tracking_uri=tracking_uri), "tracking", "end-tracking"),
                      resources)
        with dsl.ExitHandler(end, name="experiment"):
            graph(config_json, tracking_uri)

    return vertex_pipeline


def compile_pipeline(path: str | Path, fractions: Sequence[float], seeds: Sequence[int],
                     name: str = PIPELINE_NAME, target: Target = "local",
                     resources: VertexResources | None = None, shape: GraphShape = GraphShape()) -> Path:
    """Writes the pipeline spec (YAML): target "local" for any KFP backend, "vertex" for
    Vertex AI Pipelines with SFT (and pretraining) on TPU."""
    pipeline = make_experiment_pipeline(fractions, seeds, name, target, resources, shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compile the experiment pipeline to YAML.")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="efm_experiment_pipeline.yaml")
    p.add_argument("--target", choices=TARGETS, default="local",
                   help="vertex: SFT as a TPU custom job, sized CPU steps (default machines)")
    args = p.parse_args(argv)
    print(compile_pipeline(args.out, args.fractions, args.seeds, target=args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
