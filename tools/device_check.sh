#!/bin/bash
# Run kernelight's tests and two short trainings with the Taichi kernels on CUDA, on a lent GPU
# machine (the `device` tool), in one call. The machine has python3 with torch and pytest but no
# Taichi and no network, so the wheels travel with the working tree.
#
# Prepare once, here (the folder is ignored by git; ~57 MB, under the 64 MiB the tool carries):
#   mkdir -p .devcarry && echo /.devcarry/ >> .git/info/exclude
#   pip download taichi==1.7.4 dill --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_27_x86_64 -d .devcarry
#   pip download trimesh tomli-w --no-deps --only-binary=:all: -d .devcarry
# Then call the device tool's run with
#   command: bash tools/device_check.sh [pytest paths...]      carry: [".devcarry"]
# and a timeout_s about 60 s above CHECK_SECONDS (default 240) plus DIST_SECONDS (default 300; the
# data-parallel tests, skipped with DIST_CHECK=0; or pass tests/engine/train/test_distributed.py
# alone as the pytest path). Results come back in $OUT:
# log.txt (everything), pytest.txt (one line per test, so a run cut by the timeout still names
# what passed and failed) and junit.xml (when pytest finished).
#
# Seen on an H100 (2026-11-27): the whole suite took 194 s; tests that need packages the machine
# lacks (robust-laplacian, imageio-ffmpeg) fail there for that reason alone.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
date
nvidia-smi -L || true
python3 -m pip install -q --no-deps --no-index .devcarry/*.whl 2>&1 | tail -2
python3 -c "import numpy, torch, taichi; print('numpy', numpy.__version__, 'torch', torch.__version__, 'taichi', taichi.__version__)"
export KERNELIGHT_ARCH=cuda KERNELIGHT_CACHE=/tmp/klcache PYTHONPATH=$PWD
python3 -c "from shaders import runtime; print('taichi arch', runtime.init())"
paths=("$@")
[ ${#paths[@]} -eq 0 ] && paths=(tests --ignore tests/viewer)
timeout "${CHECK_SECONDS:-240}" python3 -m pytest -p no:cacheprovider -o addopts= --timeout 90 -v \
    --continue-on-collection-errors -rfE --junitxml="$OUT/junit.xml" "${paths[@]}" > "$OUT/pytest.txt" 2>&1
echo "pytest exit status $? (124: cut by CHECK_SECONDS)"
grep -oE " (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) +\[" "$OUT/pytest.txt" | awk '{print $1}' | sort | uniq -c
grep -E "^(FAILED|ERROR) " "$OUT/pytest.txt" | head -40
if [ $# -eq 0 ]; then
  for m in raygauss shells; do
    echo "=== train $m on the bundled mic scene (cuda)"
    extra=()
    [ $m = shells ] && extra=(--shell-finetune-from 300 --shell-target-faces 0 --shell-grid-res 128)
    timeout 90 python3 -m engine.cli train $m --data scenes/mic/mic_100 --output /tmp/runs --no-progress \
        --max-steps 400 --eval-every 300 --eval-views 2 --checkpoint-every 300 --log-every 100 "${extra[@]}" 2>&1 | tail -6
  done
fi
# data-parallel training and device placement on CUDA (issue 17): 2 gloo ranks sharing the GPU,
# in-process single-rank references on the GPU too (KERNELIGHT_ARCH=cuda => --device auto = cuda)
if [ $# -eq 0 ] && [ "${DIST_CHECK:-1}" = 1 ]; then
  echo "=== distributed / device tests (cuda)"
  timeout "${DIST_SECONDS:-300}" python3 -m pytest -p no:cacheprovider -o addopts= --timeout 280 -v -rfE \
      tests/engine/train/test_distributed.py > "$OUT/pytest_distributed.txt" 2>&1
  echo "distributed pytest exit status $?"
  grep -E "(PASSED|FAILED|ERROR|SKIPPED)" "$OUT/pytest_distributed.txt" | tail -12
fi
date
