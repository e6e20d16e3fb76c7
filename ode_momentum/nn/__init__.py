"""Layers: the discrete ``MomentumResNet``, the continuous ``MomentumODE``, and first-order baselines."""

from .baselines import NeuralODE, ResNetStack
from .momentum_ode import MomentumODE
from .momentum_resnet import MomentumResNet

__all__ = ["MomentumODE", "MomentumResNet", "NeuralODE", "ResNetStack"]
