"""Claim 4, linear representability (Sander et al., ICML 2021, "Representation capabilities").

With a linear residual function ``F(x) = A x`` and the network starting at rest (``v0 = 0``), the momentum ODE
``eps x'' + x' = A x`` maps ``x0`` to ``x(1) = Psi_eps(A) x0``, where ``Psi_eps`` is the primary matrix function
of ``psi(lam) = e^{-1/(2 eps)} [cosh(s / (2 eps)) + sinh(s / (2 eps)) / s]``, ``s = sqrt(1 + 4 eps lam)``.

- A first-order flow (``eps = 0``, a neural ODE or the deep limit of a ResNet) gives ``exp(A)``, so it reaches
  exactly the real matrices with a real logarithm (Culver 1966): never one with ``det < 0`` such as
  ``diag(-1, 2)``.
- A momentum flow reaches every real matrix up to a positive factor. On the real axis ``psi(., eps)`` takes
  every value in ``[m(eps), inf)``, where the most negative reachable value ``m(eps)`` goes from 0 towards -1 as
  ``eps`` grows, so the reachable set grows with ``eps``.
- ``-1`` itself is never reached in one dimension: ``E = eps x'^2 / 2 - lam x^2 / 2`` decreases strictly along
  the flow, so ``|x(1)| < |x0|`` when ``lam < 0``. Hence "up to a factor".

``verify`` measures these with ``ode_momentum.analysis`` (the kernels against the project's own leapfrog
integrator, ``min_reachable`` across ``eps``, Culver's criterion, a preimage of ``alpha diag(-1, 2)`` checked
by ``psi_matrix`` and by integration) and trains a linear ``MomentumODE`` and a first-order ``NeuralODE`` on the
same target by gradient descent.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ode_momentum.analysis import (
    ClaimReport,
    fit_linear_flow,
    has_real_logarithm,
    integrate_psi_matrix,
    min_reachable,
    psi,
    psi_matrix,
    representable,
)

CLAIM = "4. Linear representability: momentum flows reach every matrix up to a factor, first-order flows do not"

# Tolerances (relative, Frobenius):
KERNEL_VS_INTEGRATOR = 1e-8  # psi against leapfrog + Richardson (order 4) at 512/1024 steps on [0, 1]
PREIMAGE_RTOL = 1e-10  # psi_matrix(A) against alpha D; the construction reaches ~1e-14
INTEGRATION_RTOL = 1e-8  # the same through the integrator instead of psi_matrix
LEARNED_RTOL = 1e-3  # the trained MomentumODE's own map against alpha D


def _rel(x, ref) -> float:
    s = float(np.max(np.abs(ref)))
    return float(np.linalg.norm((x - ref) / s) / np.linalg.norm(ref / s))


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 4 numerically.

    Parameters
    ----------
    quick : bool
        A few seconds (default): two ``eps`` for the kernel check, a short training run. ``False`` adds more
        ``eps`` values, a random 4 x 4 target and a longer training run.

    Returns
    -------
    ClaimReport
        One check per measured quantity; ``report.passed`` when all pass.
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    D = np.diag([-1.0, 2.0])

    # 1. The closed form is the flow: psi against the project's leapfrog on a diagonal A.
    lams = np.array([-60.0, -12.0, -3.0, -0.5, 0.0, 1.5])
    for eps in (0.3, 3.0) if quick else (0.1, 0.3, 1.0, 3.0, 30.0):
        err = _rel(np.diag(integrate_psi_matrix(np.diag(lams), eps, n_steps=512)), psi(lams, eps))
        report.add(f"psi vs leapfrog integration, eps = {eps:g}", err, f"< {KERNEL_VS_INTEGRATOR:g}",
                   err < KERNEL_VS_INTEGRATOR)

    # 2. First-order flows: no real logarithm for diag(-1, 2), at any scale (det < 0).
    report.add("diag(-1, 2) has a real logarithm (Culver)", float(bool(has_real_logarithm(D))), "0 (no)",
               not has_real_logarithm(D))

    # 3. The reachable negative range grows with eps, from 0 towards -1, and never reaches -1.
    eps_values = (0.1, 1.0, 10.0, 100.0) if quick else tuple(np.logspace(-1, 3, 13))
    values = [min_reachable(e).value for e in eps_values]
    for e, v in zip(eps_values, values):
        report.add(f"min_reachable(eps = {e:.3g})", v, "in (-1, 0)", -1.0 < v < 0.0)
    report.add("min_reachable decreases with eps (count of increases)",
               sum(b >= a for a, b in zip(values, values[1:])), "0", all(b < a for a, b in zip(values, values[1:])))

    # 4. diag(-1, 2) is reachable with momentum, up to alpha = |min_reachable(eps)|; a preimage, checked twice.
    for eps in (1.0,) if quick else (0.2, 1.0, 5.0):
        result = representable(D, eps)
        gap = abs(result.max_scale / abs(min_reachable(eps).value) - 1.0)
        report.add(f"max_scale / |min_reachable| - 1, diag(-1, 2), eps = {eps:g}", gap, "< 1e-12", gap < 1e-12)
        alpha = result.max_scale
        A = result.preimage(alpha)
        err = _rel(psi_matrix(A, eps), alpha * D)
        report.add(f"preimage residual via psi_matrix, eps = {eps:g}", err, f"< {PREIMAGE_RTOL:g}",
                   err < PREIMAGE_RTOL)
        err = _rel(integrate_psi_matrix(A, eps, n_steps=512), alpha * D)
        report.add(f"preimage residual via leapfrog integration, eps = {eps:g}", err, f"< {INTEGRATION_RTOL:g}",
                   err < INTEGRATION_RTOL)
    if not quick:
        target = np.random.default_rng(0).standard_normal((4, 4))
        result = representable(target, 1.0)
        err = _rel(psi_matrix(result.preimage(result.max_scale), 1.0), result.max_scale * target)
        report.add("preimage residual, random 4 x 4 target at max_scale, eps = 1", err, f"< {PREIMAGE_RTOL:g}",
                   err < PREIMAGE_RTOL)

    # 5. Learnable, not just existent: gradient descent on a linear MomentumODE; a first-order model fails.
    eps = 1.0
    alpha = 0.5 * representable(D, eps).max_scale
    iters = 60 if quick else 200
    momentum = fit_linear_flow(alpha * D, eps, n_steps=32, iters=iters)
    report.add("trained MomentumODE, relative error on alpha diag(-1, 2)", momentum.model_error,
               f"< {LEARNED_RTOL:g}", momentum.model_error < LEARNED_RTOL)
    first_order = fit_linear_flow(alpha * D, 0.0, n_steps=32, iters=iters)
    bound = 1.0 / math.sqrt(5.0)  # distance to det >= 0 matrices: sigma_min(alpha D) / ||alpha D||_F
    report.add("trained first-order NeuralODE, relative error on the same target", first_order.model_error,
               f">= {bound:.6f} (det >= 0 bound)", first_order.model_error >= bound * (1 - 1e-9))

    report.seconds = time.perf_counter() - start
    return report


if __name__ == "__main__":  # pragma: no cover
    rep = verify(quick=True)
    for check in rep.checks:
        print(f"{'ok ' if check.passed else 'FAIL'} {check.name}: {check.measured:.3e} ({check.expected})")
    print(f"passed: {rep.passed} in {rep.seconds:.1f} s")
