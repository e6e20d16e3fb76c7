"""ode-momentum: Momentum Residual Networks as discretised second-order ODEs ``eps x'' + x' = F(t, x)``.

Integrators (``INTEGRATORS``), the functional solver :func:`odeint`, layers (:class:`MomentumResNet`,
:class:`MomentumODE`) with memory-free gradients, analysis (``ode_momentum.analysis``) and data
(``ode_momentum.data``).
"""

from .gradients import (
    GRADIENTS,
    ExactReversalError,
    FixedPointRangeError,
    ReconstructionDriftError,
    ReconstructionDriftWarning,
)
from .integrators import INTEGRATORS, AsynchronousLeapfrog, Euler, Leapfrog, Momentum, MomentumExp, Yoshida4
from .nn import MomentumODE, MomentumResNet, NeuralODE, ResNetStack
from .odeint import odeint

__version__ = "0.1.0"

__all__ = [
    "GRADIENTS",
    "INTEGRATORS",
    "AsynchronousLeapfrog",
    "Euler",
    "ExactReversalError",
    "FixedPointRangeError",
    "Leapfrog",
    "Momentum",
    "MomentumExp",
    "MomentumODE",
    "MomentumResNet",
    "NeuralODE",
    "ReconstructionDriftError",
    "ReconstructionDriftWarning",
    "ResNetStack",
    "Yoshida4",
    "odeint",
]
