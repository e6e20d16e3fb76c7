"""Claim 3, the continuous limit (Sander et al., ICML 2021, section 3, "Momentum ResNets as ODEs").

A Momentum ResNet ``v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)``, ``x_{n+1} = x_n + v_{n+1}`` with residuals
``f_n = (T/N) F(t_n, .)`` is a step ``h = T/N`` of the momentum ODE ``eps x'' + x' = F(t, x)`` (layer velocity
``v = h x'``) when ``gamma = 1 - T/(N eps)``:

- (a) with that rule, the depth-``N`` net converges to the ODE's solution ``x(T)`` as ``N -> inf``, at order 1;
  run by a second-order scheme (the damped leapfrog) the same field converges at order 2 (``yoshida4``: 4);
- (b) with ``gamma`` *fixed*, the effective inertia ``eps_N = h / (1 - gamma)`` vanishes with ``h``, so the deep
  limit is the first-order ODE ``x' = F`` (a neural ODE), not a momentum ODE;
- (c) as ``eps -> 0`` the momentum ODE's solution tends to that of ``x' = F``, at rate 1 in ``eps``.

``verify`` runs :func:`ode_momentum.analysis.convergence.step_limit_study` on the forced damped pendulum
``eps x'' + x' = -2 sin(x) + cos(3 t)`` (``eps = 0.5``, ``T = 2``; reference solutions from dopri5 at rtol 1e-10
in float64) and, in full mode, on the damped linear oscillator (closed form), and checks the fitted orders.
"""

from __future__ import annotations

import time

import numpy as np

from ode_momentum.analysis import ClaimReport
from ode_momentum.analysis.convergence import RESNET, run_integrator, run_momentum_resnet, step_limit_study
from ode_momentum.analysis.problems import damped_oscillator, forced_pendulum

CLAIM = "3. Continuous limit: deep Momentum ResNets converge to the momentum ODE (fixed gamma: to x' = F)"

ORDER_TOL = 0.1  # the bound on |fitted order - expected order|
# Limit (b) at gamma = 0.9 has an error constant ~ gamma / (1 - gamma): its 4-point slope is 1.23 on the
# quick depths (N = 64..512, eps_N = 0.31..0.04, not yet << 1) and 1.05 on the full ones (N = 512..4096).
PREASYMPTOTIC_TOL = 0.3
# MomentumResNet (layer units, unit steps) against the momentum integrator (physical units): the same
# arithmetic up to the association of h * F and (1 - gamma); float64 differences of a few ulps per layer.
NET_VS_INTEGRATOR = 1e-12
# Limit (b): the error to the problem's momentum ODE must stay large at the deepest net (it tends to
# |x_0(T) - x_eps(T)| ~ 0.5 on the pendulum, not to 0).
PLATEAU = 0.1


def _check_orders(report: ClaimReport, study, quick: bool) -> None:
    name = study.problem.name
    for row in study.orders:
        if row["limit"] == "a" and row["quantity"] == "error_x":
            what = ("MomentumResNet, gamma = 1 - T/(N eps)" if row["group"] == RESNET
                    else f"{row['group']} net (N steps)")
            tol = ORDER_TOL
        elif row["limit"] == "b":
            what = f"fixed gamma = {row['group']}: error to x' = F"
            tol = PREASYMPTOTIC_TOL if quick and float(row["group"]) > 0.5 else ORDER_TOL
        elif row["limit"] == "c" and row["quantity"] == "error_x":
            what = "eps -> 0: |x_eps(T) - x_0(T)|"
            tol = ORDER_TOL
        else:
            continue
        report.add(f"({row['limit']}) fitted order, {what}, {name}", row["order"],
                   f"{row['expected']:g} +- {tol:g}", abs(row["order"] - row["expected"]) <= tol)


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 3 numerically.

    Parameters
    ----------
    quick : bool
        A few seconds (default): the forced pendulum at the quick sizes. ``False``: full sizes, and the damped
        linear oscillator too (about a minute).

    Returns
    -------
    ClaimReport
        One check per fitted order and per qualitative property; ``report.passed`` when all pass.
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    problems = [forced_pendulum()] if quick else [forced_pendulum(), damped_oscillator()]
    for problem in problems:
        study = step_limit_study(problem, quick=quick)
        _check_orders(report, study, quick)

        # (a) The discrete net is the momentum integrator: the same states, in layer units.
        depth = int(study.discrete.column("depth")[0])
        x_net, v_net = run_momentum_resnet(problem, depth)
        x_int, v_int, _ = run_integrator(problem, "momentum", depth)
        gap = max(float((x_net - x_int).abs().max()), float((v_net - v_int).abs().max()))
        report.add(f"(a) MomentumResNet vs momentum integrator, depth {depth}, {problem.name}", gap,
                   f"< {NET_VS_INTEGRATOR:g}", gap < NET_VS_INTEGRATOR)

        # (b) The fixed-gamma limit is x' = F: its error falls at every depth, the error to the momentum ODE
        # does not vanish.
        for gamma in study.fixed_gamma.unique("gamma"):
            rows = study.fixed_gamma.where(gamma=gamma)
            errors = rows.column("error_first_order")
            rises = int(np.sum(np.diff(errors) >= 0))
            report.add(f"(b) gamma = {gamma:g}: depths where the error to x' = F does not fall, {problem.name}",
                       rises, "0", rises == 0)
            plateau = float(rows.column("error_momentum_ode")[-1])
            report.add(f"(b) gamma = {gamma:g}: error to the eps = {problem.eps:g} momentum ODE at the deepest "
                       f"net, {problem.name}", plateau, f"> {PLATEAU:g} (no convergence)", plateau > PLATEAU)
    report.seconds = time.perf_counter() - start
    return report


if __name__ == "__main__":  # pragma: no cover
    rep = verify(quick=True)
    for check in rep.checks:
        print(f"{'ok ' if check.passed else 'FAIL'} {check.name}: {check.measured:.4g} ({check.expected})")
    print(f"passed: {rep.passed} in {rep.seconds:.1f} s")
