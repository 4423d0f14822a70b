#!/usr/bin/env bash
# Everything a device session checks, in one command (about 7 minutes on one H100):
# the CUDA-only tests, benchmarks/speed.py and benchmarks/gpu_checks.py. Results go to $OUT
# (the device tool's output folder) or benchmarks/results. The GPU machine lacks osqp (and the
# tests' hypothesis); fetch the wheels into the git-ignored .whl/ first and carry that folder:
#
#   pip download osqp==1.1.3 hypothesis sortedcontainers attrs pytest pluggy iniconfig --python-version 3.12 \
#       --only-binary=:all: --platform manylinux_2_28_x86_64 --no-deps -d .whl
#
#   bash benchmarks/gpu_session.sh            # on a machine with a GPU, from the repository root
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
for wheel in osqp hypothesis sortedcontainers attrs pytest pluggy iniconfig; do
    python3 -c "import $wheel" 2>/dev/null || ls .whl/$wheel-*.whl 2>/dev/null
done | xargs -r python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
# A hung CUDA test (a stream or graph deadlock) must not eat the benchmarks' device time.
timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="" -k "cuda or gpu" \
    tests/test_embedding.py tests/test_classifier.py tests/test_training.py >"$OUT/cuda_tests.txt" 2>&1
tail -3 "$OUT/cuda_tests.txt"
python3 benchmarks/speed.py --device cuda --max-seconds 330 --out "$OUT/speed.json"
timeout 120 python3 benchmarks/gpu_checks.py --out "$OUT/gpu_checks.json"
