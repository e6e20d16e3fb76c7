"""Continuous-depth layer: the momentum ODE ``eps x'' + x' = F(t, x)`` solved on ``[0, t1]``."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_eps, check_positive_int, check_real
from ..gradients import resolve_gradient
from ..gradients.reversible import check_reversible
from ..integrators import INTEGRATORS
from ..odeint import odeint


class MomentumODE(nn.Module):
    """Continuous-depth momentum layer: ``x(t1)`` of ``eps x'' + x' = func(t, x)``, ``x(0) = x``.

    Parameters
    ----------
    func : nn.Module, called as ``func(t, x)``
        Force field, tied across depth or conditioned on the 0-dim time tensor ``t``; maps
        ``(batch, *features)`` to the same shape.
    eps : float
        Inertia ``eps >= 0`` (units of time). ``eps = 0`` is a neural ODE ``x' = F`` (``method="euler"``,
        ``gradient="backprop"``).
    t1 : float
        Horizon ``> 0`` (the integration runs on ``[0, t1]``).
    n_steps : int
        Number of fixed steps, ``h = t1 / n_steps``.
    method : str
        A key of ``ode_momentum.INTEGRATORS`` (default ``"leapfrog"``, order 2).
    gradient : {"reversible", "backprop"}
        Memory-free float reversal (reversible methods, ``eps > 0``) or plain autograd.
    gradient_options : dict, optional
        Options of the gradient mode.

    Raises
    ------
    TypeError, ValueError
        For a non-module ``func``, ``eps < 0``, ``t1 <= 0``, ``n_steps < 1``, an unknown method or gradient,
        ``h > eps`` with ``"momentum"``, or a memory-free gradient that cannot reverse the scheme.

    References
    ----------
    Sander et al., ICML 2021, section 3; Chen et al., NeurIPS 2018 (neural ODEs, the ``eps = 0`` limit).
    """

    def __init__(
        self,
        func: nn.Module,
        eps: float,
        *,
        t1: float = 1.0,
        n_steps: int,
        method: str = "leapfrog",
        gradient: str = "reversible",
        gradient_options: dict | None = None,
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"`func` must be an nn.Module called as func(t, x); got {type(func).__name__}.")
        self.func = func
        self.eps = check_eps(eps)
        self.t1 = check_real("t1", t1)
        if self.t1 <= 0:
            raise ValueError(f"`t1` must be > 0; got {t1!r}.")
        self.n_steps = check_positive_int("n_steps", n_steps)
        self.method = check_choice("method", method, INTEGRATORS)
        self.gradient = gradient
        self.gradient_options = gradient_options
        resolve_gradient(gradient, gradient_options)
        integrator = INTEGRATORS[method](self.eps)
        h = self.t1 / self.n_steps
        integrator.damping(h)  # raises for h > eps with "momentum"
        if gradient != "backprop":
            check_reversible(integrator, [h], gradient)

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, t1={self.t1}, n_steps={self.n_steps}, method={self.method!r}, "
            f"gradient={self.gradient!r}"
        )

    def forward(self, x: torch.Tensor, v0: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``x(t1)`` (shape of ``x``); ``v0`` is the initial velocity (default rest)."""
        return self.forward_state(x, v0)[0]

    def forward_state(self, x: torch.Tensor, v0: torch.Tensor | None = None):
        """Return ``(x(t1), v(t1))``."""
        t = torch.tensor([0.0, self.t1], dtype=x.dtype if x.is_floating_point() else None, device=x.device)
        xs, vs = odeint(
            self.func,
            (x, v0),
            t,
            eps=self.eps,
            method=self.method,
            n_steps=self.n_steps,
            gradient=self.gradient,
            gradient_options=self.gradient_options,
        )
        return xs[-1], vs[-1]

