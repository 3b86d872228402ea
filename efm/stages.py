"""The pipeline's stages as library functions: each reads directories and writes one.

Every stage writes its outputs (and the config it ran with) into its own directory, which
the next stage reads, so any stage can be rerun alone (`efm <stage>`). The experiment pipeline
(`efm.pipelines`) chains them, one KFP component per stage.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from efm.config import SUCCESS_ONLY_DOMAINS, RunConfig, check_trainable
from efm.data import rlds, subsample
from efm.domains import make_demonstrator, make_env
from efm.envs.base import Episode, add_counts, counters
from efm.envs.render import RGB, write_episodes_gif
from efm.progress import progress_bar
from efm.rollout import GivesUp, rollout
from efm.types import Logger

# Each pipeline step is a fresh process that imports this module for one stage, so what only
# some stages use (Flax models, Orbax, optax, Reverb, matplotlib, the trainers) is imported in
# those stages' functions: the dataset and subsample steps skip it
# (benchmarks/results/step_imports.json). TensorFlow (RLDS I/O) stays here: most stages read or
# write RLDS.

CONFIG = "config.json"
INPUTS = "inputs.json"
PREVIEW = "demonstrations.gif"
PREVIEW_EPISODES = 3
METRICS = "metrics.json"
TRAJECTORIES = "trajectories.png"


def _only_split(directory: str | Path) -> str:
    splits = rlds.split_sizes(directory)
    if len(splits) != 1:
        raise rlds.DatasetError(f"{directory} holds splits {sorted(splits)}; expected exactly one")
    return next(iter(splits))


def read_split(directory: str | Path, limit: int | None = None) -> list[Episode]:
    """The episodes (the first `limit`) of a dataset directory holding one split, as `subsample`
    writes them."""
    return list(itertools.islice(rlds.iter_episodes(directory, _only_split(directory)), limit))


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True))


def _input_record(inputs: dict[str, str | Path | None]) -> dict[str, Any]:
    """name -> {"path": resolved path, "fingerprint": the dataset's (`subsample.dataset_fingerprint`;
    None for a directory that is no dataset)}; a None input is recorded as None."""
    return {k: None if v is None else {"path": str(v) if "://" in str(v) else str(Path(v).resolve()),
                                       "fingerprint": subsample.dataset_fingerprint(v)}
            for k, v in inputs.items()}


def _input_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The inputs that differ: a dataset by its fingerprint (so a moved copy still matches), any
    other directory by its path."""
    def same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
        if a is None or b is None:
            return a is b
        if a.get("fingerprint") is not None and b.get("fingerprint") is not None:
            return a["fingerprint"] == b["fingerprint"]
        return a.get("path") == b.get("path")

    def show(v: dict[str, Any] | None) -> str:
        return "none" if v is None else str(v.get("path")) + (f" (fingerprint {v['fingerprint']})"
                                                             if v.get("fingerprint") else "")

    return [f"{k}: {show(stored.get(k))}, now {show(current.get(k))}"
            for k in sorted(set(stored) | set(current)) if not same(stored.get(k), current.get(k))]


def _start(cfg: RunConfig, out_dir: str | Path, inputs: dict[str, str | Path | None] | None = None) -> Path:
    """The stage's output directory; refuses one that holds outputs of another config, or (where
    `inputs` are given: name -> input directory) of other inputs, as INPUTS records them (a
    directory made before INPUTS was written is accepted and gets one). A directory holding
    nothing but those records (a run refused before it wrote anything) is taken over."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG
    outputs = any(p.name not in (CONFIG, INPUTS) for p in out.iterdir())
    if outputs and path.exists() and path.read_text() != cfg.to_json():
        raise ValueError(f"{out} holds outputs of a different config (see {path}): use a new output "
                         "directory, or the same config to resume")
    record = _input_record(inputs) if inputs is not None else None
    inputs_path = out / INPUTS
    if outputs and record is not None and inputs_path.exists():
        differ = _input_mismatch(json.loads(inputs_path.read_text()), record)
        if differ:
            raise ValueError(f"{out} holds outputs of different inputs (see {inputs_path}): "
                             f"{'; '.join(differ)}; use a new output directory, or the same inputs to resume")
    path.write_text(cfg.to_json())
    if record is not None:
        _write_json(inputs_path, record)
    return out


# What the checkpoints were trained from and in: not what reading them needs (an evaluation
# without the pipeline's init_path, or in float32 after bfloat16 training, reads them alike).
READ_ANYHOW = frozenset({"model.init", "model.init_path", "model.init_parts", "model.compute_dtype"})


def check_select_config(cfg: RunConfig, select_dir: str | Path) -> None:
    """Refuses a selection (`efm select`'s output) made under another model or tokenizer config
    than `cfg`'s: its checkpoints would be read with the wrong shapes or steps-to-go scale. A
    selection without a config.json is not checked."""
    path = Path(select_dir) / CONFIG
    if not path.is_file():
        return
    text = path.read_text()
    try:
        theirs = json.loads(RunConfig.from_json(text).to_json())  # defaults filled as for this run
    except ValueError:
        theirs = json.loads(text)
    ours = json.loads(cfg.to_json())

    def flat(prefix: str, v: Any, into: dict[str, Any]) -> dict[str, Any]:
        if isinstance(v, dict):
            for k, x in v.items():
                flat(f"{prefix}.{k}", x, into)
        else:
            into[prefix] = v
        return into

    differ = []
    for section in ("model", "tokenizer"):
        a, b = flat(section, ours.get(section), {}), flat(section, theirs.get(section, "<absent>"), {})
        differ += [f"{k}: {a.get(k, '<absent>')!r} here, {b.get(k, '<absent>')!r} in the selection"
                   for k in sorted(set(a) | set(b))
                   if k not in READ_ANYHOW and a.get(k, "<absent>") != b.get(k, "<absent>")]
    if differ:
        raise ValueError(f"{select_dir} was selected under another model/tokenizer config (see {path}): "
                         f"{'; '.join(differ)}")


ROUND_SEED_STRIDE = 1_000_003  # success-only datasets: round r's envs and demonstrator use seed + r * this


def generate_demonstrations(cfg: RunConfig, num_episodes: int, seed: int, num_envs: int = 64,
                            progress: bool = False, tally: dict[str, int] | None = None) -> Iterator[Episode]:
    """Scripted demonstrations, ending on ground-truth success or max length, one at a time (an
    image dataset of any size never sits in memory). The envs step in `cfg.env.num_workers`
    processes (efm.domains.make_env); the episodes are the same whatever the number.

    Domains in SUCCESS_ONLY_DOMAINS keep only successful episodes (the paper's Aloha data):
    rounds of demonstrations run until `num_episodes` succeeded, each round with as many envs as
    episodes are still missing (at most `num_envs`, on its own seed) and run to its end, so no
    episode is cut short (which would favour quick ones). `tally["attempted"]` counts every
    episode run, and the env's and demonstrator's counters (`efm.envs.base.counters`) add up
    there too. Other domains keep every episode: one round.
    """
    success_only = cfg.domain in SUCCESS_ONLY_DOMAINS
    tally = {} if tally is None else tally
    tally["attempted"] = 0
    kept = 0
    bar = progress_bar(total=num_episodes, desc="demonstrations", enabled=progress)
    for round_ in itertools.count():
        if kept >= num_episodes:
            break
        if round_ > 0 and kept == 0:
            raise RuntimeError(f"the {cfg.domain} demonstrator succeeded in none of {tally['attempted']} "
                               "episodes: check env.max_episode_steps and the demonstrator's noise")
        need, round_seed = num_episodes - kept, seed + ROUND_SEED_STRIDE * round_
        n = min(num_envs, need)
        env = make_env(cfg.env, n, round_seed)
        try:
            demonstrator = make_demonstrator(cfg.env, n, round_seed + 1)
            stop = demonstrator.gave_up if isinstance(demonstrator, GivesUp) else None
            # Every started episode finishes (no bias towards short ones); ids follow arrival order.
            for e in rollout(env, demonstrator, max_steps=cfg.env.max_episode_steps, interrupt=stop,
                             max_episodes=need, id_prefix="demo"):
                tally["attempted"] += 1
                if success_only and not e.success:
                    continue
                e.episode_id = f"demo-{kept:06d}"
                kept += 1
                bar.update(1)
                yield e
            tally.update(add_counts(tally, counters(env), counters(demonstrator)))
        finally:
            env.close()  # ends the env's worker processes, if any
    bar.close()


def _summary(e: Episode) -> Episode:
    """What dataset statistics need of an episode, without its observations."""
    return Episode(observations={}, actions=e.actions, instruction=e.instruction, success=e.success,
                   episode_id=e.episode_id, optimal_length=e.optimal_length)


def dataset_stage(cfg: RunConfig, out_dir: str | Path, overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Generates the full demonstration dataset and writes it as RLDS (TFDS format), streaming.

    Camera domains also get PREVIEW: a GIF of the first demonstrations, for reports and MLflow.
    """
    t0 = time.time()
    summaries: list[Episode] = []
    preview: list[Episode] = []
    metadata: dict[str, Any] = {"config": json.loads(cfg.to_json())}

    tally: dict[str, int] = {}

    def episodes() -> Iterator[Episode]:
        for e in generate_demonstrations(cfg, cfg.data.num_episodes, cfg.data.seed, progress=progress, tally=tally):
            summaries.append(_summary(e))
            if RGB in e.observations and len(preview) < PREVIEW_EPISODES:
                preview.append(e)
            yield e
        events = {k: v for k, v in tally.items() if k != "attempted"}  # e.g. Aloha's planning failures
        metadata["stats"] = {**dataset_stats(cfg, summaries), "demonstrations_attempted": tally["attempted"], **events}

    out = Path(out_dir)
    rlds.write_episodes(episodes(), out, metadata=metadata, overwrite=overwrite)
    (out / CONFIG).write_text(cfg.to_json())
    if preview:
        write_episodes_gif(preview, out / PREVIEW)
    return {**metadata["stats"], "seconds": time.time() - t0}


def dataset_stats(cfg: RunConfig, episodes: list[Episode]) -> dict[str, Any]:
    from efm.evaluation.evaluate import episode_metrics

    return {"domain": cfg.domain, "episodes": len(episodes), "steps": int(sum(e.length for e in episodes)),
            **episode_metrics(episodes)}


def subsample_stage(cfg: RunConfig, dataset_dir: str | Path, out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Nested fractions of the training episodes plus the shared validation split."""
    if (Path(out_dir) / subsample.MANIFEST).exists():
        manifest = subsample.load_manifest(out_dir)
        why = subsample.manifest_mismatch(manifest, dataset_dir, cfg.data.fractions, cfg.data.validation_episodes, seed)
        if why is not None:
            raise ValueError(f"{out_dir} is another subsampling: {why}; use a new output directory")
        return manifest
    return subsample.subsample_dataset(dataset_dir, out_dir, cfg.data.fractions, cfg.data.validation_episodes, seed)


def pretrain_stage(cfg: RunConfig, out_dir: str | Path, log: Logger | None = None, progress: bool = True,
                   on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The towers pretrained on rendered table questions (`efm pretrain`); resumes in `out_dir`.
    Stage 1 starts from `out_dir` with model.init="pretrain"."""
    from efm.evaluation.plots import plot_curves
    from efm.sft.pretrain import run_pretrain

    out = _start(cfg, out_dir)
    result = run_pretrain(cfg, out, log=log, progress=progress, on_checkpoint=on_checkpoint)
    curve = result["localization_curve"]
    steps = [c["step"] for c in curve]
    plot_curves({"effector": (steps, [c["effector_cm"] for c in curve]),
                 "blocks (mean)": (steps, [c["blocks_cm"] for c in curve])},
                out / "localization.png", xlabel="step", ylabel="cm",
                title="Pretraining: greedy answer's distance to the named object")
    return result


def sft_stage(cfg: RunConfig, train_dir: str | Path, validation_dir: str | Path, out_dir: str | Path,
              log: Logger | None = None, progress: bool = True,
              on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    from efm.evaluation.plots import plot_curves
    from efm.models.weights import check_initial_weights
    from efm.sft.trainer import run_sft

    check_trainable(cfg)
    check_initial_weights(cfg.model)
    out = _start(cfg, out_dir, {"train": train_dir, "validation": validation_dir})
    result = run_sft(cfg, train_dir, validation_dir, out, log=log, progress=progress, on_checkpoint=on_checkpoint)
    steps = [h["step"] for h in result.history]
    plot_curves({k: (steps, [h[k] for h in result.history]) for k in result.history[0] if k.startswith("val/")},
                out / "validation_losses.png", xlabel="step", ylabel="NLL", title="Stage 1 validation loss per objective")
    return {"final_step": result.final_step, "train_episodes": sum(rlds.split_sizes(train_dir).values()),
            "history": result.history}


def select_stage(cfg: RunConfig, sft_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    from efm.sft.select import run_select

    out = _start(cfg, out_dir, {"sft": sft_dir})
    return run_select(sft_dir, out, cfg.select)


def self_improve_stage(cfg: RunConfig, select_dir: str | Path, out_dir: str | Path, log: Logger | None = None,
                       progress: bool = True, on_round: Callable[[], None] | None = None) -> dict[str, Any]:
    from efm.evaluation.plots import plot_curves
    from efm.self_improve.coordinator import round_rate_series
    from efm.self_improve.loop import run_self_improve

    check_select_config(cfg, select_dir)
    out = _start(cfg, out_dir, {"select": select_dir})
    result = run_self_improve(cfg, select_dir, out, log=log, progress=progress, on_round=on_round)
    x = [r["total_episodes"] for r in result.rounds]
    plot_curves(round_rate_series(result.rounds), out / "success_rate.png", xlabel="Self-Improvement episodes",
                ylabel="rate", title="Success per round", ylim=(0.0, 1.02))
    plot_curves({"mean episode length": (x, [r["mean_episode_length"] for r in result.rounds])},
                out / "episode_length.png", xlabel="Self-Improvement episodes", ylabel="steps",
                title="Episode length per round")
    return {"total_episodes": result.total_episodes, "total_env_steps": result.total_env_steps,
            "best_round": result.best_round, "rounds": result.rounds, "fleet": result.fleet}


def evaluate_stage(cfg: RunConfig, select_dir: str | Path, self_improve_dir: str | Path | None,
                   out_dir: str | Path, dataset_dir: str | Path | None = None, progress: bool = False,
                   ) -> dict[str, Any]:
    """Ground-truth evaluation of the SFT and Self-Improved policies, plus the trajectory plot."""
    from efm import checkpoints
    from efm.evaluation.evaluate import evaluate_policy
    from efm.evaluation.plots import plot_trajectories
    from efm.models.efm import make_functions
    from efm.models.tokenizers import make_vocabulary
    from efm.sft.select import POLICY, REWARD, load_selected

    check_select_config(cfg, select_dir)
    # Recomputed on every run, but refused over another run's outputs: files of the policies it
    # does not evaluate (a GIF of another Self-Improvement) would stay beside the new metrics.
    out = _start(cfg, out_dir, {"select": select_dir, "self_improve": self_improve_dir, "dataset": dataset_dir})
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    reward = load_selected(select_dir, REWARD)
    policies = {"sft": load_selected(select_dir, POLICY)}
    if self_improve_dir is not None:
        policies["self_improved"] = checkpoints.load_params(Path(self_improve_dir) / POLICY)
    metrics: dict[str, Any] = {}
    panels: dict[str, list[Episode]] = {}
    k = cfg.eval.plot_episodes
    if dataset_dir is not None and k:
        panels["dataset"] = read_split(dataset_dir, limit=k)
    for name, params in policies.items():
        policy_metrics, detector, episodes = evaluate_policy(cfg, fns, params, reward, progress, name)
        metrics[name] = policy_metrics
        metrics[f"{name}_success_detector"] = detector
        panels[{"sft": "SFT (Stage 1)", "self_improved": "Self-Improved (Stage 2)"}[name]] = first_per_env(episodes)[:k]
    metrics["success_detector"] = metrics[f"{'self_improved' if 'self_improved' in policies else 'sft'}_success_detector"]
    if k:
        write_episode_figures(cfg, fns, reward, panels, out)
    if cfg.domain == "pointmass" and k:
        pm = cfg.env.pointmass
        plot_trajectories(panels, out / TRAJECTORIES, success_radius=pm.success_radius,
                          arena_half_size=pm.arena_half_size)
    _write_json(out / METRICS, metrics)
    return metrics


def write_episode_figures(cfg: RunConfig, fns: Any, reward: Any, panels: dict[str, list[Episode]],
                          out: Path) -> None:
    """Per panel (dataset, SFT, Self-Improved): a Figure 2-3 steps-to-go strip of its first
    episode under the frozen reward model (`fns`: EFMFunctions), `cfg.eval.strip_frames` frames
    each with the predicted distribution and d(o, g) under it, where the domain has frames to
    show (`efm.domains.figure_frames`: camera images; Aloha's scene, rendered from the recorded
    state in state mode), and a captioned GIF of its episodes where they hold camera images."""
    import jax.numpy as jnp

    from efm.data.features import input_spec
    from efm.domains import figure_frames
    from efm.evaluation.plots import plot_steps_to_go_strip

    spec = input_spec(fns.vocab)
    bins = fns.vocab.steps_to_go.bin_values()
    for title, episodes in panels.items():
        if not episodes:
            continue
        slug = title.split(" (")[0].lower().replace("-", "_").replace(" ", "_")
        episode = episodes[0]
        if RGB in episode.observations:
            write_episodes_gif(episodes, out / f"episodes_{slug}.gif")
        n = min(cfg.eval.strip_frames, episode.length + 1)
        steps = np.unique(np.linspace(0, episode.length, n).round().astype(int))
        frames = figure_frames(cfg.env, episode, steps)
        if frames is None:
            continue
        inputs = {k: jnp.asarray(v[steps]) for k, v in spec.episode_inputs(episode).items()}
        probs = np.exp(np.asarray(fns.steps_to_go_log_probs(reward, inputs)))
        plot_steps_to_go_strip(frames, probs, bins, probs @ bins, out / f"steps_to_go_{slug}.png",
                               f"{title}: {episode.instruction}", steps=list(steps), success=episode.success)


def first_per_env(episodes: list[Episode]) -> list[Episode]:
    """Each env's first episode, in env order: the same tasks for every policy (episodes arrive
    in the order they finish, which would favour the short ones)."""
    firsts = [e for e in episodes if e.episode_id.endswith("-0")]
    return sorted(firsts, key=lambda e: int(e.episode_id.split("-")[-2]))


def seeded(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of one experiment branch: training and practice seeded by `seed`."""
    return cfg.replace(sft=replace(cfg.sft, seed=seed), self_improve=replace(cfg.self_improve, seed=seed))
