#!/usr/bin/env bash
# One GPU check, prepared for a lent accelerator (15 minutes of device time, this takes < 8):
# install kebench without touching the machine's packages, run the CUDA tests, run the GPU benchmark.
# Everything it prints also lands under $OUT (default ./gpu_check_out): pip.log, pytest_cuda.log,
# junit.xml, gpu.log, gpu.json, env.txt.
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# A machine without a package index may lack kebench's small pure-Python dependencies (pyyaml,
# click, submitit, pytest). Download them beforehand on a machine that has one,
#     pip download --only-binary=:all: -d .gpu_wheels pyyaml click submitit cloudpickle pytest pluggy iniconfig
# and bring the folder along (WHEELS=path, default .gpu_wheels): missing ones are installed from it.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export KEBENCH_NO_PROGRESS=1 KEBENCH_CACHE="$OUT/cache"
start=$(date +%s)
{
  date -u; nvidia-smi || true
  python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

WHEELS="${WHEELS:-.gpu_wheels}"
missing=$(python - <<'PY'
import importlib.util
mods = {"yaml": "pyyaml", "click": "click", "submitit": "submitit", "pytest": "pytest", "rich": "rich",
        "timm": "timm", "sklearn": "scikit-learn", "pandas": "pandas", "scipy": "scipy", "matplotlib": "matplotlib"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "== missing packages: $missing"
  if [ -d "$WHEELS" ]; then
    pip install --no-index --find-links "$WHEELS" $missing 2>&1 | tail -3
  else
    echo "   no wheel folder $WHEELS to install them from (see the top of this script)"
  fi
fi

echo "== install (pip install --no-deps -e .)"
pip install --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; echo "install failed"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree's kebench, installed or not

echo "== pytest -m cuda (limit 240 s)"
timeout 240 python -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider -rs --durations=10 \
  --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/pytest_cuda.log" | tail -40
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/pytest_cuda.log"

left=$(( 460 - ($(date +%s) - start) ))
echo "== benchmarks/gpu.py (limit ${left} s)"
timeout "$left" python benchmarks/gpu.py --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
echo "gpu.py exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu.log"
echo "== done in $(( $(date +%s) - start )) s; figures in $OUT/gpu.json"
