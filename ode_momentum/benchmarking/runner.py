"""The benchmark run: what is measured (:class:`BenchPlan`), how it is run (:class:`BenchConfig`), and
:func:`run_bench`, which measures, evaluates the issue's targets and writes JSON, figures and Markdown.

Every planned cell (measurement x stack x depth x gamma x method) produces one record: a value, or the
status ``"unavailable"`` (the package could not be imported or installed, with the reason), ``"skipped"``
(predicted too costly, with the rule), ``"error"`` (the method raised; the message is kept) or
``"nonfinite"`` (a gradient of nan or inf). Nothing is dropped. :func:`rewrite_report` regenerates the
targets, figures and Markdown from a ``bench.json`` without measuring.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from . import measure
from .methods import Method, all_methods, reference_model
from .packages import MOMENTUMNET, PackageStatus, default_site_dir, ensure_momentumnet, torchdiffeq_status
from .report import RESULTS_FILE
from .stacks import STACKS, StackSpec, build_functions, converted, make_input
from .worker import current_rss_bytes, peak_rss

SCHEMA = "ode-momentum-bench/1"
TIMING_METHOD = "backprop"  # every time ratio is against our own backprop, interleaved
KINDS = ("saved_bytes", "peak_memory", "time_ratio", "grad_error")
RSS_PARALLEL_MAX_PARAM_BYTES = 256 * 2**20
STATUSES = ("ok", "unavailable", "skipped", "error", "nonfinite")


@dataclass
class BenchPlan:
    """Which cells are measured. Depths, gammas and repeats are explicit so the report can say what ran.

    Attributes
    ----------
    stacks : tuple of StackSpec
    memory_depths, memory_gammas : tuple
        Saved-activation bytes (a forward pass each) at every combination.
    rss_stacks, rss_depths : tuple
        Peak memory: peak RSS in a fresh process on CPU, ``max_memory_allocated`` on CUDA, at ``gamma``.
    rss_methods : tuple of str or None
        Methods of the peak-memory cells (``None``: all; each CPU cell costs a process start, ~2-3 s).
    rss_jobs : int
        Worker processes run at once for the CPU peak-memory cells (each measures only itself; no time is
        measured meanwhile).
    time_depths : tuple of int
        Forward+backward time ratios against ``backprop`` at ``gamma``.
    time_repeats : int
        Interleaved pairs per ratio at :attr:`target_depth` (the depth of the issue's time targets).
    time_repeats_other : int
        Pairs at the other depths of ``time_depths``.
    time_warmup : int
        Unmeasured pairs before the measured ones.
    grad_depths : tuple of int
        Gradient error against float64 backprop at ``gamma``.
    grad_gammas : tuple of float
        Further gammas of the gradient error at :attr:`grad_gamma_depth`.
    gamma : float
        The gamma of the peak-memory, time and depth-sweep gradient measurements.
    target_depth : int
        Depth of the time targets (32).
    grad_gamma_depth : int
        Depth of the gamma sweep of the gradient error and of the gradient target (128).
    wp_step_counts, wp_rtols : tuple or None
        Work-precision sizes (``None``: skip it).
    dtypes : tuple of str
        State dtypes of the time and gradient cells (``"float32"``; the GPU plan adds ``"bfloat16"``).
    name : str
        ``"full"``, ``"quick"``, ``"gpu"`` or ``"custom"`` (recorded in the report).
    time_cell_budget_s : float
        Wall seconds one time cell may take: a method whose warm-up pair is slow gets fewer pairs (at least 3).
    max_all_params_work : float
        Cells of a method whose backward touches every parameter at every step
        (:attr:`~ode_momentum.benchmarking.methods.Method.all_params_per_step`) are skipped, with the reason
        recorded, when ``depth * depth * params_per_layer`` exceeds this (2.5e9: ~30 s per forward+backward on
        a 2-core CPU; the cost grows quadratically in depth).
    """

    stacks: tuple[StackSpec, ...]
    memory_depths: tuple[int, ...]
    memory_gammas: tuple[float, ...]
    rss_stacks: tuple[str, ...]
    rss_depths: tuple[int, ...]
    time_depths: tuple[int, ...]
    time_repeats: int
    time_repeats_other: int
    time_warmup: int
    grad_depths: tuple[int, ...]
    grad_gammas: tuple[float, ...]
    gamma: float = 0.9
    target_depth: int = 32
    grad_gamma_depth: int = 128
    wp_step_counts: tuple[int, ...] | None = None
    wp_rtols: tuple[float, ...] | None = None
    dtypes: tuple[str, ...] = ("float32",)
    rss_methods: tuple[str, ...] | None = None
    name: str = "custom"
    time_cell_budget_s: float = 90.0
    max_all_params_work: float = 2.5e9
    rss_jobs: int = 2

    @classmethod
    def full(cls) -> "BenchPlan":
        """The full run (about 30-40 minutes on 2 shared CPU cores)."""
        from ..analysis.work_precision import RTOLS, STEP_COUNTS

        return cls(
            stacks=tuple(STACKS.values()),
            memory_depths=(8, 32, 128, 512),
            memory_gammas=(0.5, 0.9, 0.99),
            rss_stacks=tuple(STACKS),
            rss_depths=(8, 32, 128, 512),
            time_depths=(8, 32, 128),
            time_repeats=15,
            time_repeats_other=7,
            time_warmup=2,
            grad_depths=(8, 32, 128, 512),
            grad_gammas=(0.5, 0.99),
            wp_step_counts=STEP_COUNTS,
            wp_rtols=RTOLS,
            name="full",
        )

    @classmethod
    def quick(cls) -> "BenchPlan":
        """A few minutes: every target's cell, fewer depths, gammas and repeats, peak RSS on one stack."""
        from ..analysis.work_precision import QUICK_RTOLS, QUICK_STEP_COUNTS

        return cls(
            stacks=tuple(STACKS.values()),
            memory_depths=(8, 32, 128),
            memory_gammas=(0.9,),
            rss_stacks=("mlp64",),
            rss_depths=(128,),
            time_depths=(32,),
            time_repeats=7,
            time_repeats_other=5,
            time_warmup=1,
            grad_depths=(32, 128),
            grad_gammas=(),
            wp_step_counts=QUICK_STEP_COUNTS,
            wp_rtols=QUICK_RTOLS,
            name="quick",
        )

    @classmethod
    def gpu(cls) -> "BenchPlan":
        """The CUDA subset of ``benchmarks/gpu.sh``: memory, time and bf16 gradients, under 5 minutes."""
        stacks = (STACKS["mlp512"], STACKS["conv16"])
        return cls(
            stacks=stacks,
            memory_depths=(32, 128, 512),
            memory_gammas=(0.9,),
            rss_stacks=tuple(s.name for s in stacks),
            rss_depths=(32, 128, 512),
            time_depths=(32, 128),
            time_repeats=15,
            time_repeats_other=9,
            time_warmup=3,
            grad_depths=(128,),
            grad_gammas=(),
            dtypes=("float32", "bfloat16"),
            name="gpu",
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stacks"] = [s.as_dict() for s in self.stacks]
        return d


@dataclass
class BenchConfig:
    """Settings of :func:`run_bench`.

    Attributes
    ----------
    out : Path
        Folder for ``bench.json``, the PNG figures and ``benchmarks.md`` (created if missing).
    quick : bool
        Use :meth:`BenchPlan.quick` (ignored when ``plan`` is given).
    device : str
        ``"cpu"`` or ``"cuda"`` (``cuda`` uses :meth:`BenchPlan.gpu` unless ``plan`` is given).
    methods : tuple of str or None
        Restrict to these methods (``backprop`` is always kept: it is the timing reference).
    stacks : tuple of str or None
        Restrict to these stacks.
    install : bool
        Install ``momentumnet`` 0.10 (``pip --no-deps --target``) when it is missing.
    site_dir : Path or None
        Its private install folder (default ``~/.cache/ode-momentum/bench-packages``).
    threads : int
        torch intra-op threads during the run (restored afterwards); 1 makes CPU-time ratios meaningful.
    progress : bool
        tqdm progress bar on stderr.
    docs : Path or None
        Also write the Markdown report here (figure links relative to it), e.g. ``docs/benchmarks.md``.
    command : str or None
        The command line to record (default: ``sys.argv``).
    plan : BenchPlan or None
        Explicit plan (tests use tiny ones).
    """

    out: Path
    quick: bool = False
    device: str = "cpu"
    methods: tuple[str, ...] | None = None
    stacks: tuple[str, ...] | None = None
    install: bool = True
    site_dir: Path | None = None
    threads: int = 1
    progress: bool = True
    docs: Path | None = None
    command: str | None = None
    plan: BenchPlan | None = field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.out, (str, Path)):
            raise TypeError(f"`out` must be a folder path; got {self.out!r} ({type(self.out).__name__}).")
        self.out = Path(self.out)
        self.docs = Path(self.docs) if self.docs is not None else None
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"`device` must be 'cpu' or 'cuda'; got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("`device` is 'cuda' but torch.cuda.is_available() is False (no GPU or a CPU build "
                             "of torch). Run on a GPU machine, or use --device cpu.")
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"`threads` must be a positive int; got {self.threads!r}.")
        known = all_methods()
        for name in self.methods or ():
            if name not in known:
                raise ValueError(f"`methods` must be among {list(known)}; got {name!r}.")
        if self.plan is None:
            self.plan = (BenchPlan.gpu() if self.device == "cuda" else
                         BenchPlan.quick() if self.quick else BenchPlan.full())
        if self.stacks is not None:
            names = [s.name for s in self.plan.stacks]
            for name in self.stacks:
                if name not in names:
                    raise ValueError(f"`stacks` must be among {names}; got {name!r}.")
            self.plan = replace(self.plan, stacks=tuple(s for s in self.plan.stacks if s.name in self.stacks))


# ----------------------------------------------------------------------------------------------- records


def _record(kind, stack: StackSpec, depth, gamma, method, dtype, device, **fields) -> dict:
    row = {"kind": kind, "stack": stack.name, "depth": depth, "gamma": gamma, "method": method, "dtype": dtype,
           "device": device, "status": "ok", "value": None, "reason": None, "warnings": [], "seconds": None}
    row.update(fields)
    return row


def _measure_into(row: dict, fn: Callable[[], dict]) -> dict:
    """Run ``fn`` (returns fields, at least ``value``) into ``row``, keeping errors and warnings."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            row.update(fn())
            value = row["value"]
            if isinstance(value, float) and not math.isfinite(value):
                row.update(status="nonfinite", value=None, reason="non-finite value (nan or inf)")
        except Exception as err:  # a method that raises is a result to report, not a crash of the run
            row.update(status="error", value=None, reason=f"{type(err).__name__}: {err}"[:600])
    row["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})[:5]
    row["seconds"] = round(time.perf_counter() - start, 3)
    _release_memory(collect=False)
    row["runner_rss_bytes"] = current_rss_bytes()  # this process after the cell (a leak would show here)
    return row


def _release_memory(collect: bool = True) -> None:
    """Collect garbage (``collect``) and give the heap's free pages back to the system (glibc ``malloc_trim``).

    glibc keeps freed blocks of up to 32 MiB in its heap, so without this the runner's resident set ratchets
    up to several times the largest working set (19 GiB at the width-512 stack's depth 512) and the peak-RSS
    workers it starts can run out of memory.
    """
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no nan or inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- machine


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"{rev}{' (uncommitted changes)' if dirty else ''}" if rev else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        return round(kib / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def machine_info(device: str) -> dict:
    """Platform, CPU, memory and versions: what the figures depend on (the run adds the load averages)."""
    import numpy
    import torchdiffeq

    import ode_momentum

    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchdiffeq": getattr(torchdiffeq, "__version__", None),
        "numpy": numpy.__version__,
        "ode_momentum": ode_momentum.__version__,
        "git": _git_revision(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32  # TF32 convolutions change float32 errors
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return info


# -------------------------------------------------------------------------------------------------- run


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="bench", unit="cell", dynamic_ncols=True)

    def step(self, text: str, n: int = 1):
        if self.bar is not None:
            self.bar.set_postfix_str(text[:60])
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _skip_reason(method: Method, stack: StackSpec, depth: int, plan: BenchPlan) -> str | None:
    """Why a cell is not run (its predicted cost), or None."""
    if not method.all_params_per_step:
        return None
    work = depth * depth * stack.params_per_layer
    if work <= plan.max_all_params_work:
        return None
    return (f"its backward takes a vector-Jacobian product against all {depth * stack.params_per_layer:,} "
            f"parameters at each of the {depth} steps (depth^2 x params per layer = {work:.2g} > "
            f"{plan.max_all_params_work:.2g}, the plan's limit)")


def _availability(methods: dict[str, Method], packages: dict[str, PackageStatus]) -> dict[str, str | None]:
    """Method name -> None (available) or the reason it is not."""
    out = {}
    for name, method in methods.items():
        status = packages.get(method.package) if method.package else None
        out[name] = None if status is None or status.available else f"package {method.package}: {status.reason}"
    return out


def _count_cells(plan: BenchPlan, n_methods: int) -> int:
    per_stack = len(plan.memory_depths) * len(plan.memory_gammas) * n_methods
    per_stack += len(plan.time_depths) * (n_methods - 1) * len(plan.dtypes)
    grad_cells = len(plan.grad_depths) + sum(1 for _ in plan.grad_gammas)
    per_stack += grad_cells * n_methods * len(plan.dtypes)
    total = per_stack * len(plan.stacks)
    n_rss = n_methods if plan.rss_methods is None else len(plan.rss_methods)
    total += sum(1 for s in plan.stacks if s.name in plan.rss_stacks) * len(plan.rss_depths) * n_rss
    return total


def rewrite_report(out: Path, docs: Path | None = None) -> dict:
    """Regenerate the targets, figures and Markdown from an existing ``out/bench.json`` (no measurement)."""
    from .report import evaluate_targets, write_report

    path = Path(out) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {out}: run the benchmark first (without --report-only).")
    results = json.loads(path.read_text())
    results["targets"] = json_safe(evaluate_targets(results))
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    write_report(results, Path(out), docs=docs)
    return results


def run_bench(config: BenchConfig) -> dict:
    """Measure, evaluate the targets and write ``bench.json``, the PNG figures and ``benchmarks.md``.

    Returns
    -------
    dict
        The results (the content of ``bench.json``).
    """
    from .report import evaluate_targets, write_report

    started = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    plan = config.plan
    device = torch.device(config.device)
    config.out.mkdir(parents=True, exist_ok=True)
    site_dir = config.site_dir or default_site_dir()

    packages = {MOMENTUMNET: ensure_momentumnet(site_dir, install=config.install), "torchdiffeq": torchdiffeq_status()}
    methods = all_methods()
    if config.methods is not None:
        keep = set(config.methods) | {TIMING_METHOD}
        methods = {k: m for k, m in methods.items() if k in keep}
    unavailable = _availability(methods, packages)
    mn_site = packages[MOMENTUMNET].site_dir

    records: list[dict] = []
    progress = _Progress(_count_cells(plan, len(methods)), config.progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for stack in plan.stacks:
            _run_stack(stack, plan, methods, unavailable, mn_site, device, records, progress)
            if stack.name in plan.rss_stacks:
                _run_peak_memory(stack, plan, methods, unavailable, mn_site, device, config.threads, records, progress)
        work_precision = _run_work_precision(plan, config.progress)
    finally:
        torch.set_num_threads(threads)
        progress.close()

    results = {
        "schema": SCHEMA,
        "command": config.command or " ".join(["ode-momentum" if Path(sys.argv[0]).name == "ode-momentum"
                                               else Path(sys.argv[0]).name, *sys.argv[1:]]),
        "quick": config.quick,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": None,
        "machine": machine_info(config.device),
        "threads": config.threads,
        "plan": plan.as_dict(),
        "packages": {name: status.as_dict() for name, status in packages.items()},
        "methods": {name: {**m.as_dict(), "available": unavailable[name] is None, "reason": unavailable[name]}
                    for name, m in methods.items()},
        "records": records,
        "work_precision": work_precision,
    }
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average"] = load_start
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["seconds"] = round(time.perf_counter() - started, 1)
    results = json_safe(results)
    (config.out / RESULTS_FILE).write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    write_report(results, config.out, docs=config.docs)
    return results


def _run_stack(stack, plan, methods, unavailable, site_dir, device, records, progress):
    depths = sorted(set(plan.memory_depths) | set(plan.time_depths) | set(plan.grad_depths)
                    | ({plan.grad_gamma_depth} if plan.grad_gammas else set()))
    dev = device.type
    for depth in depths:
        functions = build_functions(stack, depth, device=device)
        x = make_input(stack, device=device)

        def build(method: Method, gamma: float, fns=functions):
            return method.build(fns, gamma, site_dir)

        if depth in plan.memory_depths:
            for gamma in plan.memory_gammas:
                for name, method in methods.items():
                    row = _record("saved_bytes", stack, depth, gamma, name, "float32", dev)
                    if unavailable[name]:
                        row.update(status="unavailable", reason=unavailable[name])
                    else:
                        _measure_into(row, lambda: {"value": measure.saved_bytes(build(method, gamma),
                                                                                 x.clone().requires_grad_(True))})
                        if depth == min(plan.memory_depths) and gamma == plan.gamma and row["status"] == "ok":
                            summary, total = measure.saved_tensor_summary(build(method, gamma),
                                                                          x.clone().requires_grad_(True))
                            row["saved"] = summary
                            if total != row["value"]:  # the breakdown must describe the counted bytes
                                row["saved_mismatch"] = total
                    records.append(row)
                    progress.step(f"{stack.name} d{depth} saved bytes {name}")

        if depth in plan.time_depths:
            repeats = plan.time_repeats if depth == plan.target_depth else plan.time_repeats_other
            for dtype_name in plan.dtypes:
                dtype = getattr(torch, dtype_name)
                fns = functions if dtype == torch.float32 else converted(functions, dtype)
                xt = x.to(dtype).requires_grad_(True)
                reference = methods[TIMING_METHOD].build(fns, plan.gamma, site_dir)
                for name, method in methods.items():
                    if name == TIMING_METHOD:
                        continue
                    row = _record("time_ratio", stack, depth, plan.gamma, name, dtype_name, dev,
                                  against=TIMING_METHOD)
                    skip = _skip_reason(method, stack, depth, plan)
                    if unavailable[name]:
                        row.update(status="unavailable", reason=unavailable[name])
                    elif skip:
                        row.update(status="skipped", reason=skip)
                    else:
                        _measure_into(row, lambda: measure.time_ratio(
                            reference, method.build(fns, plan.gamma, site_dir), fns, xt, repeats=repeats,
                            warmup=plan.time_warmup, budget_s=plan.time_cell_budget_s))
                    records.append(row)
                    progress.step(f"{stack.name} d{depth} time {name}")

        gammas = ([plan.gamma] if depth in plan.grad_depths else []) + (
            [g for g in plan.grad_gammas] if depth == plan.grad_gamma_depth else [])
        for gamma in gammas:
            _run_grad_errors(stack, depth, gamma, functions, x, plan, methods, unavailable, site_dir, dev,
                             records, progress)
        del functions, x
        _release_memory()


def _run_grad_errors(stack, depth, gamma, functions, x, plan, methods, unavailable, site_dir, dev, records,
                     progress):
    """Gradient-error cells of one (stack, depth, gamma), one float64 reference at a time (they are as large as
    the parameters: 2 GiB for the width-512 stack at depth 512)."""
    rows: dict[tuple[str, str], dict] = {}
    for dtype_name in plan.dtypes:
        for name, method in methods.items():
            row = _record("grad_error", stack, depth, gamma, name, dtype_name, dev,
                          against=f"float64 {method.reference}")
            skip = _skip_reason(method, stack, depth, plan)
            if unavailable[name]:
                row.update(status="unavailable", reason=unavailable[name])
            elif skip:
                row.update(status="skipped", reason=skip)
            rows[(dtype_name, name)] = row
    for kind in dict.fromkeys(m.reference for m in methods.values()):
        todo = [(d, n) for (d, n), row in rows.items() if methods[n].reference == kind and row["status"] == "ok"]
        if not todo:
            continue
        try:
            f64 = converted(functions, torch.float64)
            want: list | Exception = measure.gradients(reference_model(kind, f64, gamma), f64, x.double())
            del f64
        except Exception as err:  # reported in every cell that needed it
            want = err
        for dtype_name in plan.dtypes:
            dtype = getattr(torch, dtype_name)
            fns = functions if dtype == torch.float32 else converted(functions, dtype)
            for d, name in todo:
                if d != dtype_name:
                    continue

                def run(method=methods[name]):
                    if isinstance(want, Exception):
                        raise RuntimeError(f"the float64 reference failed: {want}")
                    return measure.gradient_error(measure.gradients(method.build(fns, gamma, site_dir), fns,
                                                                    x.to(dtype), keep=False), want)

                _measure_into(rows[(d, name)], run)
                progress.step(f"{stack.name} d{depth} g{gamma} grad {name}")
        del want
        gc.collect()
    for (_, name), row in rows.items():
        if row["seconds"] is None:  # unavailable or skipped: counted on the bar too
            progress.step(f"{stack.name} d{depth} g{gamma} grad {name}")
    records.extend(rows.values())


def _run_peak_memory(stack, plan, methods, unavailable, site_dir, device, threads, records, progress):
    """Peak-memory cells: fresh worker processes on CPU (``plan.rss_jobs`` at a time), in-process on CUDA."""
    dev = device.type
    rows, pending = [], []
    for depth in plan.rss_depths:
        for name, method in methods.items():
            if plan.rss_methods is not None and name not in plan.rss_methods:
                continue
            row = _record("peak_memory", stack, depth, plan.gamma, name, "float32", dev,
                          counter="peak RSS, fresh process" if dev == "cpu" else "cuda max_memory_allocated")
            rows.append(row)
            skip = _skip_reason(method, stack, depth, plan)
            if unavailable[name]:
                row.update(status="unavailable", reason=unavailable[name])
            elif skip:
                row.update(status="skipped", reason=skip)
            else:
                pending.append((row, method))
                continue
            progress.step(f"{stack.name} d{depth} peak memory {name}")

    cache: dict[int, tuple] = {}  # CUDA: one depth's stack at a time, shared by its methods

    def run_one(item):
        row, method = item
        if dev == "cpu":
            spec = {"stack": stack.as_dict(), "depth": row["depth"], "gamma": plan.gamma, "method": row["method"],
                    "site_dir": site_dir, "threads": threads}
            _measure_into(row, lambda: peak_rss(spec))
            return row
        if row["depth"] not in cache:
            cache.clear()
            gc.collect()
            torch.cuda.empty_cache()
            cache[row["depth"]] = (build_functions(stack, row["depth"], device=device),
                                   make_input(stack, device=device))
        functions, x = cache[row["depth"]]

        def run():
            model = method.build(functions, plan.gamma, site_dir)
            return {"value": measure.cuda_peak_bytes(model, functions, x.clone().requires_grad_(True))}

        _measure_into(row, run)
        for f in functions:
            f.zero_grad(set_to_none=True)
        return row

    # CPU workers run plan.rss_jobs at a time, except those whose parameters alone take more than
    # RSS_PARALLEL_MAX_PARAM_BYTES (with gradients and transients a worker needs about 4x that); CUDA cells
    # share the device's allocator: one at a time.
    small = [item for item in pending
             if dev == "cpu" and _param_bytes(stack, item[0]["depth"]) <= RSS_PARALLEL_MAX_PARAM_BYTES]
    large = [item for item in pending if item not in small]
    _release_memory()
    for items, jobs in ((small, plan.rss_jobs), (large, 1)):
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for row in pool.map(run_one, items):
                progress.step(f"{stack.name} d{row['depth']} peak memory {row['method']}")
    records.extend(rows)


def _param_bytes(stack: StackSpec, depth: int) -> int:
    return 4 * depth * stack.params_per_layer


def _run_work_precision(plan: BenchPlan, progress: bool) -> list[dict]:
    """Our integrators against torchdiffeq's rk4 and dopri5 on the two second-order test problems."""
    if plan.wp_step_counts is None:
        return []
    from ..analysis.problems import damped_oscillator, forced_pendulum
    from ..analysis.work_precision import work_precision

    rows = []
    for problem in (damped_oscillator(), forced_pendulum()):
        table = work_precision(problem, step_counts=plan.wp_step_counts, rtols=plan.wp_rtols or (),
                               baselines=("rk4", "dopri5"), progress=progress)
        for row in table:
            rows.append({"problem": problem.name, **row})
    return rows


__all__ = ["BenchConfig", "BenchPlan", "KINDS", "SCHEMA", "STATUSES", "rewrite_report", "run_bench"]
