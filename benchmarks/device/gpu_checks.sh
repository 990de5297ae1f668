#!/usr/bin/env bash
# Issue 16's GPU checks in one call, each benchmark under its own time limit so that one slow or
# failing step still leaves the others' output: WideResNet-28-10 scoring on 1,000 real CIFAR-10
# images with all default measures (gpu_scoring.py), one HVP / one gradient on resnet4b and on
# WideResNet-28-10 at batch 128 (hvp_cost.py), and top-1/top-10 eigenvalues against PyHessian's
# power iteration (hessian_vs_pyhessian.py). Stage with prepare.sh first; run from the repository
# root. Logs go to $OUT (the device tool's folder) or benchmarks/out/device. Exits non-zero when
# any step failed or ran out of time.
#
# Environment: PY (python3), DEVICE (cuda), SHARED (.device/shared), QUICK=1 for a short smoke run
# (a few images and repeats: for checking the script on a CPU, not for numbers).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/out/device}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SHARED=${SHARED:-.device/shared}
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_checks.txt") 2>&1

if compgen -G ".device/whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flatplug-site .device/whl/*.whl \
    || { echo "gpu_checks.sh: installing the staged wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/flatplug-site${PYTHONPATH:+:$PYTHONPATH}
fi
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import sys, torch, flatplug; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| flatplug', flatplug.__version__, flatplug.__file__)" \
  || { echo "gpu_checks.sh: flatplug or torch does not import"; exit 1; }

if [ "${QUICK:-0}" = 1 ]; then
  SCORE_ARGS=(--n 8 --hvp-batch 4 --repeats 2 --lanczos-iters 3 --probes 2 --pgd-steps 2); LIMIT=600
  HVP_ARGS=(--models resnet4b --n 16 --repeats 2); PYH_ARGS=(--n 16 --k 1 --repeats 1 --stopping residual)
else
  SCORE_ARGS=(--n 1000); LIMIT=300
  HVP_ARGS=(--models resnet4b wrn-28-10 --n 128 --wrn-n 128 --repeats 10 --wrn-repeats 10)
  PYH_ARGS=(--n 128 --repeats 7 --stopping residual bound)
fi

failed=()
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its output also in $OUT/NAME.txt
  local name=$1 limit=$2; shift 2
  echo; echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > >(tee "$OUT/$name.txt") 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s$([ $rc = 124 ] && echo ' (time limit)')"
  [ $rc = 0 ] || failed+=("$name")
}
step gpu_scoring "$LIMIT" "$PY" benchmarks/gpu_scoring.py --device "$DEVICE" --data "$SHARED/data/cifar10/test.tar.gz" "${SCORE_ARGS[@]}"
step hvp_cost 150 "$PY" benchmarks/hvp_cost.py --device "$DEVICE" --zoo "$SHARED/models/zoo.json" --data "$SHARED/data/cifar10" "${HVP_ARGS[@]}"
step hessian_vs_pyhessian 120 "$PY" benchmarks/hessian_vs_pyhessian.py --device "$DEVICE" --zoo "$SHARED/models/zoo.json" --data "$SHARED/data/cifar10" "${PYH_ARGS[@]}"

if [ ${#failed[@]} -gt 0 ]; then echo "gpu_checks.sh: failed: ${failed[*]}"; exit 1; fi
echo "gpu_checks.sh: all steps passed"
