#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with CUDA:
#   1. the tests marked `gpu` (tests/test_gpu.py: peak memory flat in depth by max_memory_allocated, exact-mode
#      bit exactness with deterministic algorithms, `fit --distributed` on nccl), with warnings as errors as
#      in the rest of the suite;
#   2. the GPU benchmark subset, benchmarks/gpu.sh (peak memory, time ratios, bf16 gradient error).
# The tests take about a minute on a current data-centre GPU, the benchmark under 5 minutes.
#
# Usage:   benchmarks/gpu_check.sh [OUT]       (OUT: the benchmark's folder, default benchmarks/results/gpu)
# Env:     PYTHON (default: python), TESTS_TIMEOUT_S (default 600), BENCH_TIMEOUT_S (passed to gpu.sh)
# Exit:    0 both passed; 77 no usable CUDA device, nothing was run; otherwise the status of the first step that
#          failed (the benchmark still runs after failing tests, so one call reports both).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
python="${PYTHON:-python}"
# deterministic cuBLAS GEMMs need a fixed workspace, chosen before the first cuBLAS call
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"

"$python" benchmarks/cuda_present.py "benchmarks/gpu_check.sh" 'on the CPU the gpu tests skip themselves (`python -m pytest`).' || exit $?

echo "benchmarks/gpu_check.sh: 1/2 python -m pytest -m gpu"
tests=0
timeout "${TESTS_TIMEOUT_S:-600}" "$python" -m pytest -m gpu -q tests || tests=$?
if [ "$tests" -eq 124 ]; then
    echo "benchmarks/gpu_check.sh: the gpu tests stopped after ${TESTS_TIMEOUT_S:-600} s." >&2
fi

echo "benchmarks/gpu_check.sh: 2/2 benchmarks/gpu.sh $out"
bench=0
PYTHON="$python" benchmarks/gpu.sh "$out" || bench=$?

if [ "$tests" -ne 0 ]; then
    echo "benchmarks/gpu_check.sh: FAILED: the gpu tests (status $tests); benchmark status $bench." >&2
    exit "$tests"
fi
if [ "$bench" -ne 0 ]; then
    echo "benchmarks/gpu_check.sh: FAILED: the benchmark (status $bench)." >&2
    exit "$bench"
fi
echo "benchmarks/gpu_check.sh: passed; benchmark results in $out"
