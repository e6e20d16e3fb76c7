"""Work-precision: error at ``T`` against the number of ``F`` evaluations, for every integrator.

The registry's fixed-step schemes (``ode_momentum.INTEGRATORS``) run through :func:`ode_momentum.odeint`;
torchdiffeq's ``rk4`` (fixed grid) and ``dopri5`` (adaptive, over a range of tolerances) run on the
first-order form as baselines. Evaluations are counted by wrapping ``F`` (first-same-as-last reuse
included), as scipy's ``solve_ivp`` counts ``nfev``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._checks import check_eps, check_positive_int
from ..integrators import INTEGRATORS
from ..reference import TORCHDIFFEQ_ADAPTIVE, TORCHDIFFEQ_FIXED, solve_first_order_form
from .convergence import CountingField, _max_error, _progress, run_integrator
from .problems import Problem
from .tidy import Table

STEP_COUNTS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUICK_STEP_COUNTS = (4, 16, 64, 256)
# Tolerances of the adaptive baselines (atol = rtol / 100): 1e-3 .. 1e-9. Not 1e-10: that is the reference
# solver itself on problems without a closed form (its error would read 0).
RTOLS = tuple(10.0**-k for k in range(3, 10))
QUICK_RTOLS = (1e-3, 1e-6, 1e-9)
BASELINES = ("rk4", "dopri5")


def accepts(method: str, eps: float, h: float) -> bool:
    """Whether registry method ``method`` runs at inertia ``eps`` with step ``h`` (``euler``/``alf`` need
    ``eps = 0``, ``momentum`` needs ``h <= eps``)."""
    try:
        INTEGRATORS[method](eps).damping(h)
    except ValueError:
        return False
    return True


def work_precision(
    problem: Problem,
    *,
    eps: float | None = None,
    methods: Sequence[str] | None = None,
    step_counts: Sequence[int] = STEP_COUNTS,
    baselines: Sequence[str] = BASELINES,
    rtols: Sequence[float] = RTOLS,
    progress: bool = False,
) -> Table:
    """Error at ``T`` and ``F`` evaluations of every method on ``problem`` at inertia ``eps``.

    Parameters
    ----------
    problem : Problem
        Field, initial state, horizon; its (closed-form or reference) solution at ``eps`` is the target.
    eps : float, optional
        Inertia (default ``problem.eps``). At ``eps = 0`` (the first-order ODE) every run starts from the
        consistent velocity ``v0 = F(t0, x0)``; ``alf``'s velocity converges only from it.
    methods : sequence of str, optional
        Registry integrators; default all. Those that do not run at ``eps`` (``euler``/``alf`` at
        ``eps > 0``; ``momentum`` at ``h > eps``) are skipped at the step counts they refuse.
    step_counts : sequence of int
        Numbers of fixed steps over ``[t0, t1]`` (registry methods and the fixed-grid baselines).
    baselines : sequence of str
        torchdiffeq methods on the first-order form: fixed-grid ones (``"rk4"``, ``"midpoint"``, ``"euler"``)
        run at ``step_counts``, adaptive ones (``"dopri5"``, ...) at ``rtols`` (``atol = rtol / 100``).
    rtols : sequence of float
        Tolerances of the adaptive baselines.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Table
        Columns ``method``, ``family`` (``"ode_momentum"`` or ``"torchdiffeq"``), ``eps``, ``n_steps`` (0 for
        adaptive runs), ``rtol`` (nan for fixed steps), ``nfev`` (evaluations of ``F``), ``error_x``,
        ``error_v`` (max-norm errors of ``x(T)`` and ``x'(T)``).

    Raises
    ------
    ValueError
        For ``eps < 0``, an unknown method or baseline, or a non-positive step count.
    """
    eps = problem.eps if eps is None else check_eps(eps)
    methods = list(INTEGRATORS) if methods is None else list(methods)
    for m in methods:
        if m not in INTEGRATORS:
            raise ValueError(f"`methods` must be keys of ode_momentum.INTEGRATORS {list(INTEGRATORS)}; got {m!r}.")
    known = list(TORCHDIFFEQ_FIXED + TORCHDIFFEQ_ADAPTIVE)
    for b in baselines:
        if b not in known:
            raise ValueError(f"`baselines` must be torchdiffeq methods {known}; got {b!r}.")
    step_counts = [check_positive_int("step_counts", n) for n in step_counts]
    x_ref, v_ref = problem.final(eps)
    v0 = problem.field(torch.tensor(problem.t0, dtype=problem.x0.dtype), problem.x0) if eps == 0.0 else problem.v0
    table = Table()

    def add(method, family, n_steps, rtol, nfev, x, v):
        table.append({"method": method, "family": family, "eps": eps, "n_steps": n_steps, "rtol": rtol,
                      "nfev": nfev, "error_x": _max_error(x, x_ref), "error_v": _max_error(v, v_ref)})

    for method in _progress(methods, progress, "work-precision"):
        for n in step_counts:
            if accepts(method, eps, problem.horizon / n):
                x, v, nfev = run_integrator(problem, method, n, eps, v0)
                add(method, "ode_momentum", n, math.nan, nfev, x, v)
    for method in baselines:
        runs = [(n, None) for n in step_counts] if method in TORCHDIFFEQ_FIXED else [(None, r) for r in rtols]
        for n, rtol in runs:
            func = CountingField(problem.field)
            kwargs = {"n_steps": n} if n is not None else {"rtol": rtol, "atol": rtol * 1e-2}
            xs, vs = solve_first_order_form(func, (problem.x0, v0), problem.times(), eps=eps, method=method,
                                            **kwargs)
            nfev = func.nfev - (2 if eps == 0.0 else 0)  # less the two evaluations that build vs at eps = 0
            add(method, "torchdiffeq", n or 0, math.nan if rtol is None else rtol, nfev, xs[-1], vs[-1])
    return table
