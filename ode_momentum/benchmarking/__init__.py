"""The measurement harness: ``ode-momentum bench [--quick] --out DIR``.

Compares our gradient modes (``backprop``, ``reversible``, ``checkpoint``, ``exact``, and ``exact`` with its
eager torch kernels instead of the native ones) with the reference package ``momentumnet`` 0.10 (both modes), torchdiffeq's
``odeint`` and ``odeint_adjoint`` on the first-order form, and ``torch.utils.checkpoint``, over MLP and conv
stacks: saved-activation bytes, peak memory, forward+backward time ratios, gradient errors; plus a
work-precision comparison of the integrators. Writes ``bench.json``, PNG figures and ``benchmarks.md``
(:func:`run_bench`; :func:`rewrite_report` redraws them from a ``bench.json``).

Modules: :mod:`.stacks` (what is measured), :mod:`.methods` (who is compared), :mod:`.packages` (finding and
installing the reference package), :mod:`.measure` (how), :mod:`.worker` (peak RSS in a fresh process),
:mod:`.runner` (the plan and the run), :mod:`.report` (targets, figures, Markdown), :mod:`.cli` (the
``bench`` subcommand).
"""

from .cli import add_bench_parser, run_bench_command
from .methods import Method, all_methods
from .runner import BenchConfig, BenchPlan, rewrite_report, run_bench
from .stacks import STACKS, StackSpec

__all__ = [
    "BenchConfig",
    "BenchPlan",
    "Method",
    "STACKS",
    "StackSpec",
    "add_bench_parser",
    "all_methods",
    "rewrite_report",
    "run_bench",
    "run_bench_command",
]
