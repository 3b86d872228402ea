"""Time of `subsample` on a demonstration dataset, per set of fractions, with a digest of each
output's record files (equal digests: the same bytes, whichever code wrote them).

    .venv/bin/python benchmarks/subsample_time.py OUT/pipeline_root/<run>/dataset/episodes \
        --out runs/bench-subsample --results benchmarks/results/subsample_time.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dataset_workers import records_digest

from efm.data import rlds
from efm.data.subsample import subsample_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="scratch directory (replaced)")
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    runs = []
    for fractions in ((0.1,), (0.1, 0.2, 0.8)):
        out = args.out / "-".join(map(str, fractions))
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subsample_dataset(args.dataset, out, fractions, args.validation, seed=0)
        runs.append({"fractions": list(fractions), "seconds": round(time.perf_counter() - t0, 1),
                     "records_sha256": {d.name: records_digest(d, 12) for d in sorted(out.iterdir()) if d.is_dir()}})
        print(json.dumps(runs[-1]), flush=True)
    if args.results is not None:
        # the source by its content, not its (machine-specific) path
        source = {"records_sha256": records_digest(args.dataset, 12), "episodes": rlds.split_sizes(args.dataset)}
        args.results.write_text(json.dumps({"dataset": source, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
