"""ode-momentum: Momentum Residual Networks as discretised second-order ODEs ``eps x'' + x' = F(t, x)``.

Integrators (``INTEGRATORS``), the functional solver :func:`odeint`, layers (:class:`MomentumResNet`,
:class:`MomentumODE`) with memory-free gradients, analysis (``ode_momentum.analysis``) and data
(``ode_momentum.data``); :func:`to_momentum` converts ResNets and Transformer encoders, ``ode_momentum.models``
builds ResNets (plain or momentum).
"""

from .gradients import (
    GRADIENTS,
    ExactReversalError,
    FixedPointRangeError,
    ReconstructionDriftError,
    ReconstructionDriftWarning,
)
from .integrators import INTEGRATORS, AsynchronousLeapfrog, Euler, Leapfrog, Momentum, MomentumExp, Yoshida4
from .nn import AdditiveCoupling, MomentumODE, MomentumResNet, NeuralODE, ResNetStack, RevNetStack
from .odeint import odeint
from . import models  # ResNet builders: ode_momentum.models.resnet18, ...
from .convert import to_momentum, transform_to_momentumnet

__version__ = "0.1.0"

__all__ = [
    "GRADIENTS",
    "INTEGRATORS",
    "AdditiveCoupling",
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
    "RevNetStack",
    "Yoshida4",
    "models",
    "odeint",
    "to_momentum",
    "transform_to_momentumnet",
]
