"""The ``bench`` subcommand: ``ode-momentum bench [--quick] --out DIR [--docs FILE] ...``.

Follows ``ode_momentum.cli``'s convention: :func:`add_bench_parser` declares the parser on an argparse
``subparsers`` object and sets ``run`` (called as ``args.run(args, args.parser)``, returns the exit status)
and ``parser`` (for error messages).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .methods import all_methods
from .stacks import STACKS

DESCRIPTION = (
    "Measure our gradient modes against momentumnet 0.10 (installed without its dependencies into a private "
    "folder if missing), torchdiffeq odeint/odeint_adjoint and torch.utils.checkpoint on MLP (width 64, 512) and "
    "conv stacks: saved-activation bytes, peak memory (peak RSS in a fresh process on CPU), forward+backward time "
    "as interleaved ratios against our backprop, and float32 gradient error against float64 backprop; plus "
    "work-precision of the integrators against torchdiffeq rk4/dopri5. Writes bench.json, PNG figures and "
    "benchmarks.md into --out and prints the targets table. The full plan takes about 30-40 minutes on 2 CPU "
    "cores, --quick a few minutes."
)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to an argparse ``subparsers`` object and return its parser."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark memory, time and gradient error against momentumnet, torchdiffeq, torch checkpoint",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for bench.json, the PNG figures and benchmarks.md (created if missing)")
    p.add_argument("--quick", action="store_true", help="small plan: a few minutes (every target's cell measured)")
    p.add_argument("--docs", type=Path, default=None, metavar="FILE",
                   help="also write the report here with figure links relative to it (e.g. docs/benchmarks.md)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the GPU subset (max_memory_allocated, synchronised time, bf16 gradients)")
    p.add_argument("--methods", nargs="+", choices=list(all_methods()), default=None, metavar="METHOD",
                   help=f"only these methods (backprop is always kept); among {', '.join(all_methods())}")
    p.add_argument("--stacks", nargs="+", choices=list(STACKS), default=None, metavar="STACK",
                   help=f"only these stacks; among {', '.join(STACKS)}")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads during the measurements")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip-install momentumnet 0.10 when missing (its methods are reported unavailable)")
    p.add_argument("--packages-dir", type=Path, default=None, metavar="DIR",
                   help="private install folder of momentumnet (default ~/.cache/ode-momentum/bench-packages)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: rewrite the targets, figures and report from --out's bench.json")
    p.set_defaults(run=run_bench_command, parser=p)
    return p


def run_bench_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the benchmark for parsed ``args``; print the targets and the files written. Returns 0.

    A setting the library rejects exits through ``parser.error`` (status 2) when ``parser`` is given.
    """
    from .report import REPORT_FILE, RESULTS_FILE
    from .runner import BenchConfig, rewrite_report, run_bench

    if args.report_only:
        try:
            results = rewrite_report(args.out, args.docs)
        except FileNotFoundError as err:
            if parser is None:
                raise
            parser.error(str(err))
        print(format_targets(results["targets"]))
        return 0

    prefix = getattr(args, "prog", None) or "ode-momentum"
    command = prefix + " " + " ".join(shlex.quote(a) for a in getattr(args, "argv", None) or sys.argv[1:])
    try:
        config = BenchConfig(out=args.out, quick=args.quick, device=args.device, methods=args.methods,
                             stacks=args.stacks, install=not args.no_install, site_dir=args.packages_dir,
                             threads=args.threads, progress=not args.no_progress, docs=args.docs, command=command)
    except (TypeError, ValueError) as err:
        if parser is None:
            raise
        parser.error(str(err))
    results = run_bench(config)
    print(format_targets(results["targets"]))
    for name, package in results["packages"].items():
        if not package["available"]:
            print(f"{name}: unavailable ({package['reason']})")
    files = [config.out / RESULTS_FILE, config.out / REPORT_FILE] + ([config.docs] if config.docs else [])
    print(f"wrote {', '.join(str(f) for f in files)} and the PNG figures ({results['seconds']:.0f} s)")
    return 0


def format_targets(targets: Sequence[dict]) -> str:
    """Aligned text table of the targets: target, stack, measured, threshold, met."""
    cells = [("target", "stack", "measured", "threshold", "met")]
    for t in targets:
        measured = "-" if t["measured"] is None else f"{t['measured']:.3g}"
        met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
        cells.append((t["target"][:70], t["stack"], measured, f"{t['comparison']} {t['threshold']:g}", met))
    widths = [max(len(row[j]) for row in cells) for j in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ode_momentum.benchmarking``: the ``bench`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="python -m ode_momentum.benchmarking")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        argv = argv[1:]
    args = parser.parse_args(["bench", *argv])
    args.argv, args.prog = argv, "python -m ode_momentum.benchmarking"
    return args.run(args, args.parser)
