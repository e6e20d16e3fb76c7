"""Triple-jump composition of the damped leapfrog: ``yoshida4`` (fourth order)."""

from __future__ import annotations

from .base import FLOAT, AbstractReversibleIntegrator
from .momentum import MomentumExp
from .substeps import SubTimes

# Yoshida's triple-jump weights: w1 + w0 + w1 = 1 and 2 w1^3 + w0^3 = 0, which cancels the h^3 error term of
# a symmetric second-order step. w1 = 1.3512..., w0 = -1.7024... (the middle sub-step runs backwards).
W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
W0 = 1.0 - 2.0 * W1


class Yoshida4(AbstractReversibleIntegrator):
    """Yoshida's fourth-order triple jump of the damped leapfrog: ``L(w1 h) L(w0 h) L(w1 h)``.

    ``L(s)`` is one ``leapfrog`` step of length ``s``: ``B(s/2) A(s) B(s/2)`` with the exact damping-kick
    ``B(r): v <- e^{-r/eps} v + (1 - e^{-r/eps}) F(t, x)`` and the drift ``A(s): x <- x + s v``. The weights
    are ``w1 = 1 / (2 - 2^{1/3})`` and ``w0 = 1 - 2 w1``; the sub-steps run over
    ``[t0, t0 + w1 h]``, ``[t0 + w1 h, t0 + (1 - w1) h]``, ``[t0 + (1 - w1) h, t1]``, so ``F`` is evaluated at
    times in ``[t0 - 0.35 h, t0 + 1.35 h]``. The middle sub-step has negative length: its damping factor
    ``e^{-w0 h / (2 eps)}`` exceeds 1 (harmless in floating point; an exact arithmetic stores no bits for it).

    Order 4 for ``eps > 0`` (the composition of a symmetric scheme; exact damping keeps the leapfrog
    symmetric), 3 evaluations of ``F`` per step (each sub-step's last evaluation is the next one's first;
    first same as last across steps), reversible for ``eps > 0``: the inverse runs the inverse leapfrog
    sub-steps in reverse order. The whole step damps by ``e^{-h/eps}``, the damping law of ``momentum_exp``
    and ``leapfrog``. ``eps = 0`` gives three explicit Euler sub-steps of ``x' = F`` (order 1, not
    reversible).

    References
    ----------
    Yoshida, "Construction of higher order symplectic integrators", Phys. Lett. A 150 (1990) 262-268;
    Bhatt, Floyd & Moore 2016 (conformal symplectic leapfrog); ``docs`` DESIGN.md section 2.
    """

    name = "yoshida4"
    order = 4
    n_evals = 3

    eps_for_gamma = staticmethod(MomentumExp.eps_for_gamma)
    _damping = MomentumExp._damping

    def __init__(self, eps: float):
        super().__init__(eps)
        self._times = SubTimes((W1, 1.0 - W1))

    def _substeps(self, span, ops):
        """``(t_start, t_end, length, half-kick damping)`` of the three leapfrog sub-steps, in order."""
        ta, tb = self._times(span)
        g1 = ops.coefficient(self.damping(0.5 * W1 * span.h))
        g0 = ops.coefficient(self.damping(0.5 * W0 * span.h))
        return (span.t0, ta, W1 * span.h, g1), (ta, tb, W0 * span.h, g0), (tb, span.t1, W1 * span.h, g1)

    def step(self, func, x, v, span, ops=FLOAT):
        for t0, t1, s, g in self._substeps(span, ops):
            x, v = ops.damp_kick_drift(x, v, g, 1.0 - g, func(t0, x), s)
            v = ops.damp_kick(v, g, 1.0 - g, func(t1, x))
        return x, v

    def inverse_step(self, func, x, v, span, ops=FLOAT):
        for t0, t1, s, g in reversed(self._substeps(span, ops)):
            v = ops.unkick_undamp(v, 1.0 - g, func(t1, x), g)
            x = ops.undrift(x, s, v)
            v = ops.unkick_undamp(v, 1.0 - g, func(t0, x), g)
        return x, v
