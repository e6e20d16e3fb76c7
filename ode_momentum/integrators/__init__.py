"""Fixed-step integrators of ``eps x'' + x' = F(t, x)``; ``INTEGRATORS`` maps each name to its class."""

from .base import FLOAT, AbstractIntegrator, AbstractReversibleIntegrator, FloatArithmetic, LastCall, Span
from .euler import Euler
from .leapfrog import Leapfrog
from .momentum import Momentum, MomentumExp

INTEGRATORS: dict[str, type[AbstractIntegrator]] = {
    cls.name: cls for cls in (Momentum, MomentumExp, Leapfrog, Euler)
}

__all__ = [
    "AbstractIntegrator",
    "AbstractReversibleIntegrator",
    "Euler",
    "FLOAT",
    "FloatArithmetic",
    "INTEGRATORS",
    "LastCall",
    "Leapfrog",
    "Momentum",
    "MomentumExp",
    "Span",
]
