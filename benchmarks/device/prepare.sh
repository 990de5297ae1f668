#!/usr/bin/env bash
# Stage, under .device/ (git-ignored), what gpu_checks.sh needs on a bare GPU machine, and print
# the one device call that runs it. Run here, from anywhere, after `make setup`:
#
#     bash benchmarks/device/prepare.sh
#
# The GPU machine (see /work/.library/device/README.md) has Python 3.12 with torch, numpy, pandas,
# matplotlib, scikit-learn, pillow and tqdm, but no network: flatplug travels as a wheel built here,
# with the two packages it may lack there (robustbench, whose WideResNet the benchmarks build, and a
# pluggy new enough for flatplug). The real data and models travel through the link .device/shared
# (-> ../shared): only the files named in the call's carry list are sent (about 4 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
[ -x "$PY" ] || { echo "prepare.sh: $PY not found: run make setup first (or set PY=...)" >&2; exit 1; }
for f in data/cifar10/test.tar.gz models/zoo.json models/resnet4b.pt; do
  [ -f "$SHARED/$f" ] || { echo "prepare.sh: $SHARED/$f is missing: the GPU checks need the shared CIFAR-10 test archive and resnet4b (set SHARED=...)" >&2; exit 1; }
done
rm -rf .device/whl && mkdir -p .device/whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .device/whl .
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .device/whl \
  robustbench==1.1.1 "pluggy>=1.5"
ln -sfn "$(cd "$SHARED" && pwd)" .device/shared
du -sh .device/whl
cat <<'CALL'
staged. The device call (tool `run`; about 6 minutes on an H200, timeout_s 570):
  command: bash benchmarks/device/gpu_checks.sh
  carry:   [".device/whl", ".device/shared/data/cifar10/test.tar.gz", ".device/shared/models/zoo.json", ".device/shared/models/resnet4b.pt"]
The logs come back as gpu_checks.txt and one file per benchmark; record them in README's Performance.
CALL
