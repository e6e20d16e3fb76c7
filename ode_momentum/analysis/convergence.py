"""Convergence orders and the infinitesimal-step limit of Momentum ResNets.

:func:`empirical_order` fits the order of a convergence study. The step-limit study measures the three
limits of Sander et al. (ICML 2021, section 3) on a :class:`~ode_momentum.analysis.problems.Problem`:

(a) :func:`discrete_limit`: a discrete ``MomentumResNet`` of depth ``N`` with ``gamma = 1 - T/(N eps)`` and
    residuals ``f_n = (T/N) F(t_n, .)`` converges to the solution ``x(T)`` of ``eps x'' + x' = F`` at order 1;
    the same field run by the registry's integrators with ``N`` steps ("integrator nets") converges at their
    orders (``leapfrog`` 2, ``yoshida4`` 4).
(b) :func:`fixed_gamma_limit`: with ``gamma`` fixed, the net is a momentum step of effective inertia
    ``eps_N = h / (1 - gamma)``, which vanishes with ``h = T/N``: the deep limit is the first-order ODE
    ``x' = F``, not a momentum ODE.
(c) :func:`eps_limit`: as ``eps -> 0`` the momentum ODE's solution tends to that of ``x' = F``.

Velocities: the net's layer velocity is ``v_n = h x'(t_n)`` (the paper's units), the integrators' is the
physical ``x'``; every table reports physical velocities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_eps, check_gamma, check_positive_int, check_real
from ..integrators import INTEGRATORS
from ..nn import MomentumResNet
from ..odeint import odeint
from .problems import Problem, forced_pendulum
from .tidy import Table

# Errors at or below the floor are round-off or reference error, not truncation error, and are not fitted.
# Against a closed form: float64 round-off over <= 4096 steps is ~1e-12 on solutions of size ~1; 100x margin.
CLOSED_FORM_FLOOR = 1e-10
# Against the reference solver (dopri5 at rtol 1e-10, atol 1e-12: accurate to ~3e-11 on the test problems,
# see tests/test_convergence.py); 300x margin so that the reference's error moves a fitted slope by < 0.01.
REFERENCE_FLOOR = 1e-8
# The name of the discrete net (the paper's layer rule through MomentumResNet) among the integrator nets.
RESNET = "momentum_resnet"

# Depths of limit (a). On the forced pendulum (eps = 0.5, T = 2) the first-order nets are pre-asymptotic below
# N ~ 64 (4-point slopes 0.91 on N = 32..256, 0.96 on 64..512, 0.98 on 128..1024); quick stays just inside.
DEPTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)
QUICK_DEPTHS = (32, 64, 128, 256, 512)
# Limit (b): gamma = 0.9 (the paper's value) has an error constant ~ gamma / (1 - gamma) and is asymptotic
# only once eps_N = h / (1 - gamma) << 1, i.e. N >~ 1000 at T = 2 (local slopes 1.15, 1.08, 1.04, 1.02 from
# N = 256 to 4096 on the pendulum).
FIXED_GAMMAS = (0.5, 0.9)
FIXED_GAMMA_DEPTHS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_FIXED_GAMMA_DEPTHS = QUICK_DEPTHS
# Limit (c): eps from 0.2 to 1.6e-3 (full) or 0.05 to 3.1e-3 (quick; all solved by LSODA, < 0.1 s each).
EPSILONS = tuple(0.2 * 2.0**-j for j in range(8))
QUICK_EPSILONS = tuple(0.05 * 2.0**-j for j in range(5))
# The order is fitted on the N_FINEST finest points above the floor (the asymptotic regime).
N_FINEST = 4


@dataclass(frozen=True)
class OrderFit:
    """A least-squares fit ``log(error) = log_constant + order * log(step)``.

    Attributes
    ----------
    order : float
        The fitted slope (dimensionless).
    log_constant : float
        The intercept; ``error ~ exp(log_constant) * step^order``.
    steps, errors : numpy arrays, shape ``(n,)``
        The points used, coarsest first.
    n_dropped : int
        Points left out: at or below the floor, or beyond the ``n_finest`` finest.
    """

    order: float
    log_constant: float
    steps: np.ndarray
    errors: np.ndarray
    n_dropped: int

    def predict(self, steps) -> np.ndarray:
        """The fitted line at ``steps`` (array-like, positive)."""
        return np.exp(self.log_constant) * np.asarray(steps, dtype=np.float64) ** self.order

    def __float__(self) -> float:
        return self.order


def empirical_order(steps, errors, *, floor: float = CLOSED_FORM_FLOOR, n_finest: int | None = None) -> OrderFit:
    """Least-squares slope of ``log(error)`` against ``log(step)``, above a round-off floor.

    Errors at or below ``floor`` (round-off, or the reference's own error) are dropped first; then, if
    ``n_finest`` is given, only the ``n_finest`` smallest remaining steps are kept (the asymptotic regime).

    Parameters
    ----------
    steps : array-like, shape ``(n,)``
        Positive step sizes ``h`` (or any quantity going to 0: ``1/N``, ``eps``), in any order.
    errors : array-like, shape ``(n,)``
        Non-negative finite errors at those steps.
    floor : float
        Errors ``<= floor`` are not fitted (default ``CLOSED_FORM_FLOOR = 1e-10``, float64 round-off).
    n_finest : int, optional
        Fit only the ``n_finest`` smallest steps above the floor.

    Returns
    -------
    OrderFit
        ``float(fit)`` is the order.

    Raises
    ------
    ValueError
        If the arrays differ in length or are not 1-D, a step is not positive, an error is negative or not
        finite, or fewer than two points lie above ``floor``.
    """
    steps = np.asarray(steps, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != errors.shape:
        raise ValueError(f"`steps` and `errors` must be 1-D of one length; got shapes {steps.shape} and "
                         f"{errors.shape}.")
    if not np.all(np.isfinite(steps) & (steps > 0)):
        raise ValueError(f"`steps` must be positive and finite; got {steps.tolist()}.")
    if not np.all(np.isfinite(errors) & (errors >= 0)):
        raise ValueError(f"`errors` must be non-negative and finite; got {errors.tolist()}.")
    floor = check_real("floor", floor)
    if n_finest is not None:
        check_positive_int("n_finest", n_finest)
    order = np.argsort(-steps)  # coarsest first
    steps, errors = steps[order], errors[order]
    keep = np.flatnonzero(errors > floor)
    if n_finest is not None:
        keep = keep[-n_finest:]
    if len(keep) < 2:
        raise ValueError(
            f"fewer than two errors lie above the floor {floor:g} (errors: {errors.tolist()}); an order needs "
            "two points. Use coarser steps or a lower `floor` (round-off in float64 is ~1e-13)."
        )
    slope, intercept = np.polyfit(np.log(steps[keep]), np.log(errors[keep]), 1)
    return OrderFit(float(slope), float(intercept), steps[keep], errors[keep], len(steps) - len(keep))


def fit_floor(problem: Problem) -> float:
    """The error floor of studies on ``problem``: ``CLOSED_FORM_FLOOR`` or ``REFERENCE_FLOOR``."""
    return CLOSED_FORM_FLOOR if problem.closed_form is not None else REFERENCE_FLOOR


class CountingField:
    """``func(t, x)`` that counts its evaluations in ``nfev`` (as scipy's ``solve_ivp`` reports them)."""

    def __init__(self, func):
        self.func = func
        self.nfev = 0

    def __call__(self, t, x):
        self.nfev += 1
        return self.func(t, x)


class _LayerResidual(nn.Module):
    """Layer ``n`` of the discrete net: ``f_n(x) = h F(t_n, x)`` (the residual in layer units)."""

    def __init__(self, func, t: torch.Tensor, h: float):
        super().__init__()
        self.func, self.t, self.h = func, t, h

    def forward(self, x):
        return self.h * self.func(self.t, x)


def run_momentum_resnet(problem: Problem, depth: int, gamma: float | None = None):
    """``x_N`` and the physical velocity ``v_N / h`` of the discrete net on ``problem``'s field.

    The net is :class:`~ode_momentum.MomentumResNet` with residuals ``f_n(x) = h F(t0 + n h, x)``,
    ``h = T / depth``, initial layer velocity ``h v0``, and ``gamma = 1 - h / eps`` (the paper's rule for a
    second-order limit) unless ``gamma`` is given (a fixed coefficient).

    Returns
    -------
    x, v : Tensor, shape of ``problem.x0``
        Final position and physical velocity.

    Raises
    ------
    ValueError
        If the rule's ``gamma = 1 - T/(N eps)`` is negative (``depth < T / eps``) or undefined (``eps = 0``),
        or ``gamma`` is outside [0, 1].
    """
    depth = check_positive_int("depth", depth)
    h = problem.horizon / depth
    if gamma is None:
        if problem.eps == 0:
            raise ValueError("the rule gamma = 1 - T/(N eps) needs a problem with eps > 0; got eps = 0. Pass a "
                             "fixed `gamma` for a net whose deep limit is x' = F.")
        gamma = 1.0 - h / problem.eps
        if gamma < 0:
            raise ValueError(
                f"the rule gamma = 1 - T/(N eps) is negative at depth N = {depth} (T = {problem.horizon}, "
                f"eps = {problem.eps}); use depth >= T/eps = {problem.horizon / problem.eps:.3g} "
                "or a fixed gamma."
            )
    gamma = check_gamma(gamma)
    times = problem.times(depth + 1).unbind()
    net = MomentumResNet([_LayerResidual(problem.field, times[n], h) for n in range(depth)], gamma,
                         gradient="backprop")
    with torch.no_grad():
        x, v = net.forward_state(problem.x0, h * problem.v0)
    return x, v / h


def run_integrator(problem: Problem, method: str, n_steps: int, eps: float | None = None, v0=None):
    """``x(T)``, ``v(T)`` and the number of ``F`` evaluations of ``odeint(method, n_steps)`` on ``problem``.

    ``v0`` defaults to the problem's; at ``eps = 0`` pass the consistent ``F(t0, x0)`` for ``alf``.
    """
    eps = problem.eps if eps is None else eps
    func = CountingField(problem.field)
    v0 = problem.v0 if v0 is None else v0
    with torch.no_grad():
        xs, vs = odeint(func, (problem.x0, v0), problem.times(), eps=eps, method=method, n_steps=n_steps)
    return xs[-1], vs[-1], func.nfev


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max())


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _check_depths(depths) -> tuple[int, ...]:
    depths = tuple(depths)
    if len(depths) < 2:
        raise ValueError(f"`depths` needs at least two depths to show a limit; got {depths!r}.")
    return tuple(check_positive_int("depths", d) for d in depths)


def integrator_nets(eps: float) -> list[str]:
    """The registry's integrators that run the momentum ODE at inertia ``eps > 0``, in registry order."""
    names = []
    for name, cls in INTEGRATORS.items():
        try:
            cls(eps)
        except ValueError:
            continue
        names.append(name)
    return names


def discrete_limit(
    problem: Problem, depths: Sequence[int] = DEPTHS, *, nets: Sequence[str] | None = None, progress: bool = False
) -> Table:
    """Limit (a): errors of depth-``N`` nets against the momentum ODE's ``x(T)``, ``x'(T)``.

    Parameters
    ----------
    problem : Problem
        With ``eps > 0``; its solution at ``problem.eps`` is the target.
    depths : sequence of int
        Depths ``N`` (``h = T/N``); at least two, each ``>= T/eps`` for ``"momentum_resnet"`` and
        ``"momentum"``.
    nets : sequence of str, optional
        ``"momentum_resnet"`` (the discrete net, ``gamma = 1 - T/(N eps)``) and integrator names
        (``odeint`` with ``N`` steps). Default: the net and every registry integrator that accepts ``eps``.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Table
        Columns ``net, depth, h, gamma`` (velocity damping per layer), ``n_evals`` (evaluations of ``F``),
        ``error_x``, ``error_v`` (max-norm errors of ``x(T)`` and of the physical velocity).

    Raises
    ------
    ValueError
        If ``problem.eps`` is 0, a net name is unknown, fewer than two depths are given, or a depth is
        below ``T / eps`` for a net that needs ``h <= eps``.
    """
    eps = check_eps(problem.eps)
    if eps == 0.0:
        raise ValueError("limit (a) needs a problem with eps > 0 (a momentum ODE to converge to); got eps = 0.")
    depths = _check_depths(depths)
    nets = [RESNET] + integrator_nets(eps) if nets is None else list(nets)
    for net in nets:
        check_choice("nets", net, [RESNET] + integrator_nets(eps))
    x_ref, v_ref = problem.final()
    table = Table()
    for depth in _progress(depths, progress, "limit (a)"):
        h = problem.horizon / depth
        for net in nets:
            if net == RESNET:
                x, v = run_momentum_resnet(problem, depth)
                gamma, n_evals = 1.0 - h / eps, depth
            else:
                x, v, n_evals = run_integrator(problem, net, depth)
                gamma = INTEGRATORS[net](eps).gamma(h)
            table.append({"net": net, "depth": depth, "h": h, "gamma": gamma, "n_evals": n_evals,
                          "error_x": _max_error(x, x_ref), "error_v": _max_error(v, v_ref)})
    return table


def fixed_gamma_limit(
    problem: Problem, depths: Sequence[int] = DEPTHS, gammas: Sequence[float] = FIXED_GAMMAS, *,
    progress: bool = False,
) -> Table:
    """Limit (b): a net with ``gamma`` fixed tends to the first-order ODE ``x' = F`` as ``N`` grows.

    The depth-``N`` net with coefficient ``gamma`` and residuals ``(T/N) F`` is the ``momentum`` step of
    inertia ``eps_N = h / (1 - gamma)``, ``h = T/N``: ``eps_N -> 0``, so its limit is ``x' = F``. Its error to
    ``x_0(T)`` (the first-order solution) goes to 0 at order 1 in ``h``; its error to the momentum ODE at the
    problem's ``eps`` does not.

    Parameters
    ----------
    problem : Problem
        Field, initial state and horizon; ``problem.eps`` is only the comparison momentum ODE (may be 0).
    depths : sequence of int
        At least two depths.
    gammas : sequence of float in [0, 1)
        The fixed coefficients.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Table
        Columns ``gamma, depth, h, eps_effective`` (``h / (1 - gamma)``), ``error_first_order`` (to
        ``x_0(T)``), ``error_first_order_v`` (physical velocity against ``F(T, x_0(T))``),
        ``error_momentum_ode`` (to ``x_eps(T)`` at ``problem.eps``).

    Raises
    ------
    ValueError
        If fewer than two depths are given or a ``gamma`` lies outside [0, 1).
    """
    depths = _check_depths(depths)
    gammas = [check_gamma(g) for g in gammas]
    for g in gammas:
        if g == 1.0:
            raise ValueError("`gammas` must lie in [0, 1): gamma = 1 keeps no force (eps_N = inf).")
    x_first, v_first = problem.final(0.0)
    x_second, _ = problem.final()
    table = Table()
    for depth in _progress(depths, progress, "limit (b)"):
        h = problem.horizon / depth
        for gamma in gammas:
            x, v = run_momentum_resnet(problem, depth, gamma)
            table.append({"gamma": gamma, "depth": depth, "h": h, "eps_effective": h / (1.0 - gamma),
                          "error_first_order": _max_error(x, x_first),
                          "error_first_order_v": _max_error(v, v_first),
                          "error_momentum_ode": _max_error(x, x_second)})
    return table


def eps_limit(problem: Problem, epsilons: Sequence[float] = EPSILONS, *, progress: bool = False) -> Table:
    """Limit (c): distance of the momentum ODE's solution at ``T`` to the first-order ODE's, as ``eps -> 0``.

    Both are exact (closed form) or reference solutions; the expected rate is 1 (``x_eps = x_0 + O(eps)``
    outside an initial layer of width ``O(eps)``; Tikhonov's theorem).

    Parameters
    ----------
    problem : Problem
        Field, initial state (``v0`` arbitrary) and horizon.
    epsilons : sequence of float > 0
        At least two inertias (units of time).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Table
        Columns ``eps``, ``error_x`` (``max |x_eps(T) - x_0(T)|``), ``error_v`` (``max |x_eps'(T) - F(T,
        x_0(T))|``).

    Raises
    ------
    ValueError
        If fewer than two inertias are given or one is not positive.
    """
    epsilons = tuple(check_eps(e) for e in epsilons)
    if len(epsilons) < 2 or min(epsilons) <= 0:
        raise ValueError(f"`epsilons` needs at least two inertias > 0; got {epsilons!r}.")
    x_first, v_first = problem.final(0.0)
    table = Table()
    for eps in _progress(epsilons, progress, "limit (c)"):
        x, v = problem.final(eps)
        table.append({"eps": eps, "error_x": _max_error(x, x_first), "error_v": _max_error(v, v_first)})
    return table


def fit_orders(
    table: Table, *, x: str, y: str, by: str | None, floor: float, expected=None, n_finest: int | None = N_FINEST,
    label: str = "",
) -> Table:
    """Fitted orders of ``y`` against ``x`` in each group of column ``by`` (one row per group).

    Parameters
    ----------
    table : Table
    x, y : str
        Columns of the step-like quantity and of the error.
    by : str or None
        Grouping column (``None``: one group).
    floor, n_finest :
        As :func:`empirical_order`.
    expected : callable ``group -> float`` or float, optional
        Expected order per group (``nan`` when unknown).
    label : str
        Goes into the ``limit`` column.

    Returns
    -------
    Table
        Columns ``limit, group, quantity, order, expected, n_points``.
    """
    out = Table()
    groups = [None] if by is None else table.unique(by)
    for group in groups:
        sub = table if by is None else table.where(**{by: group})
        fit = empirical_order(sub.column(x), sub.column(y), floor=floor, n_finest=n_finest)
        want = expected(group) if callable(expected) else (math.nan if expected is None else float(expected))
        out.append({"limit": label, "group": "" if group is None else str(group), "quantity": y,
                    "order": fit.order, "expected": want, "n_points": len(fit.steps)})
    return out


def expected_net_order(net: str) -> float:
    """Order of a net of limit (a): 1 for the paper's rule, the integrator's declared order otherwise."""
    return 1.0 if net == RESNET else float(INTEGRATORS[net].order)


@dataclass
class StepLimitStudy:
    """The three limits on one problem, their tidy data and fitted orders.

    Attributes
    ----------
    problem : Problem
    discrete : Table
        Limit (a), from :func:`discrete_limit`.
    fixed_gamma : Table
        Limit (b), from :func:`fixed_gamma_limit`.
    eps : Table
        Limit (c), from :func:`eps_limit`.
    orders : Table
        One row per fitted order (columns ``limit, group, quantity, order, expected, n_points``):
        ``"a"`` per net for ``error_x`` and ``error_v`` against ``h``; ``"b"`` per gamma for
        ``error_first_order`` against ``h``; ``"c"`` for ``error_x`` and ``error_v`` against ``eps``.
    """

    problem: Problem
    discrete: Table
    fixed_gamma: Table
    eps: Table
    orders: Table = field(default_factory=Table)

    def order(self, limit: str, group: str = "", quantity: str | None = None) -> float:
        """The fitted order of one row of :attr:`orders` (``quantity`` defaults to the limit's main error)."""
        quantity = quantity or {"a": "error_x", "b": "error_first_order", "c": "error_x"}[limit]
        rows = self.orders.where(limit=limit, group=str(group), quantity=quantity)
        if len(rows) != 1:
            raise KeyError(f"no fitted order for limit={limit!r}, group={group!r}, quantity={quantity!r}.")
        return float(rows.column("order")[0])


def step_limit_study(
    problem: Problem | None = None, *, quick: bool = False, progress: bool = False, nets: Sequence[str] | None = None,
) -> StepLimitStudy:
    """Run limits (a), (b), (c) on ``problem`` and fit their orders.

    Parameters
    ----------
    problem : Problem, optional
        Default: :func:`~ode_momentum.analysis.problems.forced_pendulum` (non-linear, time-forced,
        ``eps = 0.5``, ``T = 2``; reference solutions from dopri5 at rtol 1e-10).
    quick : bool
        Small sizes (``QUICK_DEPTHS``, ``QUICK_FIXED_GAMMA_DEPTHS``, ``QUICK_EPSILONS``; a few seconds)
        instead of the full ones (``DEPTHS``, ``FIXED_GAMMA_DEPTHS``, ``EPSILONS``; about half a minute).
    progress : bool
        Show tqdm progress bars.
    nets : sequence of str, optional
        The nets of limit (a) (see :func:`discrete_limit`).

    Returns
    -------
    StepLimitStudy
    """
    problem = forced_pendulum() if problem is None else problem
    floor = fit_floor(problem)
    a = discrete_limit(problem, QUICK_DEPTHS if quick else DEPTHS, nets=nets, progress=progress)
    b = fixed_gamma_limit(problem, QUICK_FIXED_GAMMA_DEPTHS if quick else FIXED_GAMMA_DEPTHS, progress=progress)
    epsilons = QUICK_EPSILONS if quick else EPSILONS
    c = eps_limit(problem, epsilons, progress=progress)
    orders = Table()
    for quantity in ("error_x", "error_v"):
        orders.extend(fit_orders(a, x="h", y=quantity, by="net", floor=floor, expected=expected_net_order,
                                 label="a"))
    orders.extend(fit_orders(b, x="h", y="error_first_order", by="gamma", floor=floor, expected=1.0, label="b"))
    for quantity in ("error_x", "error_v"):
        orders.extend(fit_orders(c, x="eps", y=quantity, by=None, floor=floor, expected=1.0, label="c"))
    return StepLimitStudy(problem, a, b, c, orders)


def depth_trajectories(
    problem: Problem, depths: Sequence[int], *, gamma: float | None = None, n_reference: int = 201
) -> Table:
    """Hidden states of depth-``N`` nets against the continuous solution, for trajectory plots.

    The net's layer ``n`` sits at time ``t_n = t0 + n T/N``; its states are those of the ``momentum`` scheme
    (the paper's layer rule in physical units) with ``gamma = 1 - T/(N eps)``, or with a fixed ``gamma`` (then
    the effective inertia is ``h / (1 - gamma)`` and the continuous curve is the first-order ODE's).

    Returns
    -------
    Table
        Columns ``source`` (``"net"`` or ``"ode"``), ``depth`` (0 for the ODE), ``t``, ``sample``, ``feature``,
        ``x``: one row per time, sample and feature of ``problem.x0``.
    """
    depths = tuple(check_positive_int("depths", d) for d in depths)
    table = Table()

    def add(source, depth, ts, xs):
        for t, x in zip(ts.tolist(), xs.tolist()):
            for i, row in enumerate(x):
                for j, value in enumerate(row):
                    table.append({"source": source, "depth": depth, "t": t, "sample": i, "feature": j, "x": value})

    for depth in depths:
        h = problem.horizon / depth
        eps = problem.eps if gamma is None else h / (1.0 - check_gamma(gamma))
        ts = problem.times(depth + 1)
        with torch.no_grad():
            xs, _ = odeint(problem.field, (problem.x0, problem.v0), ts, eps=eps, method="momentum", n_steps=1)
        add("net", depth, ts, xs)
    ts = problem.times(n_reference)
    xs, _ = problem.solution(problem.eps if gamma is None else 0.0, ts)
    add("ode", 0, ts, xs)
    return table
