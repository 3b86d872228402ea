"""`efm`: one subcommand per pipeline stage, and `efm run` chaining them all for a domain."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from efm.config import (
    DOMAINS,
    RunConfig,
    check_trainable,
    debug_config,
    default_config,
    practice_config,
)

if TYPE_CHECKING:
    from etils import epath

    from efm.pipelines.vertex import VertexResources


def _config(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.domain, getattr(args, "config", None), getattr(args, "debug", False))
    if getattr(args, "actors", None) is not None and args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    if getattr(args, "actors", None) or getattr(args, "ray_address", None):
        from efm.self_improve.builder import with_fleet

        cfg = with_fleet(cfg, args.actors, args.ray_address)
    return cfg


def load_config(domain: str, override: str | None = None, debug: bool = False) -> RunConfig:
    """Defaults for the domain, overridden by a JSON file or JSON object (may be partial)."""
    base = debug_config(domain) if debug else default_config(domain)
    if not override:
        return base
    text = override
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file {path} (pass a JSON file or a JSON object)")
        text = path.read_text()
    try:
        changes = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config is not valid JSON ({e})") from e
    if not isinstance(changes, dict):
        raise ValueError("--config must be a JSON object")
    cfg = base.overridden(changes)
    if cfg.env.domain != base.env.domain:  # the rest of the config would stay the other domain's defaults
        raise ValueError(f"--config sets env.domain {cfg.env.domain!r} but the domain is {base.env.domain!r}: "
                         f"pass --domain {cfg.env.domain} instead")
    return cfg


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is no TCP port (1 to 65535)")
    return port


def _existing(path: str, what: str) -> epath.Path:
    """`path` (a local path or a URI such as gs://...), which must exist."""
    from etils import epath  # here: the CLI starts without it

    p = epath.Path(path)  # pathlib would fold gs://b into gs:/b
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def _add_fleet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actors", type=int, help="Stage 2 on a Ray fleet of K actors (self_improve.num_actors, runtime ray)")
    p.add_argument("--ray-address", help="join the Ray cluster at this address (ray://host:10001, auto); "
                                         "default: Ray embedded on this machine, on loopback")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default="pointmass", choices=DOMAINS)
    p.add_argument("--config", help="JSON file or string overriding the domain's default config")
    p.add_argument("--debug", action="store_true", help="tiny sizes: a seconds-long run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="efm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dataset", help="generate demonstrations as an RLDS dataset")
    _add_common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--episodes", type=int, help="override data.num_episodes")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("subsample", help="nested data fractions + shared validation split")
    _add_common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs="+")

    p = sub.add_parser("pretrain", help="the towers on questions about rendered table boards (no actions), "
                                        "to start Stage 1 from")
    _add_common(p)
    p.add_argument("--out", required=True, help="workdir (rerun to resume); Stage 1 starts from it with "
                   "model.init=pretrain, model.init_path=OUT")
    p.add_argument("--steps", type=int, help="override pretrain.num_steps")

    p = sub.add_parser("sft", help="Stage 1: behavioural cloning + steps-to-go")
    _add_common(p)
    p.add_argument("--train", required=True, help="RLDS directory of training episodes")
    p.add_argument("--validation", required=True, help="RLDS directory of validation episodes")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int)

    p = sub.add_parser("select", help="pick policy and reward checkpoints by validation loss")
    _add_common(p)
    p.add_argument("--sft", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("self-improve", help="Stage 2: Algorithm 1")
    _add_common(p)
    p.add_argument("--select", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int)
    _add_practice_domain(p)
    _add_fleet(p)

    p = sub.add_parser("evaluate", help="ground-truth evaluation and trajectory plot")
    _add_common(p)
    _add_practice_domain(p)
    p.add_argument("--select", required=True)
    p.add_argument("--self-improve", dest="self_improve")
    p.add_argument("--dataset", help="RLDS directory whose episodes are plotted beside the policies")
    p.add_argument("--out", required=True)

    p = sub.add_parser("run", help="the experiment pipeline on this machine (kfp local), over fractions and seeds")
    _add_common(p)
    p.add_argument("--fractions", type=float, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite database OUT/mlflow.db; '' for none)")
    p.add_argument("--no-cache", action="store_true",
                   help="execute every step (default: reuse steps an earlier run in OUT executed with the same inputs)")
    p.add_argument("--rerun", nargs="+", default=[], metavar="STEP",
                   help="execute these steps though cached (e.g. self-improve after a change to Stage 2); "
                        "the steps downstream follow")
    _add_fleet(p)

    p = sub.add_parser("data", help="look at datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("inspect", help="what an RLDS directory holds: episodes, steps, features, instructions")
    q.add_argument("path", help="an RLDS/TFDS dataset directory (or its parent holding one version)")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.add_argument("--examples", type=int, default=3, help="instruction examples to show")
    q.add_argument("--max-episodes", type=int, help="count steps over at most this many episodes per split")
    q = data_sub.add_parser("import-languagetable",
                            help="convert published LanguageTable RLDS data into this project's RLDS format")
    q.add_argument("source", help="the dataset's version directory, e.g. .../language_table/0.0.1")
    q.add_argument("--out", required=True)
    q.add_argument("--split", default="train")
    q.add_argument("--image-size", type=int, nargs=2, default=[72, 128], metavar=("HEIGHT", "WIDTH"))
    q.add_argument("--limit", type=int, help="the first N episodes only")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--max-clipped", type=float, default=0.01, metavar="SHARE",
                   help="error if more than this share of action values is clipped into [-1, 1] (default 0.01)")
    q = data_sub.add_parser("validate", help="TFDV statistics, schema anomalies, drift and skew of an RLDS "
                            "dataset against its domain's schema (exit 2 with a report on anomalies)")
    q.add_argument("path", help="an RLDS/TFDS dataset directory")
    _add_common(q)
    q.add_argument("--out", help="write statistics, validation.json, validation.html and facets.html here")
    q.add_argument("--accept", nargs="+", default=[], metavar="ANOMALY",
                   help="accept known drift: anomaly names, prefixes (steps:action) or globs (adds to validation.accept)")
    q.add_argument("--fractions", type=float, nargs="+", help="with --seeds: train/validation skew of these branches")
    q.add_argument("--seeds", type=int, nargs="+")
    q.add_argument("--write-schema", action="store_true",
                   help="infer the domain's schema and reference statistics from this (clean) dataset into "
                        "data/schemas/DOMAIN/ (Aloha with cameras: aloha-insertion-cameras/) instead of validating")
    q.add_argument("--overwrite", action="store_true", help="with --write-schema: replace the schema there")

    q = data_sub.add_parser("train-tokenizer", help="learn the text tokenizer's word list from datasets' "
                            "instructions (prints the tokenizer config to use)")
    q.add_argument("paths", nargs="+", help="RLDS dataset directories (their train split)")
    q.add_argument("--min-count", type=int, default=5, help="keep words seen at least this often")
    q.add_argument("--max-words", type=int, default=1000)

    p = sub.add_parser("ui", help="the MLflow UI on a run's local store (loopback only)")
    p.add_argument("--out", help="a run directory of efm run (its mlflow.db)")
    p.add_argument("--tracking-uri", help="any MLflow backend store instead of --out")
    p.add_argument("--port", type=_port, default=5000)

    p = sub.add_parser("compile", help="compile the experiment pipeline to YAML (Vertex AI or any KFP backend)")
    _add_common(p)
    _add_fan_out(p)
    p.add_argument("--out", required=True, help="pipeline YAML to write")
    p.add_argument("--target", choices=("vertex", "local"), default="vertex",
                   help="vertex: SFT as a TPU custom job, sized CPU steps; local: plain components (kfp.local)")
    _add_resources(p)
    _add_fleet(p)

    p = sub.add_parser("submit", help="compile and start one run on Vertex AI Pipelines")
    _add_common(p)
    _add_vertex(p)
    _add_fleet(p)

    p = sub.add_parser("schedule", help="compile and create a Vertex AI schedule running the pipeline on a cron")
    _add_common(p)
    _add_vertex(p)
    _add_fleet(p)
    p.add_argument("--cron", required=True, help="5-field cron, e.g. '0 3 * * *' (optionally 'TZ=Europe/Paris ...')")
    p.add_argument("--max-concurrent-runs", type=int, default=1)
    p.add_argument("--max-runs", type=int, help="stop the schedule after this many runs (default: never)")
    return parser


def _add_practice_domain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--practice-domain", default="",
                   help="practise in another domain from the same checkpoints (one of self_improve.transfer_domains)")


def _add_fan_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fractions", type=float, nargs="+", help="data fractions (default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])


def _add_resources(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Vertex machines (compiled into the pipeline)")
    g.add_argument("--sft-machine-type", default="ct5lp-hightpu-4t", help="SFT custom job machine (TPU VM)")
    g.add_argument("--sft-tpu-topology", help="multi-host TPU slice, e.g. 4x4 (default: one host)")
    g.add_argument("--sft-accelerator-type", default="", help="only for machine types with attached GPUs")
    g.add_argument("--sft-accelerator-count", type=int, default=1)
    g.add_argument("--cpu-limit", default="4", help="CPU of every other step")
    g.add_argument("--memory-limit", default="16G", help="memory of every other step")
    g.add_argument("--self-improve-accelerator", help="accelerator for Self-Improvement, e.g. NVIDIA_L4")
    g.add_argument("--self-improve-accelerator-count", type=int, default=1)


def _add_vertex(p: argparse.ArgumentParser) -> None:
    _add_fan_out(p)
    _add_resources(p)
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True, help="e.g. us-central1")
    p.add_argument("--pipeline-root", required=True, help="gs://BUCKET/PATH for pipeline artifacts")
    p.add_argument("--service-account", default="", help="run-as service account (pipeline and SFT job)")
    p.add_argument("--display-name", help="default: efm-<domain>")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="Vertex label (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="rerun every step instead of reusing cached results")
    p.add_argument("--tracking-uri", default="", help="MLflow server the pipeline logs to (default: none)")
    p.add_argument("--out", help="where to write the compiled YAML (default: a temporary file)")
    p.add_argument("--dry-run", action="store_true", help="print the request as JSON and send nothing")


def _with_seed(cfg: RunConfig, seed: int | None) -> RunConfig:
    from efm.stages import seeded

    return cfg if seed is None else seeded(cfg, seed)


def _resources(args: argparse.Namespace) -> VertexResources:
    from efm.pipelines.vertex import VertexResources

    return VertexResources(
        sft_machine_type=args.sft_machine_type, sft_tpu_topology=args.sft_tpu_topology,
        sft_accelerator_type=args.sft_accelerator_type, sft_accelerator_count=args.sft_accelerator_count,
        cpu_limit=args.cpu_limit, memory_limit=args.memory_limit,
        self_improve_accelerator_type=args.self_improve_accelerator,
        self_improve_accelerator_count=args.self_improve_accelerator_count)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--label must be KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def _pipeline_command(args: argparse.Namespace, cfg: RunConfig) -> dict:
    """compile / submit / schedule. Every setting is checked, then the pipeline is compiled,
    then (unless --dry-run) the request is sent: nothing reaches Vertex on a bad parameter."""
    import tempfile

    from efm.pipelines import vertex
    from efm.pipelines.experiment import GraphShape

    check_trainable(cfg)
    fractions = args.fractions or list(cfg.data.fractions)  # the parent MLflow run logs these (start_experiment)
    if args.command == "compile":
        from efm.pipelines.experiment import compile_pipeline

        resources = _resources(args) if args.target == "vertex" else None
        path = compile_pipeline(args.out, fractions, args.seeds, target=args.target, resources=resources,
                                shape=GraphShape.of(cfg))
        return {"path": str(path), "target": args.target, "fractions": fractions, "seeds": args.seeds}
    settings = vertex.VertexConfig(
        project=args.project, region=args.region, pipeline_root=args.pipeline_root,
        service_account=args.service_account, enable_caching=False if args.no_cache else None,
        labels=_labels(args.label), resources=_resources(args), tracking_uri=args.tracking_uri)
    if args.command == "schedule":
        vertex.validate_cron(args.cron)
    from efm.data.validation import on_dataflow_of

    cfg = on_dataflow_of(cfg, args.project, args.region)  # a Dataflow validation runs where the pipeline does
    with tempfile.TemporaryDirectory(prefix="efm-vertex-") as tmp:
        if args.out:
            out = Path(args.out)
        elif args.dry_run:  # kept, so the printed template path can be inspected
            out = Path(tempfile.mkdtemp(prefix="efm-vertex-")) / "pipeline.yaml"
        else:
            out = Path(tmp) / "pipeline.yaml"
        path = vertex.compile_for_vertex(out, fractions, args.seeds, settings.sft_resources(),
                                         GraphShape.of(cfg))
        if args.command == "schedule":
            request = vertex.build_schedule_request(settings, path, cfg, args.cron, args.display_name,
                                                    args.max_concurrent_runs, args.max_runs)
        else:
            request = vertex.build_pipeline_job_request(settings, path, cfg, args.display_name)
        if args.dry_run:
            return {"dry_run": True, "request": request}
        return vertex.execute(request)


def ui_command(out: str | None, tracking_uri: str | None, port: int) -> list[str]:
    """The `mlflow ui` command line for a run directory's store (or a given store).

    One worker: the UI is one person's, and each of mlflow's default four imports the whole
    server (minutes before the first page on a loaded 2-core machine)."""
    from efm.tracking import local_store

    if tracking_uri is None:
        if out is None:
            raise ValueError("efm ui needs --out (a run directory) or --tracking-uri")
        if not (Path(out) / "mlflow.db").is_file():
            raise FileNotFoundError(f"no MLflow store at {Path(out) / 'mlflow.db'}: run `efm run --out {out}` first")
        tracking_uri = local_store(out)
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def _validate_command(args: argparse.Namespace) -> dict:
    """`efm data validate`: the report (JSON) on success; a ValidationError (exit 2) naming
    every anomaly otherwise."""
    import tempfile
    from dataclasses import replace

    from efm.data import validation

    cfg = _config(args)
    path = _existing(args.path, "dataset")
    if args.write_schema:
        return {"schema": str(validation.infer_and_write_schema(cfg, path, overwrite=args.overwrite))}
    if args.accept:
        cfg = cfg.replace(validation=replace(cfg.validation, accept=(*cfg.validation.accept, *args.accept)))
    if bool(args.fractions) != bool(args.seeds):
        raise ValueError("--fractions and --seeds go together (the branches whose skew is checked)")
    with tempfile.TemporaryDirectory(prefix="efm-validate-") as tmp:
        report = validation.run_validation(cfg, path, args.out or tmp, args.fractions or (), args.seeds or ())
    if not report.ok:
        raise validation.ValidationError(report)
    if not args.quiet:
        print(report.summary(), file=sys.stderr)
    return report.to_json()


def run(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    if args.command == "ui":
        cmd = ui_command(args.out, args.tracking_uri, args.port)
        print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)", file=sys.stderr)
        os.execv(cmd[0], cmd)  # the server replaces this process

    if args.command == "data" and args.data_command == "import-languagetable":
        from efm.data.languagetable import import_languagetable

        return import_languagetable(_existing(args.source, "LanguageTable dataset"), args.out, args.split,
                                    tuple(args.image_size), args.limit, args.overwrite,
                                    max_clipped_fraction=args.max_clipped)
    if args.command == "data" and args.data_command == "validate":
        return _validate_command(args)
    if args.command == "data" and args.data_command == "train-tokenizer":
        from efm.data.rlds import read_instructions
        from efm.models.tokenizers import TextTokenizer, learn_words

        texts = [t for path in args.paths for t in read_instructions(_existing(path, "dataset"))]
        words = learn_words(texts, args.min_count, args.max_words)
        lengths = [int((TextTokenizer(512, words).encode([t])[0] != 0).sum()) for t in texts]
        return {"tokenizer": {"text_words": list(words)}, "instructions": len(texts),
                "tokens_per_instruction": {"mean": sum(lengths) / max(len(lengths), 1), "max": max(lengths, default=0)},
                "bytes_per_instruction": {"max": max((len(t.encode()) for t in texts), default=0)}}
    if args.command == "data":
        from efm.data.inspect import inspect_dataset

        return inspect_dataset(args.path, args.examples, max_episodes=args.max_episodes)

    if args.command in ("compile", "submit", "schedule"):
        return _pipeline_command(args, _config(args))

    from efm import stages

    cfg = _config(args)
    progress = not args.quiet
    if args.command == "dataset":
        if args.episodes is not None:  # 0 is the config's to refuse, not to ignore
            cfg = cfg.replace(data=replace(cfg.data, num_episodes=args.episodes))
        return stages.dataset_stage(cfg, args.out, overwrite=args.overwrite, progress=progress)
    if args.command == "subsample":
        if args.fractions:
            cfg = cfg.replace(data=replace(cfg.data, fractions=tuple(args.fractions)))
        return stages.subsample_stage(cfg, _existing(args.dataset, "dataset"), args.out, args.seed)
    if args.command == "pretrain":
        if args.steps is not None:
            cfg = cfg.replace(pretrain=replace(cfg.pretrain, num_steps=args.steps))
        out = stages.pretrain_stage(cfg, args.out, progress=progress)
        init = {"model": {"init": "pretrain", "init_path": str(Path(args.out).absolute())}}
        return {"final_step": out["final_step"], "last": out["history"][-1], "localization": out["localization"],
                "start_stage1_with": f"--config '{json.dumps(init)}'"}
    if args.command == "sft":
        cfg = _with_seed(cfg, args.seed)
        out = stages.sft_stage(cfg, _existing(args.train, "training data"), _existing(args.validation, "validation data"),
                               args.out, progress=progress)
        return {"final_step": out["final_step"], "last": out["history"][-1]}
    if args.command == "select":
        return stages.select_stage(cfg, _existing(args.sft, "SFT directory"), args.out)
    if args.command == "self-improve":
        cfg = practice_config(_with_seed(cfg, args.seed), args.practice_domain)
        out = stages.self_improve_stage(cfg, _existing(args.select, "select directory"), args.out, progress=progress)
        return {k: v for k, v in out.items() if k != "rounds"}
    if args.command == "evaluate":
        cfg = practice_config(cfg, args.practice_domain)
        si = _existing(args.self_improve, "self-improve directory") if args.self_improve else None
        data = _existing(args.dataset, "dataset") if args.dataset else None
        return stages.evaluate_stage(cfg, _existing(args.select, "select directory"), si, args.out, data,
                                     progress=progress)
    if args.command == "run":
        from efm.pipelines.local import run_local

        return run_local(cfg, args.out, args.fractions, args.seeds, args.tracking_uri, progress=progress,
                         cache=not args.no_cache, rerun=args.rerun)
    raise ValueError(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is only our RLDS/Reverb I/O layer
    logging.getLogger("absl").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"efm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError) as e:  # a directory to make where a file stands
        print(f"efm {args.command}: error: {e.filename} exists and is not a directory", file=sys.stderr)
        return 2
    if args.command == "data" and args.data_command == "inspect" and not args.json:
        from efm.data.inspect import format_inspection

        print(format_inspection(result))
    else:
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
