"""Claim 5, first-order flows are contained in momentum flows (Sander et al., ICML 2021, section 4).

Any solution of a first-order ODE ``x' = f(t, x)`` also solves the momentum ODE

    eps x'' + x' = f + eps (f_t + J_f f),     x(0) = x0,   x'(0) = f(0, x0),

for every ``eps > 0`` (differentiate ``x' = f`` once). So momentum ODEs can represent every first-order
flow, with the learned-initial-velocity option ``v0 = f(x0)``; the converse fails (claims 4 and 6).

``verify`` solves the embedded momentum ODE for a non-linear, time-dependent field in the plane with the
damped leapfrog (float64, ``ode_momentum.analysis.embedding``, ``J_f f`` by ``torch.func.jvp``) and compares
it with torchdiffeq's dopri5 on ``x' = f`` (rtol 1e-12): the error must fall at the scheme's order 2 as the
step shrinks (the continuous statement is exact), while the naive momentum ODE (force ``f``, ``v0 = 0``)
stays off by an amount of order ``eps``.
"""

from __future__ import annotations

import time

import torch

from ode_momentum.analysis import ClaimReport
from ode_momentum.analysis.embedding import first_order_embedding

CLAIM = "5. First-order flows embed in momentum flows: force f + eps J_f f, v0 = f(x0)"

T1 = 2.0  # horizon
ORDER_TOL = 0.1  # |fitted order - 2| for the damped leapfrog (measured within 0.02)
# Error at the finest step over h^2 (the leapfrog's error constant on this field): measured 0.17 to 0.51 for
# x and 0.27 to 0.62 for v over eps in [0.1, 3]; the bound leaves a factor of three.
ERROR_PER_H2 = 2.0
# The naive momentum ODE misses the flow by O(eps); it must be at least this many times the corrected error.
NAIVE_FACTOR = 100.0


class _Field:
    """``f(t, x) = W2 tanh(W1 x + b) + 0.3 cos(t) R x`` in the plane (``R`` swaps the coordinates), float64."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.W1 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
        self.b = torch.randn(16, generator=gen, dtype=torch.float64)
        self.W2 = torch.randn(2, 16, generator=gen, dtype=torch.float64) / 4

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.W1.T + self.b) @ self.W2.T + 0.3 * torch.cos(t) * x.flip(-1)


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 5 numerically (about a second in quick mode).

    Parameters
    ----------
    quick : bool
        ``eps = 0.5`` and 16 to 128 steps (default); ``False``: ``eps`` in 0.1, 1, 3 and 16 to 1024 steps.

    Returns
    -------
    ClaimReport
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    f = _Field()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    n_steps = (16, 32, 64, 128) if quick else (16, 32, 64, 128, 256, 512, 1024)
    for eps in (0.5,) if quick else (0.1, 1.0, 3.0):
        res = first_order_embedding(f, x0, eps=eps, t1=T1, n_steps=n_steps, method="leapfrog")
        report.add(f"eps {eps:g}: fitted order of |x(T) - x_flow(T)| in h (leapfrog)", res.fitted_order,
                   f"2 +- {ORDER_TOL:g}", abs(res.fitted_order - 2.0) <= ORDER_TOL)
        h = float(res.h[-1])
        bound = ERROR_PER_H2 * h**2
        report.add(f"eps {eps:g}: relative error at h = {h:g}", float(res.error[-1]),
                   f"< {bound:.2g} ({ERROR_PER_H2:g} h^2)", float(res.error[-1]) < bound)
        report.add(f"eps {eps:g}: velocity v(T) vs f(T, x(T)) at h = {h:g}", float(res.velocity_error[-1]),
                   f"< {bound:.2g} ({ERROR_PER_H2:g} h^2)", float(res.velocity_error[-1]) < bound)
        ratio = res.uncorrected_error / float(res.error[-1])
        report.add(f"eps {eps:g}: naive momentum ODE (force f, v0 = 0) error / corrected error", ratio,
                   f"> {NAIVE_FACTOR:g}", ratio > NAIVE_FACTOR)
    report.seconds = time.perf_counter() - start
    return report
