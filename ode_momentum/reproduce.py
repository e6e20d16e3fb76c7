"""``ode-momentum reproduce [--quick] --out DIR``: every check and figure of the project, in one HTML report.

:func:`run_reproduce` runs six *sections*, one after the other, each by calling the library function that
already does the work (nothing is recomputed here in another way):

==============  ============================================================================================
section         what runs
==============  ============================================================================================
``claims``      :func:`ode_momentum.verify.run_claims`: the numerical check of every claim of the paper
                (``ode_momentum.theory``), the table of ``ode-momentum verify``
``step-limit``  :func:`ode_momentum.studies.run_step_limit`: deep nets converging to their ODE, fixed gamma,
                ``eps -> 0``, work against precision (``ode-momentum study step-limit``)
``memory``      :func:`ode_momentum.analysis.saved_tensor_bytes` of a ``MomentumResNet`` in the ``backprop``,
                ``reversible`` and ``exact`` modes at several depths (the benchmark's ``mlp64`` stack)
``crossing``    :func:`~ode_momentum.analysis.crossing.fit_cubic` and
                :func:`~ode_momentum.analysis.crossing.fit_rings` with their figures (the 1-D map ``-x^3``
                and the nested rings)
``fit``         :func:`ode_momentum.train.fit` on the digits, Momentum ResNet and ResNet (``ode-momentum fit
                --compare``)
``robustness``  :func:`ode_momentum.robustness.run_gamma_robustness` (``ode-momentum robustness``)
==============  ============================================================================================

Each section writes its raw outputs (JSON, CSV, PNG, checkpoints) into ``DIR/<section>/``. The report,
``DIR/index.html``, is one self-contained page: every figure embedded as a base64 PNG (matplotlib, Agg), the
claims table with PASS/FAIL per check, the versions of the software and the machine, the command line and
the wall time of each section. ``DIR/report.json`` holds the same facts for programs.

A section that raises does not stop the others: its error is shown in the report and on stderr. The exit
status of the command is 0 when every section ran and every claim passes, 1 otherwise (the failing checks
are printed).

Sizes: ``"quick"`` (``--quick``, one to two minutes on 2 CPU cores) uses the quick sizes of the claims,
the step-limit study and the crossing experiments (those of ``theory/crossing.py``), the default digits fit,
and a reduced gamma-robustness study that still shows its effect (width 16, 10 epochs, five test gammas);
``"full"`` the full sizes of every study (three to five minutes). ``"tiny"`` is for the tests: seconds, and
numbers that mean nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import html
import json
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._checks import check_positive_int
from ._runs import stderr_is_tty, torch_threads

SECTIONS = ("claims", "step-limit", "memory", "crossing", "fit", "robustness")
SIZES = ("full", "quick", "tiny")
REPORT_FILE = "index.html"
SUMMARY_FILE = "report.json"
# The studies train and integrate small tensors, for which one intra-op thread is fastest on a shared machine
# (the same default as `verify`, `fit` and `robustness`).
DEFAULT_THREADS = 1
# memory section: the benchmark's MLP stack (width 64, batch 256) at the paper's gamma
MEMORY_STACK = "mlp64"
MEMORY_GAMMA = 0.9
MEMORY_MODES = ("backprop", "reversible", "exact")


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sizes:
    """How big each section runs (one instance per entry of :data:`SIZES`, see :func:`sizes_for`).

    Attributes
    ----------
    claims_quick, step_limit_quick : bool
        The ``quick`` argument of the claims' ``verify`` and of the step-limit study.
    memory_depths : tuple of int
        Depths of the saved-activation measurement.
    cubic, rings : CubicConfig, RingsConfig
        Settings of the two crossing experiments.
    fit : dict
        :class:`~ode_momentum.train.FitConfig` settings of the digits fits (beyond model, output and threads).
    robustness : dict
        :class:`~ode_momentum.robustness.GammaRobustnessConfig` settings (beyond output and threads).
    """

    claims_quick: bool
    step_limit_quick: bool
    memory_depths: tuple
    cubic: object
    rings: object
    fit: dict
    robustness: dict


def sizes_for(size: str) -> Sizes:
    """The :class:`Sizes` of ``"full"``, ``"quick"`` or ``"tiny"``.

    Raises
    ------
    ValueError
        For any other name.
    """
    from .analysis.crossing import CubicConfig, RingsConfig
    from .theory import crossing as crossing_claim

    if size == "full":
        return Sizes(False, False, (8, 16, 32, 64, 128, 256, 512, 1024), CubicConfig(), RingsConfig(), {}, {})
    if size == "quick":
        # the claim's own quick settings, so the figures show the runs the claims table checks
        return Sizes(True, True, (8, 32, 128, 512), crossing_claim.QUICK_CUBIC, crossing_claim.QUICK_RINGS, {},
                     {"width": 16, "epochs": 10, "gamma_test": (0.0, 0.5, 0.8, 0.9, 0.99)})
    if size == "tiny":
        return Sizes(
            True, True, (2, 8),
            CubicConfig(n_train=20, n_eval=41, iters=20, n_traj=5),
            RingsConfig(n_train=100, n_eval=100, iters=20, n_traj=10),
            {"epochs": 2, "depth": 3, "width": 16, "batch_size": 128},
            # `ode-momentum robustness --quick`'s smoke-test sizes
            {"width": 8, "epochs": 2, "n_train": 256, "gamma_test": (0.0, 0.5, 0.9)},
        )
    raise ValueError(f"`size` must be one of {list(SIZES)}; got {size!r}.")


@dataclass
class ReproduceConfig:
    """Settings of :func:`run_reproduce` (validated on construction).

    Raises
    ------
    TypeError, ValueError
        If ``out`` is not a path or names an existing file, ``size`` is unknown, ``sections`` is empty or
        holds an unknown name, ``threads < 1`` or ``progress`` is not a bool or None.
    """

    out: Path  # report folder: index.html, report.json and one subfolder per section (created)
    size: str = "quick"  # "full", "quick" (--quick) or "tiny" (tests only: seconds, meaningless numbers)
    sections: tuple = SECTIONS  # which sections to run; always run in the order of SECTIONS
    threads: int | None = DEFAULT_THREADS  # torch intra-op threads during the run (restored); None: torch's own
    progress: bool | None = None  # the sections' own tqdm bars on stderr; None: only when stderr is a terminal
    command: str | None = None  # the command line shown in the report; None: the equivalent command

    def __post_init__(self):
        if not isinstance(self.out, (str, Path)):
            raise TypeError(f"`out` must be a folder path (str or pathlib.Path); got {type(self.out).__name__}.")
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"`out` must be a folder; {str(self.out)!r} exists and is a file. Pick another path.")
        if self.size not in SIZES:
            raise ValueError(f"`size` must be one of {list(SIZES)}; got {self.size!r}.")
        if isinstance(self.sections, str):
            self.sections = (self.sections,)
        given = list(self.sections)
        unknown = [s for s in given if s not in SECTIONS]
        if unknown:
            raise ValueError(f"`sections`: unknown section(s) {unknown}; choose from {list(SECTIONS)}.")
        if not given:
            raise ValueError(f"`sections` is empty; give at least one of {list(SECTIONS)}.")
        self.sections = tuple(s for s in SECTIONS if s in given)
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(f"`progress` must be True, False or None; got {type(self.progress).__name__}.")
        if self.command is None:
            self.command = equivalent_command(self)

    @property
    def show_bars(self) -> bool:
        """Whether the sections draw their own progress bars."""
        return stderr_is_tty() if self.progress is None else self.progress


def equivalent_command(config: ReproduceConfig) -> str:
    """The ``ode-momentum reproduce`` command line that runs ``config``."""
    words = ["ode-momentum", "reproduce"]
    if config.size == "quick":
        words.append("--quick")
    elif config.size == "tiny":
        words.append("(size tiny: tests only)")
    words += ["--out", str(config.out)]
    if config.sections != SECTIONS:
        words += ["--sections", *config.sections]
    if config.threads != DEFAULT_THREADS:
        words += ["--threads", str(config.threads or 0)]
    return " ".join(w if w.startswith("(") else shlex.quote(w) for w in words)


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Figure:
    """A PNG written by a section, with its caption."""

    path: Path
    caption: str


@dataclass
class HtmlTable:
    """A small table shown in the report: a caption, column headers and rows of already formatted cells."""

    caption: str
    headers: list
    rows: list


@dataclass
class SectionResult:
    """What one section produced.

    Attributes
    ----------
    name, title : str
        Key in :data:`SECTIONS` and heading in the report.
    status : {"ok", "error"}
        ``"error"``: the section raised; ``error`` holds the traceback.
    seconds : float
        Wall time.
    headline : str
        One line of results, for stderr.
    summary : list of (str, str)
        Headline numbers (label, formatted value) for the report.
    tables : list of HtmlTable
    figures : list of Figure
    claims : list of ClaimOutcome
        The claims section's outcomes (empty for the others).
    error : str or None
    """

    name: str
    title: str
    status: str = "ok"
    seconds: float = 0.0
    headline: str = ""
    summary: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    error: str | None = None

    @property
    def folder(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        return {
            "name": self.name, "title": self.title, "status": self.status, "seconds": self.seconds,
            "headline": self.headline, "summary": dict(self.summary), "figures": [str(f.path) for f in self.figures], "error": self.error,
        }


@dataclass
class ReproduceResult:
    """The outcome of :func:`run_reproduce`.

    Attributes
    ----------
    config : ReproduceConfig
    sections : list of SectionResult
    environment : dict
        Versions and machine (:func:`environment`).
    started : str
        ISO 8601 UTC time of the start.
    seconds : float
        Wall time of the whole run.
    report : Path
        ``out/index.html``.
    """

    config: ReproduceConfig
    sections: list
    environment: dict
    started: str
    seconds: float
    report: Path

    @property
    def claims(self) -> list:
        """Every :class:`~ode_momentum.verify.ClaimOutcome` (empty when the claims section did not run)."""
        return [c for s in self.sections for c in s.claims]

    @property
    def failed_claims(self) -> list:
        return [c for c in self.claims if not c.passed]

    @property
    def errors(self) -> list:
        """Sections that raised."""
        return [s for s in self.sections if s.status != "ok"]

    @property
    def passed(self) -> bool:
        """Every section ran and every claim passes."""
        return not self.errors and not self.failed_claims


# -------------------------------------------------------------------------------------------- the sections


@dataclass
class _Context:
    out: Path  # the section's own folder
    sizes: Sizes
    threads: int | None
    bars: bool
    result: SectionResult


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


def _json(path: Path, data) -> None:
    from .benchmarking.runner import json_safe

    path.write_text(json.dumps(json_safe(data), indent=2, default=str) + "\n")


def _save(fig, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib ``Figure`` (object API) as PNG through the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def _section_claims(ctx: _Context) -> None:
    from .verify import format_report, run_claims

    start = time.perf_counter()
    outcomes = run_claims(ctx.sizes.claims_quick, progress=ctx.bars, threads=ctx.threads)
    seconds = time.perf_counter() - start
    passed = bool(outcomes) and all(o.passed for o in outcomes)
    _json(ctx.out / "claims.json", {"quick": ctx.sizes.claims_quick, "passed": passed, "seconds": seconds,
                                    "claims": [o.to_dict() for o in outcomes]})
    (ctx.out / "claims.txt").write_text(format_report(outcomes, seconds=seconds) + "\n")
    n_checks = sum(len(o.report.checks) for o in outcomes)
    n_failed = sum(not c.passed for o in outcomes for c in o.report.checks)
    ctx.result.claims = outcomes
    ctx.result.headline = (f"{len(outcomes)} claims, {n_checks} checks, "
                           + ("all PASS" if passed else f"{n_failed} FAIL"))
    ctx.result.summary = [("claims", str(len(outcomes))), ("checks", str(n_checks)),
                          ("failed checks", str(n_failed)),
                          ("claims not passing", ", ".join(o.module for o in outcomes if not o.passed) or "none")]


_STEP_LIMIT_FIGURES = (
    ("limit_a_discrete.png", "(a) Depth-N nets with gamma = 1 - T/(N eps) converge to the momentum ODE: order 1 "
                             "for the paper's rule, order 2 for leapfrog nets."),
    ("limit_b_fixed_gamma.png", "(b) With gamma fixed, the deep limit is the first-order ODE x' = F, not the "
                                "momentum ODE."),
    ("limit_c_eps.png", "(c) As eps -> 0 the momentum ODE's solution tends to that of x' = F."),
    ("trajectories.png", "Hidden states of nets of increasing depth against the continuous solution."),
    ("work_precision.png", "Error at T against evaluations of F for every integrator (torchdiffeq dashed)."),
)


def _section_step_limit(ctx: _Context) -> None:
    from .analysis.tidy import Table
    from .studies import StepLimitConfig, run_step_limit

    paths = run_step_limit(StepLimitConfig(out=ctx.out, quick=ctx.sizes.step_limit_quick, progress=ctx.bars))
    orders = Table.read_csv(paths["orders.csv"])
    ctx.result.tables.append(HtmlTable(
        "Fitted orders (least-squares slope on log-log) against the theory",
        ["limit", "group", "quantity", "fitted order", "expected"],
        [[r["limit"], r["group"], r["quantity"], f"{r['order']:.3f}", _fmt(r["expected"])] for r in orders],
    ))
    ctx.result.figures += [Figure(paths[name], caption) for name, caption in _STEP_LIMIT_FIGURES]
    ctx.result.headline = f"{len(orders)} fitted orders, {len(paths)} files"


def _section_memory(ctx: _Context) -> None:
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import LogLocator, NullLocator

    from .analysis.memory import saved_tensor_bytes
    from .analysis.tidy import Table
    from .benchmarking.stacks import STACKS, build_functions, make_input
    from .nn import MomentumResNet

    spec = STACKS[MEMORY_STACK]
    depths = ctx.sizes.memory_depths
    table = Table()
    bar = tqdm(total=len(depths) * len(MEMORY_MODES), desc="memory", unit="cell", disable=not ctx.bars,
               file=sys.stderr)
    with contextlib.closing(bar):
        for depth in depths:
            functions = build_functions(spec, depth)
            x = make_input(spec)
            for mode in MEMORY_MODES:
                bar.set_postfix_str(f"depth {depth}, {mode}")
                model = MomentumResNet(functions, MEMORY_GAMMA, gradient=mode)
                table.append({"depth": depth, "gradient": mode,
                              "saved_bytes": saved_tensor_bytes(model, x.clone().requires_grad_(True))})
                bar.update()
    table.to_csv(ctx.out / "memory.csv")
    _json(ctx.out / "memory.json", {"stack": spec.as_dict(), "gamma": MEMORY_GAMMA, "rows": table.rows})

    fig = MplFigure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, mode in enumerate(MEMORY_MODES):
        part = table.where(gradient=mode)
        ax.plot(part.column("depth"), part.column("saved_bytes") / 2**20, marker="os^"[i], label=mode)
    ax.set(xscale="log", yscale="log", xlabel="depth (residual functions)", ylabel="saved activations (MiB)",
           title=f"Activation memory against depth\n{spec.label}, gamma {MEMORY_GAMMA:g}, float32")
    ax.set_xticks(list(depths), [str(d) for d in depths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter("{x:g}")
    ax.yaxis.set_minor_formatter("")
    ax.grid(alpha=0.3)
    ax.legend(title="gradient")
    ctx.result.figures.append(Figure(_save(fig, ctx.out / "memory.png"),
                                     "Bytes autograd saves for the backward (saved_tensor_bytes; parameters "
                                     "excluded). Backprop grows linearly with depth; reversible keeps x_0, x_N and "
                                     "v_N; exact keeps X_N, V_N and a bit buffer of about 0.3 bits per element per "
                                     "layer, which grows one 64-bit word at a time."))
    by = {(r["depth"], r["gradient"]): r["saved_bytes"] for r in table}
    ctx.result.tables.append(HtmlTable(
        "Saved-activation bytes", ["depth", *MEMORY_MODES],
        [[str(d), *(f"{by[d, m]:,}" for m in MEMORY_MODES)] for d in depths],
    ))
    lo, hi = depths[0], depths[-1]
    growth = {m: by[hi, m] / by[lo, m] for m in MEMORY_MODES}
    ctx.result.summary = [(m, f"x{growth[m]:.3g} from depth {lo} to depth {hi}") for m in MEMORY_MODES]
    ctx.result.headline = f"depth {lo} -> {hi}: " + ", ".join(f"{m} x{growth[m]:.3g}" for m in MEMORY_MODES)


def _section_crossing(ctx: _Context) -> None:
    from .analysis.crossing import fit_cubic, fit_rings, plot_cubic, plot_rings

    cubic = fit_cubic(ctx.sizes.cubic)
    rings = fit_rings(ctx.sizes.rings)
    _json(ctx.out / "crossing.json", {
        "cubic": {"config": dataclasses.asdict(cubic.config), "mse": cubic.mse, "train_loss": cubic.train_loss,
                  "step_lipschitz": cubic.step_lipschitz},
        "rings": {"config": dataclasses.asdict(rings.config), "test_accuracy": rings.accuracy,
                  "train_accuracy": rings.train_accuracy, "train_loss": rings.train_loss,
                  "step_lipschitz": rings.step_lipschitz},
    })
    ctx.result.figures += [
        Figure(_save(plot_cubic(cubic), ctx.out / "cubic.png"),
               "Fitting x -> -x^3 on [-1, 1] with tied weights: the momentum net's position trajectories cross; "
               "the first-order flow's cannot, so its map stays non-decreasing."),
        Figure(_save(plot_rings(rings), ctx.out / "rings.png"),
               f"{rings.config.n_rings} nested rings, the final 2-D state used as the logits: the momentum net "
               "separates them, the first-order flow keeps them nested."),
    ]
    ctx.result.summary = [(f"-x^3 MSE, {kind}", _fmt(v)) for kind, v in cubic.mse.items()]
    ctx.result.summary += [(f"rings test accuracy, {kind}", f"{v:.1%}") for kind, v in rings.accuracy.items()]
    ctx.result.headline = ("-x^3 MSE " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in cubic.mse.items())
                           + "; rings " + ", ".join(f"{k} {v:.1%}" for k, v in rings.accuracy.items()))


def _section_fit(ctx: _Context) -> None:
    from .train import FitConfig, fit

    rows = []
    for model in ("momentum", "resnet"):
        config = FitConfig(model=model, out=ctx.out / model, threads=ctx.threads, progress=ctx.bars,
                           **ctx.sizes.fit)
        metrics = fit(config)
        rows.append(metrics)
        ctx.result.figures.append(Figure(
            config.out / "curves.png",
            f"{model}: training loss and accuracy per epoch (depth {config.depth}, width {config.width}"
            + (f", gamma {config.gamma:g}, {config.gradient_mode} gradient)" if model == "momentum" else ")"),
        ))
    ctx.result.tables.append(HtmlTable(
        "Digits (scikit-learn, 8x8), 80/20 stratified split",
        ["model", "gradient", "depth", "test accuracy", "activation KiB", "train s", "parameters"],
        [[m["model"], m["gradient"], str(m["depth"]), f"{m['test_accuracy']:.4f}",
          f"{m['activation_bytes'] / 1024:.1f}", f"{m['train_seconds']:.1f}", f"{m['n_parameters']:,}"]
         for m in rows],
    ))
    ctx.result.summary = [(f"test accuracy, {m['model']}", f"{m['test_accuracy']:.2%}") for m in rows]
    ctx.result.headline = "test accuracy " + ", ".join(f"{m['model']} {m['test_accuracy']:.1%}" for m in rows)


def _section_robustness(ctx: _Context) -> None:
    from .robustness import GammaRobustnessConfig, run_gamma_robustness

    config = GammaRobustnessConfig(out=ctx.out, threads=ctx.threads, progress=ctx.bars, **ctx.sizes.robustness)
    table = run_gamma_robustness(config)
    ctx.result.figures.append(Figure(
        ctx.out / "robustness.png",
        "Test accuracy when a model trained at one gamma is run at another, as it is (solid) and after a "
        f"{config.refit_epochs}-epoch refit (dashed).",
    ))
    acc = {(r["gamma_train"], r["gamma_test"], r["refit"]): r["test_accuracy"] for r in table}
    headers = ["trained at gamma", "tested at gamma", "no refit"] + (["refit"] if config.refit_epochs else [])
    rows = []
    for gamma_train in config.gamma_train:
        for k, gamma_test in enumerate(config.gamma_test):
            row = [_fmt(gamma_train) if k == 0 else "", _fmt(gamma_test), f"{acc[gamma_train, gamma_test, False]:.1%}"]
            if config.refit_epochs:
                row.append(f"{acc[gamma_train, gamma_test, True]:.1%}")
            rows.append(row)
    ctx.result.tables.append(HtmlTable(
        f"{config.arch}, width {config.width}, {config.epochs} epochs per fit, {config.gradient} gradient for "
        "the momentum models", headers, rows))
    ctx.result.summary = []
    for g in config.gamma_train:
        for refit in (False, True) if config.refit_epochs else (False,):
            values = [acc[g, t, refit] for t in config.gamma_test]
            label = f"trained at gamma {g:g}, " + (f"{config.refit_epochs}-epoch refit" if refit else "no refit")
            ctx.result.summary.append((label, f"test accuracy {min(values):.1%} to {max(values):.1%}"))
    ctx.result.headline = "; ".join(
        f"trained at {g:g}: " + ", ".join(
            f"{min(acc[g, t, r] for t in config.gamma_test):.1%}-{max(acc[g, t, r] for t in config.gamma_test):.1%}"
            + (" refit" if r else " as is") for r in ((False, True) if config.refit_epochs else (False,)))
        for g in config.gamma_train)


@dataclass(frozen=True)
class _Section:
    title: str
    run: Callable[[_Context], None]
    about: str  # a paragraph of the report


_SECTIONS: dict[str, _Section] = {
    "claims": _Section(
        "Claims of the paper", _section_claims,
        "One numerical check per claim of Sander, Ablin, Blondel and Peyré, \"Momentum Residual Neural "
        "Networks\" (ICML 2021), from <code>ode_momentum.theory</code> (<code>theory/README.md</code>). Each row "
        "is a measured value against its expectation; the same table as <code>ode-momentum verify</code>."),
    "step-limit": _Section(
        "Infinitesimal-step limit", _section_step_limit,
        "Momentum ResNets as discretisations of <code>eps x'' + x' = F(t, x)</code> on a forced damped "
        "pendulum, and work against precision of every integrator (<code>ode-momentum study step-limit</code>)."),
    "memory": _Section(
        "Memory against depth", _section_memory,
        "Saved-activation bytes of one training forward of a <code>MomentumResNet</code> over untied "
        "<code>Linear-Tanh-Linear</code> residual functions (width 64, batch 256, gamma 0.9), per gradient mode; "
        "the table of the README's <i>Measured</i> section."),
    "crossing": _Section(
        "Trajectories that cross: -x^3 and nested rings", _section_crossing,
        "Tied-weight models trained from the same initial residual function: a momentum net, the first-order "
        "flow <code>x' = f(x)</code> of the same <code>f</code> (certified to be a homeomorphism on the states "
        "it visits) and, in 1-D, the plain ResNet."),
    "fit": _Section(
        "Digits classifier", _section_fit,
        "<code>Linear - residual stage - Linear</code> on scikit-learn's handwritten digits, the Momentum "
        "ResNet against the ResNet with the same settings (<code>ode-momentum fit --compare</code>)."),
    "robustness": _Section(
        "Robustness to gamma", _section_robustness,
        "A ResNet-18-layout model trained on the digits at each gamma (0: the plain ResNet), evaluated at other "
        "gammas as it is and after a short refit (<code>ode-momentum robustness</code>)."),
}


# ------------------------------------------------------------------------------------------------ running


def environment() -> dict:
    """Versions and machine: python, torch, numpy, ode_momentum, platform, CPU count and the rest of
    :func:`ode_momentum.benchmarking.runner.machine_info`, plus matplotlib, scipy and scikit-learn."""
    import matplotlib
    import scipy
    import sklearn

    from .benchmarking.runner import machine_info

    info = machine_info("cpu")
    info.update(matplotlib=matplotlib.__version__, scipy=scipy.__version__, scikit_learn=sklearn.__version__,
                torch_threads=torch.get_num_threads())
    if hasattr(os, "getloadavg"):
        info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def _say(text: str) -> None:
    # tqdm.write keeps an open bar intact; the line goes to stderr either way
    tqdm.write(text, file=sys.stderr)


def run_reproduce(config: ReproduceConfig) -> ReproduceResult:
    """Run the sections of ``config`` and write ``out/index.html``, ``out/report.json`` and the raw outputs.

    One line per section goes to stderr when it starts and when it ends (with its wall time); the sections'
    own progress bars follow ``config.progress``. The global random state and torch's thread count are
    restored on return.

    Parameters
    ----------
    config : ReproduceConfig

    Returns
    -------
    ReproduceResult
        ``passed`` is False when a claim fails or a section raised (the report is written either way).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`ReproduceConfig`.
    OSError
        If ``out`` cannot be created or written.
    """
    if not isinstance(config, ReproduceConfig):
        raise TypeError(f"`config` must be a ReproduceConfig; got {type(config).__name__}.")
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    sizes = sizes_for(config.size)
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    env = environment()
    with torch_threads(config.threads):
        env["torch_threads"] = torch.get_num_threads()  # as the sections run
    results = []
    n = len(config.sections)
    _say(f"reproduce ({config.size}): {n} section{'s' if n != 1 else ''} into {out}")
    for i, name in enumerate(config.sections, 1):
        section = _SECTIONS[name]
        result = SectionResult(name, section.title)
        folder = out / result.folder
        folder.mkdir(parents=True, exist_ok=True)
        _say(f"[{i}/{n}] {name}: {section.title} ...")
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]), torch_threads(config.threads):
                section.run(_Context(folder, sizes, config.threads, config.show_bars, result))
        except Exception:  # noqa: BLE001 - one section's failure must not hide the others' results
            result.status = "error"
            result.error = traceback.format_exc()
        result.seconds = time.perf_counter() - t0
        results.append(result)
        if result.status == "ok":
            _say(f"[{i}/{n}] {name}: done in {result.seconds:.1f} s"
                 + (f" ({result.headline})" if result.headline else ""))
        else:
            last = result.error.strip().splitlines()[-1]
            _say(f"[{i}/{n}] {name}: ERROR after {result.seconds:.1f} s: {last}")
    reproduce = ReproduceResult(config, results, env, started.isoformat(timespec="seconds"),
                                time.perf_counter() - start, out / REPORT_FILE)
    (out / REPORT_FILE).write_text(render_html(reproduce), encoding="utf-8")
    _json(out / SUMMARY_FILE, {
        "command": config.command, "size": config.size, "started": reproduce.started,
        "seconds": reproduce.seconds, "passed": reproduce.passed, "environment": env,
        "sections": [s.to_dict() for s in results],
        "failed_claims": [c.module for c in reproduce.failed_claims],
    })
    _say(f"reproduce: {reproduce.seconds:.1f} s in all; wrote {reproduce.report}")
    return reproduce


# ------------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1f2328;
       max-width: 1120px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 22px; margin: 40px 0 6px; padding-top: 12px; border-top: 1px solid #d0d7de; }
h3 { font-size: 16px; margin: 20px 0 6px; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f4f6;
       padding: 1px 4px; border-radius: 4px; }
pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f6f8fa;
      padding: 12px; overflow-x: auto; border-radius: 6px; }
.meta { color: #59636e; font-size: 14px; margin: 0 0 10px; }
.banner { padding: 12px 16px; border-radius: 6px; font-weight: 600; margin: 16px 0; }
.banner.pass { background: #dafbe1; border: 1px solid #4ac26b; color: #116329; }
.banner.fail { background: #ffebe9; border: 1px solid #ff8182; color: #82071e; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
p.tcap { color: #59636e; font-size: 14px; margin: 12px 0 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.claim th { background: #eef1f4; }
td.PASS, span.PASS { background: #dafbe1; color: #116329; font-weight: 600; text-align: center; }
td.FAIL, td.ERROR, td.MISSING, span.FAIL { background: #ffebe9; color: #82071e; font-weight: 600;
                                            text-align: center; }
span.PASS, span.FAIL { padding: 1px 6px; border-radius: 4px; }
table.kv th { white-space: nowrap; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #59636e; font-size: 14px; margin-top: 4px; }
nav ol { margin: 4px 0; padding-left: 22px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _is_number(cell) -> bool:
    text = str(cell).replace(",", "").rstrip("%x")
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table(t: HtmlTable) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.headers)
    # a column is right-aligned when every filled cell in it is a number (digits, separators, %, a trailing x)
    numeric = [all(_is_number(row[j]) for row in t.rows if row[j] != "") for j in range(len(t.headers))]
    body = []
    for row in t.rows:
        cells = [f'<td class="num">{_e(c)}</td>' if numeric[j] else f"<td>{_e(c)}</td>" for j, c in enumerate(row)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<p class="tcap">{_e(t.caption)}</p><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _kv(rows: Sequence[tuple]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def claims_table_html(outcomes: Sequence) -> str:
    """The claims as an HTML table: one header row per claim, then one row per check with PASS/FAIL.

    A claim whose module is missing or raised shows its one failed check with status ``MISSING`` or
    ``ERROR``.
    """
    from .verify import ERROR, FAIL, MISSING, PASS
    from .verify import _fmt as fmt_measured

    rows = []
    for o in outcomes:
        status = o.status
        rows.append(f'<tr class="claim"><th colspan="3">{_e(o.report.claim)} <code>{_e(o.module)}</code>, '
                    f'{o.report.seconds:.1f} s</th><td class="{status}">{status}</td></tr>')
        for check in o.report.checks:
            result = status if status in (MISSING, ERROR) else (PASS if check.passed else FAIL)
            rows.append(f"<tr><td>{_e(check.name)}</td><td class=\"num\">{_e(fmt_measured(check.measured))}</td>"
                        f"<td>{_e(check.expected)}</td><td class=\"{result}\">{result}</td></tr>")
    head = "<tr><th>check</th><th>measured</th><th>expected</th><th>result</th></tr>"
    return f'<table class="claims"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def render_html(result: ReproduceResult) -> str:
    """The self-contained report page of ``result`` (figures embedded, no external resources)."""
    config = result.config
    claims, failed = result.claims, result.failed_claims
    n_checks = sum(len(c.report.checks) for c in claims)
    n_failed = sum(not ch.passed for c in claims for ch in c.report.checks)
    if result.passed:
        verdict = (f"All {n_checks} checks of {len(claims)} claims pass" if claims else "Every section ran")
        banner = f'<div class="banner pass">{_e(verdict)}; {len(result.sections)} sections in {result.seconds:.0f} s.</div>'
    else:
        parts = []
        if failed:
            parts.append(f"{n_failed} of {n_checks} checks fail (claims: {', '.join(c.module for c in failed)})")
        if result.errors:
            parts.append(f"section(s) raised: {', '.join(s.name for s in result.errors)}")
        banner = f'<div class="banner fail">{_e("; ".join(parts))}.</div>'

    nav = "".join(f'<li><a href="#{s.name}">{_e(s.title)}</a> ({s.seconds:.1f} s)</li>' for s in result.sections)
    timing_rows = "".join(
        f'<tr><td><a href="#{s.name}">{_e(s.name)}</a></td><td class="num">{s.seconds:.1f}</td>'
        f'<td class="{"PASS" if s.status == "ok" else "FAIL"}">{"ok" if s.status == "ok" else "error"}</td>'
        f'<td><a href="{_e(s.folder)}/">{_e(s.folder)}/</a></td></tr>'
        for s in result.sections
    )
    timing_rows += (f'<tr><th>total</th><td class="num"><b>{result.seconds:.1f}</b></td><td></td>'
                    f'<td><a href="{SUMMARY_FILE}">{SUMMARY_FILE}</a></td></tr>')
    timings = ('<p class="tcap">Wall time per section</p><table><thead><tr><th>section</th><th>seconds</th>'
               f'<th>status</th><th>raw outputs</th></tr></thead><tbody>{timing_rows}</tbody></table>')
    env = result.environment
    version_keys = ("python", "torch", "numpy", "ode_momentum", "git", "torchdiffeq", "scipy", "matplotlib",
                    "scikit_learn", "platform", "cpu", "cpu_count", "cpus_available", "memory_gib", "torch_threads",
                    "load_average")
    versions = _kv([(k.replace("_", " ") if k not in ("ode_momentum", "scikit_learn") else k.replace("_", "-"),
                     _fmt(env.get(k))) for k in version_keys if k in env])
    run = _kv([("command", config.command), ("size", config.size), ("started (UTC)", result.started),
               ("output folder", str(config.out))])

    body = ["<h1>ode-momentum: reproduction report</h1>",
            f'<p class="meta">Momentum ResNets as second-order ODEs (Sander et al., ICML 2021), '
            f"{_e(config.size)} sizes.</p>", banner,
            f"<nav><b>Sections</b><ol>{nav}</ol></nav>",
            "<h2 id=\"run\">Run</h2>", run, "<h3>Versions and machine</h3>", versions, "<h3>Timings</h3>", timings]
    for number, section in enumerate(result.sections, 1):
        spec = _SECTIONS[section.name]
        body.append(f'<h2 id="{section.name}">{number}. {_e(section.title)}</h2>')
        body.append(f'<p class="meta">{section.seconds:.1f} s &middot; raw outputs in '
                    f'<a href="{_e(section.folder)}/">{_e(section.folder)}/</a></p>')
        body.append(f"<p>{spec.about}</p>")
        if section.status != "ok":
            body.append('<div class="banner fail">This section raised an error; its results are missing.</div>')
            body.append(f"<pre>{_e(section.error)}</pre>")
            continue
        if section.claims:
            body.append(claims_table_html(section.claims))
        elif section.summary:
            body.append(_kv(section.summary))
        for t in section.tables:
            body.append(_table(t))
        for fig in section.figures:
            body.append(f"<figure>{_png_tag(fig.path, fig.caption)}<figcaption>{_e(fig.caption)}</figcaption>"
                        "</figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>ode-momentum reproduce: {'PASS' if result.passed else 'FAIL'}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------------------------- command line


def format_outcome(result: ReproduceResult) -> str:
    """Text for stdout: the sections with their times, then the failing checks and errors, if any."""
    lines = [f"{'section':<12}{'seconds':>9}  status"]
    for s in result.sections:
        lines.append(f"{s.name:<12}{s.seconds:>9.1f}  {s.status}")
    lines.append(f"{'total':<12}{result.seconds:>9.1f}")
    claims = result.claims
    if claims:
        n_checks = sum(len(c.report.checks) for c in claims)
        if not result.failed_claims:
            lines.append(f"claims: {len(claims)} claims, {n_checks} checks, all PASS")
        else:
            lines.append(f"claims: FAIL in {len(result.failed_claims)} of {len(claims)} claims:")
            for c in result.failed_claims:
                for check in c.report.checks:
                    if not check.passed:
                        lines.append(f"  FAIL {c.module} ({c.status}): {check.name}: measured "
                                     f"{_fmt(check.measured)}, expected {check.expected}")
    for s in result.errors:
        lines.append(f"ERROR in section {s.name}: {s.error.strip().splitlines()[-1]}")
    lines.append(f"wrote {result.report}")
    return "\n".join(lines)


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce [--quick] --out DIR [--sections NAME ...] [--threads N] [--progress]``.

    Follows ``ode_momentum.cli``'s convention: the parser sets ``run`` (called as ``args.run(args,
    args.parser)``, returns the exit status) and ``parser``.
    """
    p = subparsers.add_parser(
        "reproduce",
        help="run every check and study; write one HTML report (figures, claims table, versions, timings)",
        description=(
            "Run the paper's claim checks, the step-limit study, memory against depth, the -x^3 and rings "
            "experiments, the digits fit and the gamma-robustness study, and write DIR/index.html (one "
            "self-contained page) with each section's raw outputs in DIR/<section>/. Exit status 1 if a claim "
            "fails or a section raises; the failing checks are printed."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder (created if missing)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: one to two minutes on 2 CPU cores instead of three to five")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, metavar="NAME",
                   help=f"only these sections (default: all): {', '.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch intra-op threads during the run (0: torch's own count)")
    p.add_argument("--progress", action="store_true",
                   help="the sections' progress bars on stderr even when it is not a terminal")
    p.set_defaults(run=run_reproduce_command, parser=p)
    return p


def run_reproduce_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """``ode-momentum reproduce``: run, write the report, print the outcome; return 0 (all pass) or 1.

    A setting the library rejects exits through ``parser.error`` (status 2) when ``parser`` is given.
    """
    try:
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0 (0: torch's own count); got {args.threads}.")
        config = ReproduceConfig(
            out=args.out, size="quick" if args.quick else "full",
            sections=tuple(args.sections) if args.sections else SECTIONS,
            threads=None if args.threads == 0 else args.threads, progress=True if args.progress else None,
        )
    except (TypeError, ValueError) as err:
        if parser is None:
            raise
        parser.error(str(err).replace("`out`", "--out").replace("`sections`", "--sections"))
    result = run_reproduce(config)
    print(format_outcome(result))
    sys.stdout.flush()
    return 0 if result.passed else 1
