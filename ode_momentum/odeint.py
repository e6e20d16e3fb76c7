"""Functional entry point: solve ``eps x'' + x' = F(t, x)`` on a fixed grid (torchdiffeq conventions)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ._checks import (
    check_choice,
    check_eps,
    check_finite,
    check_same_shape,
    check_tensor,
    check_time_grid,
)
from .gradients import Trajectory, make_grid, resolve_gradient
from .integrators import INTEGRATORS


def odeint(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: tuple[torch.Tensor, torch.Tensor | None],
    t: torch.Tensor,
    *,
    eps: float,
    method: str = "leapfrog",
    step_size: float | None = None,
    n_steps: int | None = None,
    gradient: str = "backprop",
    params: Sequence[torch.Tensor] = (),
    gradient_options: dict | None = None,
):
    """Solve the momentum ODE ``eps x'' + x' = F(t, x)``, ``x(t0) = x0``, ``x'(t0) = v0``, with fixed steps.

    In first-order form ``x' = v``, ``eps v' = F(t, x) - v``; ``eps = 0`` is the first-order ODE ``x' = F``
    (use ``method="euler"``; ``leapfrog`` and ``momentum_exp`` also reduce to Euler there).

    Parameters
    ----------
    func : callable ``(t, x) -> F``
        The force field. ``t`` is a 0-dim tensor (dtype and device of ``x0``), ``x`` a tensor of shape
        ``(batch, *features)``; ``F`` must have the shape of ``x``. An ``nn.Module`` has its parameters
        differentiated in every gradient mode.
    y0 : tuple ``(x0, v0)``
        Initial position and velocity (units of x per unit time), floating tensors of one shape, dtype and
        device. ``v0 = None`` means rest (zeros) for ``eps > 0`` and the consistent velocity ``F(t0, x0)``
        of ``x' = F`` for ``eps = 0``.
    t : Tensor, shape ``(T,)``
        Strictly increasing output times, ``T >= 2``; ``t[0]`` is the initial time.
    eps : float
        Inertia, ``eps >= 0`` (units of time).
    method : str
        A key of ``ode_momentum.INTEGRATORS``: ``"leapfrog"`` (order 2), ``"momentum_exp"``, ``"momentum"``
        (order 1; needs ``h <= eps``), ``"euler"`` (``eps = 0`` only).
    step_size, n_steps : float or int
        Exactly one: the step length (each interval ``[t_k, t_{k+1}]`` is cut into the fewest equal steps no
        longer than it), or the number of equal steps per interval. There is no default grid.
    gradient : str
        ``"backprop"`` (autograd, memory O(steps)) or ``"reversible"`` (float reversal, memory O(1);
        reversible methods and ``eps > 0`` only).
    params : sequence of Tensor
        Tensors that a plain-function ``func`` reads and that need gradients in a memory-free mode (an
        ``nn.Module``'s own parameters are found automatically). A memory-free mode raises if ``func`` reads
        any other tensor that requires grad, rather than drop its gradient.
    gradient_options : dict, optional
        Options of the gradient mode, e.g. ``{"drift_tol": 1e-6, "on_drift": "raise"}`` for ``"reversible"``.

    Returns
    -------
    xs, vs : Tensor, shape ``(T, *x0.shape)``
        Position and velocity at the output times, time first.

    Raises
    ------
    TypeError
        If ``func`` is not callable, ``y0`` not a pair of tensors, ``t`` not a tensor, or a dtype is wrong.
    ValueError
        For ``eps < 0``; non-finite or mismatched ``x0`` / ``v0``; ``t`` not 1-D or not increasing; both or
        neither of ``step_size`` / ``n_steps``; an unknown ``method`` or ``gradient``; ``h > eps`` with
        ``"momentum"``; a memory-free mode with a non-reversible method or zero damping.

    References
    ----------
    Sander et al., ICML 2021, section 3 (the momentum ODE); torchdiffeq's ``odeint`` (calling conventions).
    """
    solve, options = resolve_gradient(gradient, gradient_options)
    traj, x0, v0 = build_trajectory(
        func, y0, t, eps=eps, method=method, step_size=step_size, n_steps=n_steps, params=params
    )
    return solve(traj, x0, v0, options)


def build_trajectory(func, y0, t, *, eps, method="leapfrog", step_size=None, n_steps=None, params=()):
    """Validate :func:`odeint`'s arguments and return ``(trajectory, x0, v0)``, the solve it would run.

    Raises the errors documented in :func:`odeint`; used by ``odeint``, ``MomentumODE`` and the analysis
    helpers.
    """
    if not callable(func):
        raise TypeError(f"`func` must be callable as func(t, x); got {type(func).__name__}.")
    x0, v0 = _check_y0(y0)
    t = check_time_grid(t)
    eps = check_eps(eps)
    check_choice("method", method, INTEGRATORS)
    integrator = INTEGRATORS[method](eps)
    if v0 is None:
        # At rest for eps > 0; for x' = F the velocity is F itself (`euler` ignores it, `alf` needs it).
        v0 = torch.zeros_like(x0) if eps > 0 or method == "euler" else func(t[0].to(x0), x0)
    spans, save_at = make_grid(t.tolist(), step_size, n_steps, x0)
    for h in {span.h for span in spans}:
        integrator.damping(h)  # raises for h > eps with method "momentum"
    extras = tuple(check_tensor("params", p) for p in params)
    root = func if isinstance(func, nn.Module) else None
    traj = Trajectory(integrator, [func] * len(spans), spans, save_at, root=root, extras=extras)
    return traj, x0, v0


def _check_y0(y0):
    if not isinstance(y0, (tuple, list)) or len(y0) != 2:
        raise TypeError(
            f"`y0` must be a pair (x0, v0) of tensors; got {type(y0).__name__}. For a state at rest pass "
            "(x0, None)."
        )
    x0, v0 = y0
    check_finite("x0", check_tensor("x0", x0))
    if v0 is not None:
        check_same_shape("v0", v0, "x0", x0)
        check_finite("v0", v0)
    return x0, v0
