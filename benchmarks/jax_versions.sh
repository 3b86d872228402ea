#!/usr/bin/env bash
# SFT throughput, policy latency and one learner update under another jax than the locked one,
# back to back with the locked one, ROUNDS times (the 2-core machines drift by +-20% within an
# hour, so only alternating runs compare). The other version goes to a target directory put
# first on PYTHONPATH; the .venv is not touched. Writes OUT/{old,new}_<round>_{sft,learner}.json
# and, gathered in run order, RESULTS.
#   benchmarks/jax_versions.sh 0.4.34 0.3.2 /tmp/jax-ab 2 benchmarks/results/jax_versions.json
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?jax version to compare}; ML_DTYPES=${2:?ml-dtypes version it needs}; OUT=${3:-/tmp/jax-ab}; ROUNDS=${4:-2}; RESULTS=${5:-$OUT/jax_versions.json}
mkdir -p "$OUT"
python3 -m uv pip install --quiet --python .venv/bin/python --target "$OUT/jax$OLD" --no-deps \
    "jax==$OLD" "jaxlib==$OLD" "ml_dtypes==$ML_DTYPES"
for i in $(seq "$ROUNDS"); do
  for v in old new; do
    if [ $v = old ]; then export PYTHONPATH="$OUT/jax$OLD"; else unset PYTHONPATH; fi
    .venv/bin/python -c "import jax; print('jax', jax.__version__)"
    .venv/bin/python benchmarks/sft_throughput.py --variants vl-cpu vl-cpu-gkp2 --steps 30 \
        --out "$OUT/${v}_${i}_sft.json" 2>&1 | grep '^{'
    .venv/bin/python benchmarks/learner_update.py --repeats 30 --out "$OUT/${v}_${i}_learner.json" >/dev/null 2>&1
    cat "$OUT/${v}_${i}_learner.json"
  done
done
.venv/bin/python - "$OUT" "$ROUNDS" "$RESULTS" "$OLD" "$ML_DTYPES" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from block2block import cpu_model
from importlib.metadata import version
out, rounds, results, old, ml = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rows = [{"round": i, "jax": v, "sft_throughput": list(json.load(open(f"{out}/{v}_{i}_sft.json")).values()),
         "learner_update": json.load(open(f"{out}/{v}_{i}_learner.json"))}
        for i in range(1, rounds + 1) for v in ("old", "new")]
json.dump({"command": " ".join(["benchmarks/jax_versions.sh", old, ml, "OUT", str(rounds)]), "cpu": cpu_model(),
           "old": f"jax {old}, ml-dtypes {ml}", "new": f"jax {version('jax')}, ml-dtypes {version('ml-dtypes')} (the lock)",
           "rounds": rows}, open(results, "w"), indent=1)
print(results)
PY
