"""Strang splitting of exact damping and drift: the damped leapfrog (second order)."""

from __future__ import annotations

from .base import FLOAT, AbstractReversibleIntegrator
from .momentum import MomentumExp


class Leapfrog(AbstractReversibleIntegrator):
    """Damped leapfrog: ``B(h/2) A(h) B(h/2)``.

    ``B(s)`` solves ``eps v' = F(t, x) - v`` exactly with ``x`` frozen,
    ``v <- e^{-s/eps} v + (1 - e^{-s/eps}) F(t, x)``; ``A(h)`` drifts ``x <- x + h v``. The first half-kick uses
    ``F(t_n, x_n)``, the second ``F(t_{n+1}, x_{n+1})``, which the next step reuses (first same as last).

    Order 2, 1 evaluation of ``F`` per step (after the first), reversible for ``eps > 0``: the inverse of
    ``B(s)`` is ``v <- e^{s/eps} (v - (1 - e^{-s/eps}) F(t, x))``. The map is conformal symplectic: it
    contracts phase-space volume by exactly ``e^{-h d / eps}``, like the flow. ``eps = 0`` reduces it to the
    explicit Euler step of ``x' = F`` with ``v = F(t, x)`` (not reversible).

    References
    ----------
    Bhatt, Floyd & Moore 2016, "Second order conformal symplectic schemes for damped Hamiltonian systems";
    ``reference/exact_reversal.md`` section 4.4.
    """

    name = "leapfrog"
    order = 2
    n_evals = 1

    # Same damping law as `momentum_exp`: the whole step damps by exp(-h/eps).
    eps_for_gamma = staticmethod(MomentumExp.eps_for_gamma)
    _damping = MomentumExp._damping

    def step(self, func, x, v, span, ops=FLOAT):
        g = ops.coefficient(self.damping(0.5 * span.h))
        x, v = ops.damp_kick_drift(x, v, g, 1.0 - g, func(span.t0, x), span.h)
        v = ops.damp_kick(v, g, 1.0 - g, func(span.t1, x))
        return x, v

    def inverse_step(self, func, x, v, span, ops=FLOAT):
        g = ops.coefficient(self.damping(0.5 * span.h))
        v = ops.unkick_undamp(v, 1.0 - g, func(span.t1, x), g)
        x = ops.undrift(x, span.h, v)
        v = ops.unkick_undamp(v, 1.0 - g, func(span.t0, x), g)
        return x, v
