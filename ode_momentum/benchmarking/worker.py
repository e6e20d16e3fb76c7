"""Peak resident memory of one forward+backward, measured in a fresh process.

Run as ``python -m ode_momentum.benchmarking.worker '<json spec>'``; prints one JSON line. The parent
(:func:`peak_rss`) starts it with glibc's allocator told to serve every block of 16 KiB or more with its own
``mmap`` and to give freed memory back (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so the
resident set follows the live tensors instead of the allocator's cache.

In the worker: build the stack and the method, allocate the parameter gradients, run one warm-up
forward+backward (lazy initialisation, ``torch.compile``), zero the gradients, trim the heap, reset the
kernel's high-water mark (``/proc/self/clear_refs``, value 5), read it as the baseline, run the measured
forward+backward and read it again. The difference is the memory the pass needed above the model, its
gradients and its input: activations, saved states and the backward's transients. The counter is ``VmHWM``
(``/proc/self/status``), the resettable part of ``ru_maxrss``: ``getrusage`` reports the larger of it and the
high-water marks of threads that have exited, which nothing resets. Where ``/proc`` is missing the worker
falls back to ``ru_maxrss`` and says so.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys

ENV = {
    "MALLOC_MMAP_THRESHOLD_": "16384",  # bytes: blocks from 16 KiB are mmapped and unmapped when freed
    "MALLOC_TRIM_THRESHOLD_": "16384",
    "MALLOC_ARENA_MAX": "1",
    "OMP_NUM_THREADS": "1",
}
WORKER_TIMEOUT_S = 900


def _maxrss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kib) * 1024


def _high_water_bytes() -> int | None:
    """The address space's peak RSS (``VmHWM``), which ``clear_refs`` resets; ``None`` where unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(spec: dict) -> dict:
    """Build the configuration of ``spec`` and return its peak RSS above the pre-forward baseline."""
    import torch

    from .methods import all_methods
    from .stacks import StackSpec, build_functions, make_input, parameters

    torch.set_num_threads(int(spec.get("threads", 1)))
    stack = StackSpec(**{k: spec["stack"][k] for k in ("name", "kind", "width", "batch", "size")})
    functions = build_functions(stack, spec["depth"], seed=spec.get("seed", 0))
    model = all_methods()[spec["method"]].build(functions, spec["gamma"], spec.get("site_dir"))
    x = make_input(stack).requires_grad_(True)
    params = parameters(functions)
    for p in params:
        p.grad = torch.zeros_like(p)

    model(x).square().mean().backward()  # warm-up
    for p in params:
        p.grad.zero_()
    x.grad = None
    _trim()
    reset = _reset_high_water()
    rss_now = current_rss_bytes()
    hwm_before, maxrss_before = _high_water_bytes(), _maxrss_bytes()
    model(x).square().mean().backward()
    hwm_after, maxrss_after = _high_water_bytes(), _maxrss_bytes()
    # ru_maxrss is the larger of VmHWM and the high-water marks of threads that have exited (the kernel's
    # signal->maxrss), which no call resets: after a reset, VmHWM is the resettable part of ru_maxrss.
    use_hwm = reset and hwm_before is not None and hwm_after is not None
    baseline, peak = (hwm_before, hwm_after) if use_hwm else (maxrss_before, maxrss_after)
    return {
        "value": peak - baseline,
        "counter": "VmHWM after clear_refs" if use_hwm else "ru_maxrss",
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "current_rss_before_bytes": rss_now,
        "ru_maxrss_before_bytes": maxrss_before,
        "ru_maxrss_after_bytes": maxrss_after,
    }


def peak_rss(spec: dict, *, timeout: float = WORKER_TIMEOUT_S) -> dict:
    """Run :func:`measure` in a fresh ``python -m`` process; raise ``RuntimeError`` with its stderr on failure."""
    env = {**os.environ, **ENV}
    cmd = [sys.executable, "-m", __name__, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise RuntimeError(f"worker exited with status {done.returncode}: {tail}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ode_momentum.benchmarking.worker '<json spec>'", file=sys.stderr)
        return 2
    result = measure(json.loads(argv[0]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
