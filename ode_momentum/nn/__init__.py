"""Layers: the discrete ``MomentumResNet``, the continuous ``MomentumODE``, first-order baselines and a RevNet."""

from .baselines import NeuralODE, ResNetStack
from .momentum_ode import MomentumODE
from .momentum_resnet import MomentumResNet
from .revnet import AdditiveCoupling, RevNetStack

__all__ = ["AdditiveCoupling", "MomentumODE", "MomentumResNet", "NeuralODE", "ResNetStack", "RevNetStack"]
