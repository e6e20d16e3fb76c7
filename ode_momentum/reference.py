"""Reference solutions of ``eps x'' + x' = F(t, x)`` from well-kept general-purpose solvers.

The momentum ODE is solved in first-order form, ``x' = v``, ``v' = (F(t, x) - v) / eps`` (``x' = F`` at
``eps = 0``), by torchdiffeq (``dopri5`` and friends, adaptive; ``rk4``, ``midpoint``, ``euler`` on a fixed
grid) or by scipy's ``solve_ivp`` (``lsoda``, ``radau``, ``dop853``; ``lsoda`` switches to a stiff method
when ``eps`` is small). These are the yardsticks of the convergence studies, not integrators of the
registry: they are not reversible and are not written in the primitive sub-flows.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ._checks import (
    check_choice,
    check_eps,
    check_finite,
    check_positive_int,
    check_real,
    check_same_shape,
    check_tensor,
    check_time_grid,
)

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TORCHDIFFEQ_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
TORCHDIFFEQ_FIXED = ("rk4", "midpoint", "euler")
SCIPY_METHODS = ("lsoda", "radau", "dop853")
METHODS = TORCHDIFFEQ_ADAPTIVE + TORCHDIFFEQ_FIXED + SCIPY_METHODS

# The reference tolerance: dopri5 at rtol 1e-10 in float64 is accurate to ~1e-11 on the pendulum
# problems of ode_momentum.analysis.problems (checked against DOP853 at 1e-13 in tests/test_convergence.py).
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-12
# Below eps = STIFF_EPS * horizon the damping time scale is short against the horizon and dopri5 slows down
# (forced pendulum, T = 2, rtol 1e-10: 0.4 s at eps = 0.5, 1.2 s at 0.05, 2.7 s at 0.025, ~20 s at 5e-4),
# while LSODA (stiff-capable) takes < 0.2 s at any eps.
STIFF_EPS = 0.05
# At equal tolerances LSODA is ~30x less accurate than dopri5 on the damped oscillator (4e-10 against 3e-11
# at rtol 1e-10, eps = 0.01); at 1/100 of them it is accurate to ~1e-11 and still takes well under a second.
LSODA_TIGHTER = 1e-2


class FirstOrderForm:
    """``(x, v) -> (v, (F(t, x) - v) / eps)``, the momentum ODE as a first-order system (torchdiffeq form).

    At ``eps = 0`` the state is ``x`` alone and the right-hand side is ``F(t, x)``.

    Parameters
    ----------
    func : callable ``(t, x) -> F``
        The force field; ``t`` a 0-dim tensor, ``x`` of shape ``(batch, *features)``.
    eps : float
        Inertia ``eps >= 0`` (units of time).
    """

    def __init__(self, func: Func, eps: float):
        self.func = func
        self.eps = eps

    def __call__(self, t, state):
        if self.eps == 0.0:
            return self.func(t, state)
        x, v = state
        return v, (self.func(t, x) - v) / self.eps


def solve_first_order_form(
    func: Func,
    y0: tuple[torch.Tensor, torch.Tensor | None],
    t: torch.Tensor,
    *,
    eps: float,
    method: str = "dopri5",
    rtol: float = REFERENCE_RTOL,
    atol: float = REFERENCE_ATOL,
    n_steps: int | None = None,
):
    """Solve ``eps x'' + x' = F(t, x)`` in first-order form with torchdiffeq or scipy.

    Parameters
    ----------
    func : callable ``(t, x) -> F``
        Force field; ``t`` is a 0-dim tensor (dtype of ``x0``), ``x`` has shape ``(batch, *features)``.
    y0 : tuple ``(x0, v0)``
        Initial position and velocity, floating tensors of one shape; ``v0 = None`` means rest. Ignored
        velocity at ``eps = 0`` (the state is ``x`` alone).
    t : Tensor, shape ``(T,)``
        Strictly increasing output times, ``t[0]`` the initial time.
    eps : float
        Inertia ``eps >= 0`` (units of time).
    method : str
        torchdiffeq ``"dopri5"`` (default), ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"`` (adaptive, use
        ``rtol``/``atol``); torchdiffeq ``"rk4"``, ``"midpoint"``, ``"euler"`` (fixed grid, need ``n_steps``);
        scipy ``"lsoda"``, ``"radau"``, ``"dop853"`` (adaptive; ``lsoda`` handles small ``eps``).
    rtol, atol : float
        Tolerances of the adaptive methods (default ``1e-10`` and ``1e-12``: the reference accuracy).
    n_steps : int, optional
        Equal steps per output interval for the fixed-grid methods.

    Returns
    -------
    xs, vs : Tensor, shape ``(T, *x0.shape)``
        Position and velocity at the output times, time first (dtype of ``x0``). At ``eps = 0``,
        ``vs[k] = F(t_k, xs[k])``, the velocity of the first-order ODE.

    Raises
    ------
    TypeError
        If ``func`` is not callable or ``y0``/``t`` are not tensors.
    ValueError
        For an unknown ``method``, ``eps < 0``, non-positive tolerances, ``n_steps`` missing for a fixed-grid
        method or given for an adaptive one.

    References
    ----------
    Chen et al., torchdiffeq (2018); Dormand & Prince 1980 (dopri5); Petzold 1983 (LSODA); Virtanen et al.,
    SciPy 1.0 (2020), ``scipy.integrate.solve_ivp``.
    """
    if not callable(func):
        raise TypeError(f"`func` must be callable as func(t, x); got {type(func).__name__}.")
    x0, v0 = _check_y0(y0)
    t = check_time_grid(t)
    eps = check_eps(eps)
    check_choice("method", method, METHODS)
    rtol, atol = check_real("rtol", rtol), check_real("atol", atol)
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"`rtol` and `atol` must be > 0; got rtol={rtol!r}, atol={atol!r}.")
    if method in TORCHDIFFEQ_FIXED:
        if n_steps is None:
            raise ValueError(f"method {method!r} runs on a fixed grid: give `n_steps` (steps per output interval).")
        check_positive_int("n_steps", n_steps)
    elif n_steps is not None:
        raise ValueError(f"method {method!r} is adaptive and takes no `n_steps`; got n_steps={n_steps!r}. "
                         "Set rtol/atol, or use method='rk4' for a fixed grid.")
    t = t.to(dtype=x0.dtype, device=x0.device)
    solve = _solve_scipy if method in SCIPY_METHODS else _solve_torchdiffeq
    with torch.no_grad():
        solution = solve(func, x0, v0, t, eps, method, rtol, atol, n_steps)
        if eps == 0.0:  # the state is x alone; its velocity is F
            return solution, torch.stack([func(tk, xk) for tk, xk in zip(t.unbind(), solution.unbind())])
    return solution


def reference_solution(
    func: Func,
    y0: tuple[torch.Tensor, torch.Tensor | None],
    t: torch.Tensor,
    *,
    eps: float,
    rtol: float = REFERENCE_RTOL,
    atol: float = REFERENCE_ATOL,
    method: str = "auto",
):
    """High-accuracy solution for error measurements: torchdiffeq ``dopri5`` (or scipy ``lsoda`` when stiff).

    ``method="auto"`` picks ``dopri5`` at ``rtol``/``atol`` unless ``0 < eps < STIFF_EPS * (t[-1] - t[0])``:
    there the damping time scale makes the explicit method slow, and ``lsoda`` (stiff-capable) runs at
    ``rtol * LSODA_TIGHTER``, ``atol * LSODA_TIGHTER`` to match dopri5's accuracy. Use float64 inputs for
    numerical truth. Parameters, returns and raises as :func:`solve_first_order_form` (plus ``"auto"``).
    """
    if method == "auto":
        horizon = float(t[-1] - t[0]) if isinstance(t, torch.Tensor) and t.numel() >= 2 else math.inf
        if isinstance(eps, (int, float)) and 0 < eps < STIFF_EPS * horizon:
            method, rtol, atol = "lsoda", rtol * LSODA_TIGHTER, atol * LSODA_TIGHTER
        else:
            method = "dopri5"
    return solve_first_order_form(func, y0, t, eps=eps, method=method, rtol=rtol, atol=atol)


def _check_y0(y0):
    if not isinstance(y0, (tuple, list)) or len(y0) != 2:
        raise TypeError(f"`y0` must be a pair (x0, v0) of tensors; got {type(y0).__name__}.")
    x0, v0 = y0
    check_finite("x0", check_tensor("x0", x0))
    if v0 is None:
        v0 = torch.zeros_like(x0)
    check_same_shape("v0", v0, "x0", x0)
    check_finite("v0", v0)
    return x0, v0


def _solve_torchdiffeq(func, x0, v0, t, eps, method, rtol, atol, n_steps):
    """torchdiffeq on the first-order form: ``xs`` at ``eps = 0``, else ``(xs, vs)``."""
    import torchdiffeq

    options = None
    if n_steps is not None:
        times = t.tolist()
        points = [times[0]]
        for a, b in zip(times[:-1], times[1:]):  # n_steps equal steps per interval, output times exact
            points.extend(a + j * (b - a) / n_steps for j in range(1, n_steps))
            points.append(b)
        grid = torch.tensor(points, dtype=torch.float64).to(dtype=t.dtype, device=t.device)
        options = {"grid_constructor": lambda f, y, tt: grid}
    state = x0 if eps == 0.0 else (x0, v0)
    return torchdiffeq.odeint(FirstOrderForm(func, eps), state, t, method=method, rtol=rtol, atol=atol,
                              options=options)


_SCIPY_NAMES = {"lsoda": "LSODA", "radau": "Radau", "dop853": "DOP853"}


def _solve_scipy(func, x0, v0, t, eps, method, rtol, atol, n_steps):
    """scipy's solve_ivp on the flattened first-order form (float64): ``xs`` at ``eps = 0``, else ``(xs, vs)``."""
    from scipy.integrate import solve_ivp

    shape, size = x0.shape, x0.numel()
    like = {"dtype": x0.dtype, "device": x0.device}
    field = FirstOrderForm(func, eps)

    def tensor(y):
        return torch.from_numpy(np.ascontiguousarray(y)).to(**like).reshape(shape)

    def rhs(s, y):
        ts = torch.tensor(s, **like)
        if eps == 0.0:
            return field(ts, tensor(y)).double().cpu().numpy().ravel()
        dx, dv = field(ts, (tensor(y[:size]), tensor(y[size:])))
        return np.concatenate([dx.double().cpu().numpy().ravel(), dv.double().cpu().numpy().ravel()])

    y0 = x0.double().cpu().numpy().ravel()
    if eps != 0.0:
        y0 = np.concatenate([y0, v0.double().cpu().numpy().ravel()])
    times = t.double().cpu().numpy()
    sol = solve_ivp(rhs, (times[0], times[-1]), y0, method=_SCIPY_NAMES[method], t_eval=times, rtol=rtol,
                    atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp({method!r}) failed: {sol.message}")
    ys = torch.from_numpy(sol.y.T.copy()).to(dtype=x0.dtype, device=x0.device)  # (T, size or 2 size)
    xs = ys[:, :size].reshape(len(times), *shape)
    if eps == 0.0:
        return xs
    return xs, ys[:, size:].reshape(len(times), *shape)
