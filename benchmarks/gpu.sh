#!/usr/bin/env bash
# The GPU subset of the benchmark (BenchPlan.gpu in ode_momentum/benchmarking/runner.py), for a machine with CUDA:
#   - peak memory as torch.cuda.max_memory_allocated above the memory allocated before the pass,
#     stacks mlp512 and conv16, depths 32, 128, 512, every method;
#   - forward+backward time ratios against our backprop (synchronised wall clock, interleaved pairs),
#     depths 32 and 128, float32 and bfloat16;
#   - gradient error against float64 backprop at depth 128, gamma 0.9, float32 and bfloat16.
# Designed to finish in under 5 minutes on one current data-centre GPU (on CUDA the exact mode runs its
# eager integer kernels; the native C ones are CPU-only). Results: OUT/bench.json, OUT/benchmarks.md and the PNG figures.
#
# Usage:   benchmarks/gpu.sh [OUT]          (default OUT: benchmarks/results/gpu)
# Env:     PYTHON (default: python), BENCH_TIMEOUT_S (default 600: a hard stop, twice the design time)
# Exit:    0 done; 77 no usable CUDA device, nothing was run; 124 timed out; otherwise the run's own status.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
python="${PYTHON:-python}"

"$python" benchmarks/cuda_present.py "benchmarks/gpu.sh" 'the CPU benchmark is `ode-momentum bench --out DIR`.' || exit $?

status=0
timeout "${BENCH_TIMEOUT_S:-600}" "$python" -m ode_momentum.benchmarking --device cuda --out "$out" || status=$?
if [ "$status" -eq 124 ]; then
    echo "benchmarks/gpu.sh: stopped after ${BENCH_TIMEOUT_S:-600} s (designed for under 300 s); partial results are not written." >&2
fi
exit "$status"
