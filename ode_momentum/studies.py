"""The step-limit study as figures and files: ``ode-momentum study step-limit [--quick] --out DIR``.

:func:`run_step_limit` runs the three limits of :mod:`ode_momentum.analysis.convergence` on the forced
pendulum, depth trajectories, and the work-precision comparison on the damped oscillator and the forced
pendulum (at ``eps = 0.5`` and ``eps = 0``), then writes every table as CSV and every figure as PNG. The
``figure_*`` functions build matplotlib ``Figure`` objects (no pyplot state) for the notebook and the CLI.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

from .analysis.convergence import (
    RESNET,
    StepLimitStudy,
    depth_trajectories,
    fit_floor,
    step_limit_study,
)
from .analysis.problems import Problem, damped_oscillator, forced_pendulum
from .analysis.tidy import Table
from .analysis.work_precision import QUICK_RTOLS, QUICK_STEP_COUNTS, RTOLS, STEP_COUNTS, work_precision

# Depths drawn in the trajectory figure: coarse enough to see the layers, fine enough to see the limit.
TRAJECTORY_DEPTHS = (4, 8, 32)
# The fixed coefficient of the trajectory figure's second panel (the paper's default).
TRAJECTORY_GAMMA = 0.9
FIGSIZE = (6.4, 4.4)  # inches, one panel
DPI = 120


def _label_order(label: str, order: float) -> str:
    return f"{label} (slope {order:.2f})" if math.isfinite(order) else label


def _loglog(ax, title: str, xlabel: str, ylabel: str, *, xbase: float = 10) -> None:
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    if xbase == 10:  # ticks at 1, 2, 5 per decade, all labelled; the default's minor labels overlap
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def _positive(x: np.ndarray, y: np.ndarray):
    keep = y > 0  # log axes: an error of exactly 0 (agreement to the last bit) cannot be drawn
    return x[keep], y[keep]


def figure_discrete_limit(study: StepLimitStudy) -> Figure:
    """Limit (a): error of ``x_N`` against the momentum ODE's ``x(T)``, per net, log-log in depth ``N``."""
    fig = Figure(figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1] * 1.3), layout="constrained")
    ax = fig.add_subplot()
    table = study.discrete
    for net in table.unique("net"):
        sub = table.where(net=net)
        label = "MomentumResNet, gamma = 1 - T/(N eps)" if net == RESNET else f"{net} net (odeint, N steps)"
        style = {"marker": "o", "linestyle": "-"} if net == RESNET else {"marker": ".", "linestyle": "--"}
        ax.plot(*_positive(sub.column("depth"), sub.column("error_x")), **style,
                label=_label_order(label, study.order("a", net)))
    ax.axhline(fit_floor(study.problem), color="grey", lw=0.8, ls=":",
               label="fit floor (errors below: reference or round-off)")
    _loglog(ax, f"(a) Deep nets converge to the momentum ODE\n{study.problem.name}, eps = {study.problem.eps:g}, "
                f"T = {study.problem.horizon:g}", "depth N (step h = T / N)", "max |x_N - x(T)|", xbase=2)
    fig.legend(fontsize="small", title="net (fitted order in h)", title_fontsize="small", ncols=2,
               loc="outside lower center")  # outside the axes: the curves span the whole plot
    return fig


def figure_fixed_gamma_limit(study: StepLimitStudy) -> Figure:
    """Limit (b): with ``gamma`` fixed the net tends to ``x' = F``, not to the momentum ODE."""
    fig = Figure(figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1] * 1.2), layout="constrained")
    ax = fig.add_subplot()
    table = study.fixed_gamma
    colors = {g: f"C{i}" for i, g in enumerate(table.unique("gamma"))}
    for gamma in table.unique("gamma"):
        sub = table.where(gamma=gamma)
        depth = sub.column("depth")
        ax.plot(*_positive(depth, sub.column("error_first_order")), "o-", color=colors[gamma],
                label=_label_order(f"gamma = {gamma:g}: to x' = F", study.order("b", gamma)))
        ax.plot(*_positive(depth, sub.column("error_momentum_ode")), "s:", color=colors[gamma],
                label=f"gamma = {gamma:g}: to the eps = {study.problem.eps:g} momentum ODE")
    _loglog(ax, f"(b) Fixed gamma: the deep limit is the first-order ODE\n{study.problem.name}, "
                "effective eps_N = (T/N) / (1 - gamma) -> 0", "depth N", "max |x_N - x(T)|", xbase=2)
    fig.legend(fontsize="small", ncols=2, loc="outside lower center")
    return fig


def figure_eps_limit(study: StepLimitStudy) -> Figure:
    """Limit (c): distance of the momentum ODE's solution to the first-order one, log-log in ``eps``."""
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    table = study.eps
    eps = table.column("eps")
    ax.plot(*_positive(eps, table.column("error_x")), "o-",
            label=_label_order("position: |x_eps(T) - x_0(T)|", study.order("c", quantity="error_x")))
    ax.plot(*_positive(eps, table.column("error_v")), "s--",
            label=_label_order("velocity: |x_eps'(T) - F(T, x_0(T))|", study.order("c", quantity="error_v")))
    _loglog(ax, f"(c) eps -> 0: the momentum ODE tends to x' = F\n{study.problem.name}, T = "
                f"{study.problem.horizon:g}", "eps (inertia)", "max error at T")
    ax.legend(fontsize="small", title="quantity (fitted order in eps)", title_fontsize="small")
    return fig


def figure_trajectories(panels: Sequence[tuple[str, Table]], *, sample: int = 0, feature: int = 0) -> Figure:
    """One panel per ``(title, table)`` of :func:`~ode_momentum.analysis.convergence.depth_trajectories`:
    the net's hidden states ``x_n`` at ``t_n`` for each depth, and the continuous solution."""
    fig = Figure(figsize=(FIGSIZE[0] * len(panels), FIGSIZE[1]), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, table) in zip(axes, panels):
        rows = table.where(sample=sample, feature=feature)
        ode = rows.where(source="ode")
        ax.plot(ode.column("t"), ode.column("x"), "k-", lw=2, label="continuous limit")
        for depth in rows.where(source="net").unique("depth"):
            net = rows.where(source="net", depth=depth)
            ax.plot(net.column("t"), net.column("x"), "o--", ms=3, label=f"depth N = {depth}")
        ax.set_title(title)
        ax.set_xlabel("t (layer n at t = n T / N)")
        ax.set_ylabel(f"x(t), sample {sample}, feature {feature}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def figure_work_precision(panels: Sequence[tuple[str, Table]]) -> Figure:
    """One panel per ``(title, table)`` of :func:`~ode_momentum.analysis.work_precision.work_precision`:
    error of ``x(T)`` against evaluations of ``F``, per method (torchdiffeq baselines dashed)."""
    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(FIGSIZE[0] * cols, FIGSIZE[1] * rows), layout="constrained")
    fig.suptitle("Work-precision: error at T against evaluations of F (torchdiffeq baselines dashed)")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    methods = list(dict.fromkeys(m for _, table in panels for m in table.unique("method")))
    styles = {m: (f"C{i % 10}", "osD^v<>px*h"[i % 11]) for i, m in enumerate(methods)}  # one look per method
    for ax, (title, table) in zip(axes, panels):
        for method in table.unique("method"):
            sub = table.where(method=method)
            family = sub.column("family")[0]
            color, marker = styles[method]
            label = method if family == "ode_momentum" else f"torchdiffeq {method}"
            ax.plot(*_positive(sub.column("nfev"), sub.column("error_x")), color=color, marker=marker, ms=5,
                    mfc="none", linestyle="-" if family == "ode_momentum" else "--", label=label)
        _loglog(ax, title, "evaluations of F", "max |x_N - x(T)|")
        ax.legend(fontsize="small", ncol=2)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


@dataclass
class StepLimitConfig:
    """Settings of :func:`run_step_limit` (validated on construction).

    Raises
    ------
    TypeError
        If ``out`` is not a path or string.
    """

    out: Path  # folder for the CSV tables and PNG figures (created if missing)
    quick: bool = False  # small sizes: a few seconds instead of about a minute
    progress: bool = False  # tqdm progress bars on stderr

    def __post_init__(self):
        if not isinstance(self.out, (str, Path)):
            raise TypeError(f"`out` must be a folder path; got {self.out!r} ({type(self.out).__name__}).")
        self.out = Path(self.out)
        self.quick, self.progress = bool(self.quick), bool(self.progress)


def _with(problem_name: str, table: Table, **extra) -> list[dict]:
    return [{"problem": problem_name, **extra, **row} for row in table]


def run_step_limit(config: StepLimitConfig) -> dict[str, Path]:
    """Run the step-limit study and write its data (CSV) and figures (PNG) into ``config.out``.

    Files: ``limit_a_discrete.csv``, ``limit_b_fixed_gamma.csv``, ``limit_c_eps.csv``, ``orders.csv``,
    ``trajectories.csv``, ``work_precision.csv`` and ``limit_a_discrete.png``, ``limit_b_fixed_gamma.png``,
    ``limit_c_eps.png``, ``trajectories.png``, ``work_precision.png``.

    Returns
    -------
    dict
        File name (e.g. ``"orders.csv"``) -> path written.
    """
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    pendulum = forced_pendulum()
    study = step_limit_study(pendulum, quick=config.quick, progress=config.progress)
    traj_rule = depth_trajectories(pendulum, TRAJECTORY_DEPTHS)
    traj_fixed = depth_trajectories(pendulum, TRAJECTORY_DEPTHS, gamma=TRAJECTORY_GAMMA)
    sizes = ({"step_counts": QUICK_STEP_COUNTS, "rtols": QUICK_RTOLS} if config.quick
             else {"step_counts": STEP_COUNTS, "rtols": RTOLS})
    wp_panels: list[tuple[str, Table]] = []
    wp_rows: list[dict] = []
    problems: list[Problem] = [damped_oscillator(), pendulum]
    for problem in problems:
        for eps in (problem.eps, 0.0):
            table = work_precision(problem, eps=eps, progress=config.progress, **sizes)
            wp_panels.append((f"{problem.name}, eps = {eps:g}" + (" (x' = F)" if eps == 0 else ""), table))
            wp_rows += _with(problem.name, table)

    tables = {
        "limit_a_discrete": Table(_with(pendulum.name, study.discrete)),
        "limit_b_fixed_gamma": Table(_with(pendulum.name, study.fixed_gamma)),
        "limit_c_eps": Table(_with(pendulum.name, study.eps)),
        "orders": Table(_with(pendulum.name, study.orders)),
        "trajectories": Table(_with(pendulum.name, traj_rule, rule="1 - T/(N eps)")
                              + _with(pendulum.name, traj_fixed, rule=f"gamma = {TRAJECTORY_GAMMA:g}")),
        "work_precision": Table(wp_rows),
    }
    figures = {
        "limit_a_discrete": figure_discrete_limit(study),
        "limit_b_fixed_gamma": figure_fixed_gamma_limit(study),
        "limit_c_eps": figure_eps_limit(study),
        "trajectories": figure_trajectories([
            (f"gamma = 1 - T/(N eps): hidden states -> momentum ODE (eps = {pendulum.eps:g})", traj_rule),
            (f"gamma = {TRAJECTORY_GAMMA:g} fixed: hidden states -> x' = F", traj_fixed),
        ]),
        "work_precision": figure_work_precision(wp_panels),
    }
    paths = {}
    for name, table in tables.items():
        paths[f"{name}.csv"] = table.to_csv(out / f"{name}.csv")
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        paths[f"{name}.png"] = path
    return paths


def format_orders(orders: Table) -> str:
    """The fitted orders as aligned text lines (for the command line)."""
    lines = [f"{'limit':<6}{'group':<18}{'quantity':<20}{'order':>8}{'expected':>10}"]
    for row in orders:
        lines.append(f"{row['limit']:<6}{row['group']:<18}{row['quantity']:<20}{row['order']:>8.3f}"
                     f"{row['expected']:>10.3g}")
    return "\n".join(lines)


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``study step-limit [--quick] --out DIR`` to an argparse ``subparsers`` object.

    Follows ``ode_momentum.cli``'s convention: the leaf parser sets ``run`` (called as
    ``args.run(args, args.parser)``, returns the exit status) and ``parser`` (for error messages).
    """
    study = subparsers.add_parser(
        "study",
        help="run a numerical study; write its figures (PNG) and data (CSV)",
        description="Numerical studies of Momentum ResNets; each writes CSV tables and PNG figures.",
    )
    kinds = study.add_subparsers(title="studies", dest="study", metavar="STUDY", required=True)
    step_limit = kinds.add_parser(
        "step-limit",
        help="deep nets -> ODE: (a) gamma = 1 - T/(N eps), (b) fixed gamma, (c) eps -> 0; work-precision",
        description=(
            "The infinitesimal-step limit of Momentum ResNets on a forced damped pendulum: (a) depth-N nets with "
            "gamma = 1 - T/(N eps) converge to the momentum ODE (order 1; leapfrog nets order 2), (b) with gamma "
            "fixed the deep limit is x' = F, (c) the momentum ODE tends to x' = F as eps -> 0; plus error against "
            "evaluations of F for every integrator. Writes CSV tables and PNG figures into --out and prints the "
            "fitted orders."
        ),
    )
    step_limit.add_argument("--out", type=Path, required=True, metavar="DIR",
                            help="folder for the CSV and PNG files (created if missing)")
    step_limit.add_argument("--quick", action="store_true", help="small sizes: seconds instead of about a minute")
    step_limit.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    step_limit.set_defaults(run=run_step_limit_command, parser=step_limit)
    return step_limit


def run_step_limit_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """``ode-momentum study step-limit``: run, write the files, print the fitted orders and the file names.

    A setting the library rejects exits through ``parser.error`` (status 2) when ``parser`` is given.
    """
    start = time.perf_counter()
    try:
        config = StepLimitConfig(out=args.out, quick=args.quick, progress=args.progress)
    except (TypeError, ValueError) as err:
        if parser is None:
            raise
        parser.error(str(err))
    paths = run_step_limit(config)
    print(format_orders(Table.read_csv(paths["orders.csv"])))
    print(f"wrote {len(paths)} files to {config.out} in {time.perf_counter() - start:.1f} s:")
    for path in paths.values():
        print(f"  {path.name}")
    sys.stdout.flush()
    return 0
