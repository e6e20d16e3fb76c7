"""Fixed-step integrators of ``eps x'' + x' = F(t, x)``; ``INTEGRATORS`` maps each name to its class."""

from .alf import AsynchronousLeapfrog
from .base import FLOAT, AbstractIntegrator, AbstractReversibleIntegrator, FloatArithmetic, LastCall, Span
from .euler import Euler
from .leapfrog import Leapfrog
from .momentum import Momentum, MomentumExp
from .substeps import SubTimes
from .yoshida import Yoshida4

INTEGRATORS: dict[str, type[AbstractIntegrator]] = {
    cls.name: cls for cls in (Momentum, MomentumExp, Leapfrog, Yoshida4, Euler, AsynchronousLeapfrog)
}

__all__ = [
    "AbstractIntegrator",
    "AbstractReversibleIntegrator",
    "AsynchronousLeapfrog",
    "Euler",
    "FLOAT",
    "FloatArithmetic",
    "INTEGRATORS",
    "LastCall",
    "Leapfrog",
    "Momentum",
    "MomentumExp",
    "Span",
    "SubTimes",
    "Yoshida4",
]
