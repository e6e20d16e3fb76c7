"""The asynchronous leapfrog of MALI: a reversible second-order scheme for the first-order ODE ``x' = F``."""

from __future__ import annotations

from .base import FLOAT, AbstractReversibleIntegrator
from .substeps import SubTimes

# v' = 2 u - v is a "damping" by -1 followed by a kick 2 u = (1 - g) u: the velocity is reflected about F.
REFLECTION = -1.0


class AsynchronousLeapfrog(AbstractReversibleIntegrator):
    """Asynchronous leapfrog (ALF, MALI's integrator with damping 1) for ``x' = F(t, x)`` (``eps = 0``).

    The velocity ``v`` is the scheme's running estimate of ``x' = F``. One step of length ``h``::

        x_half = x + (h/2) v
        u      = F(t0 + h/2, x_half)
        v     <- 2 u - v                       (damp(v, -1), then kick(v, 2, u))
        x     <- x_half + (h/2) v

    Inverse, evaluating ``F`` at the same ``(t0 + h/2, x_half)``: ``x_half = x - (h/2) v``,
    ``v <- 2 u - v``, ``x = x_half - (h/2) v``.

    Order 2 in ``x`` and ``v`` when the run starts from the consistent velocity ``v0 = F(t0, x0)`` (then
    ``x <- x + h F(t0 + h/2, x + (h/2) F)`` up to ``O(h^3)``: the explicit midpoint rule). From another
    ``v0`` the positions still converge at order 2, but the velocity error flips sign every step and does not
    decay (it grows like ``e^{|dF/dx| T}`` on contracting fields). 1 evaluation of ``F`` per step, at the
    midpoint; reversible (the step is a composition of shears and a reflection, phase-space volume is
    preserved, so float reversal does not amplify rounding through damping). ``damping(s)`` is 1 for that
    reason: it is the factor by which a step contracts the velocity, what the reversible mode checks and
    what drift predictions use; the reflection itself is ``REFLECTION``.

    Parameters
    ----------
    eps : float
        Must be 0 (the first-order ODE). For ``eps > 0`` use ``leapfrog``.

    Raises
    ------
    ValueError
        If ``eps != 0``; from :meth:`from_gamma` (ALF has no momentum coefficient).

    References
    ----------
    Zhuang, Dvornek, Tatikonda, Duncan, "MALI: A memory efficient and reverse accurate integrator for Neural
    ODEs", ICLR 2021, Algorithm 1 with damping eta = 1.
    """

    name = "alf"
    order = 2
    n_evals = 1

    def __init__(self, eps: float = 0.0):
        super().__init__(eps)
        if self.eps != 0.0:
            raise ValueError(
                f"method 'alf' solves the first-order ODE x' = F and needs eps = 0; got eps = {eps!r}. "
                "For eps > 0 use 'leapfrog' (order 2) or 'yoshida4' (order 4)."
            )
        self._times = SubTimes((0.5,))

    @staticmethod
    def eps_for_gamma(gamma):
        raise ValueError(
            f"method 'alf' solves x' = F (eps = 0) and has no momentum coefficient; got gamma = {gamma!r}. "
            "For a Momentum ResNet use 'momentum', 'momentum_exp' or 'leapfrog'."
        )

    def _damping(self, s):
        return 1.0

    def step(self, func, x, v, span, ops=FLOAT):
        (t_half,) = self._times(span)
        g = ops.coefficient(REFLECTION)
        x = ops.drift(x, 0.5 * span.h, v)
        return ops.damp_kick_drift(x, v, g, 1.0 - g, func(t_half, x), 0.5 * span.h)

    def inverse_step(self, func, x, v, span, ops=FLOAT):
        (t_half,) = self._times(span)
        g = ops.coefficient(REFLECTION)
        x = ops.undrift(x, 0.5 * span.h, v)
        v = ops.unkick_undamp(v, 1.0 - g, func(t_half, x), g)
        x = ops.undrift(x, 0.5 * span.h, v)
        return x, v
