"""Continuous-depth layer: the momentum ODE ``eps x'' + x' = F(t, x)`` solved on ``[0, t1]``."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_eps, check_positive_int, check_real
from ..gradients import resolve_gradient
from ..gradients.exact import effective_gamma
from ..gradients.reversal import check_reversible
from ..integrators import INTEGRATORS, FloatArithmetic, Span
from ..odeint import build_trajectory


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
    gradient : {"reversible", "exact", "checkpoint", "auto", "backprop"}
        A key of ``ode_momentum.GRADIENTS``; the memory-free modes need a reversible method and ``eps > 0``
        (see :class:`MomentumResNet`). In ``"exact"`` mode the damping ``exp(-h/eps)`` is quantised to a dyadic
        rational (:attr:`effective_eps`).
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
        self._solve, self._options = resolve_gradient(gradient, gradient_options)
        integrator = INTEGRATORS[method](self.eps)
        h = self.t1 / self.n_steps
        integrator.damping(h)  # raises for h > eps with "momentum"
        if gradient != "backprop":
            check_reversible(integrator, [h], gradient)

    @property
    def effective_eps(self) -> float:
        """The ``eps`` the forward integrates with: ``eps`` itself, or in the ``"exact"`` / ``"auto"`` modes the
        one implied by the quantised damping factor of the scheme's (first) damping sub-step."""
        if self.gradient not in ("exact", "auto") or self.eps == 0:
            return self.eps
        integrator = INTEGRATORS[self.method](self.eps)
        g = _first_damping(integrator, self.t1 / self.n_steps)
        g_eff = effective_gamma(g, self._options.gamma_bits)
        return self.eps * integrator.eps_for_gamma(g_eff) / integrator.eps_for_gamma(g)

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
        traj, x, v0 = self.trajectory(x, v0)
        xs, vs = self._solve(traj, x, v0, self._options)
        return xs[-1], vs[-1]

    def trajectory(self, x: torch.Tensor, v0: torch.Tensor | None = None):
        """``(trajectory, x0, v0)``: the validated solve this layer runs (``ode_momentum.gradients``)."""
        t = torch.tensor([0.0, self.t1], dtype=x.dtype if x.is_floating_point() else None, device=x.device)
        return build_trajectory(self.func, (x, v0), t, eps=self.eps, method=self.method, n_steps=self.n_steps)


class _FirstDamping(FloatArithmetic):
    """Arithmetic that records the first damping factor a scheme asks for."""

    def __init__(self):
        self.g = None

    def coefficient(self, g):
        if self.g is None:
            self.g = g
        return g


def _first_damping(integrator, h: float) -> float:
    ops, zero = _FirstDamping(), torch.zeros(())
    integrator.step(lambda t, x: x, zero, zero, Span(zero, zero + h, h), ops)
    return ops.g
