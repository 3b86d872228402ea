"""SFT's peak memory does not grow with the dataset: peak RSS from image datasets of 2k and 20k
episodes.

Real tabletop demonstrations (`--source-episodes`, generated once) are replicated under new ids
into datasets of each size (PNG frames, as `efm dataset` writes them); each size then trains
`--steps` SFT steps in a fresh process that reports its own peak RSS and what it holds at the
end; with `--data-only`, the same number of batches from the data pipeline alone, no model.
Rerunning reuses the datasets already written.

  .venv/bin/python benchmarks/sft_memory.py --sizes 2000 20000 --out benchmarks/results/sft_memory.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

# What the process holds at the end (the peak may be set earlier, by start-up alone).
RSS = """
def rss_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024
"""

CHILD = """
import json, resource, sys, time
from efm.config import RunConfig
from efm.sft.trainer import run_sft
cfg = RunConfig.from_json(sys.argv[1])
t = time.time()
run_sft(cfg, sys.argv[2], sys.argv[3], sys.argv[4], progress=False)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_mb": rss_mb(), "seconds": time.time() - t}))
"""

# The same batches without the model: what the data pipeline alone holds after N of them.
CHILD_DATA = """
import json, resource, sys, time
from efm.config import RunConfig
from efm.data.stage1 import Stage1Data
cfg = RunConfig.from_json(sys.argv[1])
t = time.time()
for _ in zip(range(cfg.sft.num_steps), Stage1Data(cfg).training(sys.argv[2], seed=cfg.sft.seed)):
    pass
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_mb": rss_mb(), "seconds": time.time() - t}))
"""


PRETRAINED = Path(__file__).parent / "checkpoints" / "table-pretrain"


def config(steps: int):
    """The table's defaults, starting (as the pipeline's SFT does) from the shipped pretraining."""
    from efm.config import default_config

    cfg = default_config("tabletop")
    return cfg.replace(sft=dataclasses.replace(cfg.sft, num_steps=steps, eval_every=steps, checkpoint_every=steps),
                       model=dataclasses.replace(cfg.model, init_path=str(PRETRAINED)))


def write_sized(root: Path, size: int, source: list) -> Path:
    from efm.data import rlds

    path = root / f"train-{size}"
    if (path / "dataset_info.json").exists():
        return path

    def episodes():
        for i, e in zip(range(size), itertools.cycle(source), strict=False):
            yield dataclasses.replace(e, episode_id=f"copy-{i:06d}")

    rlds.write_episodes(episodes(), path, overwrite=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--source-episodes", type=int, default=100)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--data", default="runs/bench-memory")
    p.add_argument("--out", default="benchmarks/results/sft_memory.json")
    p.add_argument("--data-only", action="store_true",
                   help="the data pipeline's batches alone, no model (where the memory goes)")
    args = p.parse_args()
    from efm.data import rlds
    from efm.stages import dataset_stage

    root = Path(args.data)
    cfg = config(args.steps)
    src = root / "source"
    if not (src / "dataset_info.json").exists():
        dataset_stage(cfg.replace(data=dataclasses.replace(cfg.data, num_episodes=args.source_episodes,
                                                           validation_episodes=10)), src,
                      overwrite=True, progress=True)
    source = rlds.read_episodes(src)
    validation = root / "validation"
    if not (validation / "dataset_info.json").exists():
        rlds.write_episodes(source[:10], validation, split="validation", overwrite=True)
    results = {}
    for size in args.sizes:
        t = time.time()
        train = write_sized(root, size, source)
        written = time.time() - t
        child = [RSS + CHILD_DATA, cfg.to_json(), str(train)] if args.data_only else [
            RSS + CHILD, cfg.to_json(), str(train), str(validation), str(root / f"sft-{size}-{time.time_ns()}")]
        proc = subprocess.run([sys.executable, "-c", *child], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-4000:])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row |= {"episodes": size, "dataset_mb": sum(f.stat().st_size for f in train.rglob("*")) / 2**20,
                "write_seconds": written, "steps": args.steps, "shuffle_buffer": cfg.sft.shuffle_buffer,
                "variant": cfg.model.variant, "data_only": args.data_only}
        print(json.dumps(row), flush=True)
        results[str(size)] = row
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
