"""Explicit Euler for the first-order ODE ``x' = F(t, x)`` (``eps = 0``): the ResNet / neural-ODE step."""

from __future__ import annotations

from .base import FLOAT, AbstractIntegrator


class Euler(AbstractIntegrator):
    """Explicit Euler, ``v <- F(t_n, x)``, ``x <- x + h v``: a plain ResNet step (``gamma = 0``).

    Order 1, 1 evaluation of ``F`` per step, not reversible (the velocity is forgotten). Solves the
    first-order ODE ``x' = F`` and so needs ``eps = 0``; the returned ``v`` is the slope used by the step.

    Raises
    ------
    ValueError
        If ``eps != 0``.

    References
    ----------
    He et al. 2016 (ResNets); Chen et al. 2018 (neural ODEs); Sander et al. 2021, ``gamma = 0``.
    """

    name = "euler"
    order = 1
    n_evals = 1

    def __init__(self, eps: float = 0.0):
        super().__init__(eps)
        if self.eps != 0.0:
            raise ValueError(
                f"method 'euler' solves the first-order ODE x' = F and needs eps = 0; got eps = {eps!r}. "
                "For eps > 0 use 'leapfrog', 'momentum_exp' or 'momentum'."
            )

    @staticmethod
    def eps_for_gamma(gamma):
        if gamma != 0.0:
            raise ValueError(f"method 'euler' is the gamma = 0 limit; got gamma = {gamma!r}.")
        return 0.0

    def _damping(self, s):
        return 0.0

    def step(self, func, x, v, span, ops=FLOAT):
        v = func(span.t0, x)
        return ops.drift(x, span.h, v), v
