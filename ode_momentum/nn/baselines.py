"""First-order baselines: a plain ResNet stack and a neural ODE."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .momentum_ode import MomentumODE


class ResNetStack(nn.Module):
    """Plain residual stack ``x_{n+1} = x_n + f_n(x_n)`` (He et al. 2016): the ``gamma = 0`` baseline.

    Parameters
    ----------
    functions : sequence of nn.Module, length ``N >= 1``
        Residual functions ``(batch, *features) -> same shape``; extra forward arguments are passed on.

    Raises
    ------
    ValueError
        If ``functions`` is empty.
    """

    def __init__(self, functions: Iterable[nn.Module]):
        super().__init__()
        functions = list(functions)
        if not functions:
            raise ValueError("`functions` is empty; a ResNet stack needs at least one residual function.")
        self.functions = nn.ModuleList(functions)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for f in self.functions:
            x = x + f(x, *args, **kwargs)
        return x


def NeuralODE(func: nn.Module, *, t1: float = 1.0, n_steps: int) -> MomentumODE:
    """First-order neural ODE ``x' = func(t, x)`` on ``[0, t1]`` with explicit Euler (Chen et al. 2018).

    The ``eps = 0`` limit of :class:`MomentumODE`, differentiated by backprop.
    """
    return MomentumODE(func, 0.0, t1=t1, n_steps=n_steps, method="euler", gradient="backprop")
