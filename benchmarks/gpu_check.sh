#!/usr/bin/env bash
# One GPU check, prepared for a lent accelerator (15 minutes of device time; this takes < 8):
# install kebench without touching the machine's packages, run every CUDA test, run the GPU benchmark.
# Everything lands under $OUT (default ./gpu_check_out) as soon as it is measured: env.txt, pip.log,
# pytest_cuda.log, junit.xml, gpu.log, gpu.json (rewritten after each row) and gpu.jsonl (one line
# per row, flushed), so a kill at any point keeps what was measured.
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# A machine without a package index may lack kebench's small pure-Python dependencies (pyyaml,
# click, submitit, pytest, pytest-timeout). Download Python-3.12 wheels beforehand where there is one,
#     pip download --only-binary=:all: --python-version 3.12 -d .gpu_wheels \
#         pyyaml click submitit cloudpickle pytest pytest-timeout pluggy iniconfig
# and bring the folder along (WHEELS=path, default .gpu_wheels): each missing package is installed
# from it on its own (so one absent wheel does not stop the others), never from a registry.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
BUDGET_S="${BUDGET_S:-460}"   # the whole check; the benchmark gets what the tests leave
mkdir -p "$OUT"
export KEBENCH_NO_PROGRESS=1 KEBENCH_CACHE="$OUT/cache" PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
{
  date -u; nvidia-smi || true
  python3 -c "import sys, torch, timm; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

WHEELS="${WHEELS:-.gpu_wheels}"
missing=$(python3 - <<'PY'
import importlib.util
mods = {"yaml": "pyyaml", "click": "click", "pytest": "pytest", "pytest_timeout": "pytest-timeout",
        "rich": "rich", "timm": "timm", "sklearn": "scikit-learn", "pandas": "pandas", "scipy": "scipy",
        "matplotlib": "matplotlib"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
PY
)
for pkg in $missing; do
  if [ -d "$WHEELS" ]; then
    python3 -m pip install --no-index --find-links "$WHEELS" "$pkg" >> "$OUT/pip.log" 2>&1 \
      && echo "== installed $pkg from $WHEELS" || echo "== $pkg: no usable wheel in $WHEELS (see pip.log)"
  else
    echo "== $pkg is missing and there is no wheel folder $WHEELS (see the top of this script)"
  fi
done

echo "== install (pip install --no-deps -e .)"
python3 -m pip install --no-deps --no-build-isolation -e . >> "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; echo "install failed"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree's kebench, installed or not

timeout_flag=""
python3 -c "import pytest_timeout" 2>/dev/null && timeout_flag="--timeout=120"
limit=$(( $(left) < 240 ? $(left) : 240 ))
echo "== pytest -m cuda, every CUDA test (limit ${limit} s)"
if [ "$limit" -gt 10 ]; then
  timeout "$limit" python3 -m pytest -m cuda tests/ -q -p no:cacheprovider -rs --durations=10 $timeout_flag \
    --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/pytest_cuda.log" | tail -40
  echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/pytest_cuda.log"
fi

limit=$(left)
echo "== benchmarks/gpu.py (limit ${limit} s)"
if [ "$limit" -gt 10 ]; then
  timeout "$limit" python3 benchmarks/gpu.py --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
  echo "gpu.py exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu.log"
else
  echo "no time left for the benchmark" | tee -a "$OUT/gpu.log"
fi
echo "== done in $(( $(date +%s) - start )) s; figures in $OUT/gpu.json and $OUT/gpu.jsonl"
