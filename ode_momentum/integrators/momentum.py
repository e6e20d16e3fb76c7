"""The paper's momentum rule, with semi-implicit (``momentum``) or exact (``momentum_exp``) damping."""

from __future__ import annotations

import math

from .base import FLOAT, AbstractReversibleIntegrator


class _MomentumRule(AbstractReversibleIntegrator):
    """Shared step of the two momentum schemes; they differ only in the damping law ``g(h)``.

    Step (Sander et al. 2021, eq. (3) with ``f_n = h F(t_n, .)``, velocity in physical units)::

        v <- g v + (1 - g) F(t_n, x)
        x <- x + h v

    Inverse: ``x <- x - h v``, then ``v <- (v - (1 - g) F(t_n, x)) / g`` (needs ``g > 0``).
    """

    order = 1
    n_evals = 1

    def step(self, func, x, v, span, ops=FLOAT):
        g = ops.coefficient(self.damping(span.h))
        return ops.damp_kick_drift(x, v, g, 1.0 - g, func(span.t0, x), span.h)

    def inverse_step(self, func, x, v, span, ops=FLOAT):
        g = ops.coefficient(self.damping(span.h))
        x = ops.undrift(x, span.h, v)
        f = func(span.t0, x)
        v = ops.unkick_undamp(v, 1.0 - g, f, g)
        return x, v


class Momentum(_MomentumRule):
    """The paper's momentum rule, ``g = 1 - h / eps`` (semi-implicit Euler on ``eps v' = F - v``).

    Order 1, 1 evaluation of ``F`` per step, reversible for ``h < eps``. Needs ``h <= eps`` (else ``g < 0``).
    A discrete Momentum ResNet layer with coefficient ``gamma`` is one unit step (``h = 1``,
    ``eps = 1 / (1 - gamma)``); build it with ``Momentum.from_gamma(gamma)``.

    Raises
    ------
    ValueError
        From ``step`` / ``inverse_step`` when ``h > eps``.

    References
    ----------
    Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, eq. (3) and section 3.
    """

    name = "momentum"

    @staticmethod
    def eps_for_gamma(gamma):
        return math.inf if gamma == 1.0 else 1.0 / (1.0 - gamma)

    def _damping(self, s):
        # h = eps up to rounding (e.g. output times every eps) is accepted: g is then 0, not -2e-16
        if s > self.eps * (1.0 + 1e-12):
            raise ValueError(
                f"method 'momentum' needs a step h <= eps (its damping is g = 1 - h/eps); got h = {s!r}, "
                f"eps = {self.eps!r}, which gives g = {1.0 - s / self.eps if self.eps > 0 else -math.inf:.4g} < 0. "
                "Use method='momentum_exp' (exact damping, any h) or a smaller step."
            )
        return max(0.0, 1.0 - s / self.eps)


class MomentumExp(_MomentumRule):
    """The momentum rule with exact damping ``g = exp(-h / eps)`` (Lie-Trotter splitting).

    Order 1, 1 evaluation of ``F`` per step, reversible for ``eps > 0``; any ``h > 0``. The velocity
    sub-flow ``eps v' = F(t_n, x) - v`` (x frozen) is solved exactly, then ``x`` drifts with the new ``v``.
    ``eps = 0`` gives ``g = 0``: the explicit Euler step of ``x' = F`` (not reversible).

    References
    ----------
    Sander et al. 2021, section 3 (``gamma = exp(-h/eps)``); McLachlan & Perlmutter 2001 (conformal
    splitting with exact damping).
    """

    name = "momentum_exp"

    @staticmethod
    def eps_for_gamma(gamma):
        if gamma == 1.0:
            return math.inf
        return 0.0 if gamma == 0.0 else -1.0 / math.log(gamma)

    def _damping(self, s):
        return 0.0 if self.eps == 0.0 else math.exp(-s / self.eps)
