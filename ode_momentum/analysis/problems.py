"""Test problems of the convergence studies: a damped linear oscillator and a forced damped pendulum.

Each :class:`Problem` bundles a force field ``F(t, x)``, an initial state, a horizon and an inertia ``eps``,
and gives its solution: in closed form for the linear oscillator, from a reference solver
(:func:`ode_momentum.reference.reference_solution`, dopri5 at rtol 1e-10 in float64) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .._checks import check_eps, check_positive_int, check_real
from ..reference import REFERENCE_RTOL, reference_solution

DTYPE = torch.float64  # the studies measure errors down to ~1e-12: float64 throughout


class LinearForce:
    """``F(t, x) = -k x + a cos(w t)``: a spring (stiffness ``k`` per feature) with a periodic force.

    Parameters
    ----------
    k : sequence of float, length ``d``
        Stiffness per feature (units 1/time).
    a, w : float
        Amplitude (units of x per time) and angular frequency (1/time) of the forcing.
    """

    def __init__(self, k, a: float = 0.0, w: float = 0.0):
        self.k = tuple(float(kk) for kk in np.atleast_1d(k))
        self.a, self.w = float(a), float(w)
        self._k = torch.tensor(self.k, dtype=DTYPE)

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        k = self._k.to(dtype=x.dtype, device=x.device)
        force = -k * x
        return force + self.a * torch.cos(self.w * t) if self.a else force

    def __repr__(self) -> str:
        return f"LinearForce(k={self.k}, a={self.a}, w={self.w})"


class PendulumForce:
    """``F(t, x) = -k sin(x) + a cos(w t)``: a pendulum's restoring force with a periodic drive.

    Parameters
    ----------
    k : float
        Strength of the restoring force (1/time).
    a, w : float
        Amplitude and angular frequency of the drive.
    """

    def __init__(self, k: float = 2.0, a: float = 1.0, w: float = 3.0):
        self.k, self.a, self.w = float(k), float(a), float(w)

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.k * torch.sin(x) + self.a * torch.cos(self.w * t)

    def __repr__(self) -> str:
        return f"PendulumForce(k={self.k}, a={self.a}, w={self.w})"


@dataclass(frozen=True)
class Problem:
    """``eps x'' + x' = field(t, x)`` on ``[t0, t1]`` from ``(x0, v0)``, with its solution.

    Attributes
    ----------
    name : str
        Short label for tables and legends.
    field : callable ``(t, x) -> F``
        The force field (float64 tensors; ``t`` 0-dim).
    x0, v0 : Tensor, shape ``(batch, d)``, float64
        Initial position and velocity (physical units, ``v0 = x'(t0)``).
    t0, t1 : float
        The horizon (units of time), ``t1 > t0``.
    eps : float
        The problem's inertia (units of time); the studies also solve it at other ``eps``.
    closed_form : callable ``(t, eps) -> (x, v)`` or None
        Exact solution at the times ``t`` (numpy array, any shape ``S``), as numpy arrays of shape
        ``S + x0.shape``; ``None`` when only a reference solver can give it.

    Notes
    -----
    :meth:`final` memoises its results per ``(eps, rtol)`` (reference solves take up to a second), so the
    tensors ``x0``, ``v0`` and the field must not be changed after construction.
    """

    name: str
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    x0: torch.Tensor
    v0: torch.Tensor
    t0: float
    t1: float
    eps: float
    closed_form: Callable | None = None
    _finals: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def horizon(self) -> float:
        return self.t1 - self.t0

    def times(self, n: int = 2) -> torch.Tensor:
        """``n`` equally spaced times from ``t0`` to ``t1`` (float64, shape ``(n,)``)."""
        return torch.linspace(self.t0, self.t1, check_positive_int("n", n), dtype=DTYPE)

    def solution(self, eps: float | None = None, t: torch.Tensor | None = None, *, rtol: float = REFERENCE_RTOL):
        """The exact (closed form) or reference solution ``(x, v)`` at the times ``t``.

        Parameters
        ----------
        eps : float, optional
            Inertia (default: the problem's). ``eps = 0`` is the first-order ODE ``x' = F`` (then
            ``v = F(t, x)``).
        t : Tensor, shape ``(T,)``, optional
            Increasing output times from ``t0`` (default ``[t0, t1]``).
        rtol : float
            Relative tolerance of the reference solver (absolute: ``rtol / 100``); unused with a closed form.

        Returns
        -------
        xs, vs : Tensor, shape ``(T, batch, d)``, float64
        """
        eps = self.eps if eps is None else check_eps(eps)
        t = self.times() if t is None else t
        if self.closed_form is not None:
            xs, vs = self.closed_form(t.numpy(), eps)
            return torch.from_numpy(np.asarray(xs)), torch.from_numpy(np.asarray(vs))
        return reference_solution(self.field, (self.x0, self.v0), t, eps=eps, rtol=rtol, atol=rtol * 1e-2)

    def final(self, eps: float | None = None, *, rtol: float = REFERENCE_RTOL):
        """``(x(t1), v(t1))``, each of shape ``(batch, d)`` (see :meth:`solution`); memoised."""
        key = (self.eps if eps is None else check_eps(eps), float(rtol))
        if key not in self._finals:
            xs, vs = self.solution(key[0], rtol=rtol)
            self._finals[key] = (xs[-1], vs[-1])
        return self._finals[key]


def damped_oscillator_solution(t, x0, v0, *, eps: float, k, a: float = 0.0, w: float = 0.0, t0: float = 0.0):
    """Closed-form ``x(t), v(t)`` of ``eps x'' + x' = -k x + a cos(w t)``, ``x(t0) = x0``, ``x'(t0) = v0``.

    Formula: particular solution ``Re(A e^{i w t})``, ``A = a / (k - eps w^2 + i w)``; free part
    ``c1 e^{r1 s} + c2 e^{r2 s}``, ``s = t - t0``, roots ``r = (-1 +- sqrt(1 - 4 eps k)) / (2 eps)`` of
    ``eps r^2 + r + k = 0`` (complex when under-damped), ``c1 + c2 = x_h(t0)``, ``r1 c1 + r2 c2 = v_h(t0)``. At
    ``eps = 0``: ``x' = -k x + a cos(w t)``, ``x_h = x_h(t0) e^{-k s}``, ``v = -k x + a cos(w t)``.

    Parameters
    ----------
    t : numpy array, shape ``S``
        Times (units of time); broadcast against the trailing state shape as ``t[..., None, None]``.
    x0, v0 : array, shape ``(batch, d)``
        Initial state.
    eps : float
        Inertia ``>= 0``.
    k : array, shape ``(d,)`` or scalar
        Stiffness per feature; ``4 eps k = 1`` (critical damping, a double root) is excluded.
    a, w, t0 : float
        Forcing amplitude and frequency, initial time.

    Returns
    -------
    x, v : numpy arrays, shape ``S + (batch, d)``, float64

    Raises
    ------
    ValueError
        At critical damping ``4 eps k = 1``.
    """
    x0, v0, k = (np.asarray(z, dtype=np.float64) for z in (x0, v0, k))
    t = np.asarray(t, dtype=np.float64)[(...,) + (None,) * x0.ndim]
    amp = a / (k - eps * w**2 + 1j * w)
    xp0 = (amp * np.exp(1j * w * t0)).real
    vp0 = (1j * w * amp * np.exp(1j * w * t0)).real
    s = t - t0
    if eps == 0.0:
        x = (x0 - xp0) * np.exp(-k * s) + (amp * np.exp(1j * w * t)).real
        return x, -k * x + a * np.cos(w * t)
    disc = np.sqrt((1.0 - 4.0 * eps * k).astype(complex))
    if np.any(disc == 0):
        raise ValueError(f"critical damping 4 eps k = 1 (eps = {eps!r}, k = {k.tolist()}) has a double root; "
                         "pick another k or eps.")
    r1, r2 = (-1.0 + disc) / (2.0 * eps), (-1.0 - disc) / (2.0 * eps)
    xh0, vh0 = x0 - xp0, v0 - vp0
    c1, c2 = (vh0 - r2 * xh0) / (r1 - r2), (r1 * xh0 - vh0) / (r1 - r2)
    with np.errstate(under="ignore"):  # e^{r2 s} underflows to 0 for tiny eps: the exact limit
        e1, e2 = np.exp(r1 * s), np.exp(r2 * s)
    ep = amp * np.exp(1j * w * t)
    return (c1 * e1 + c2 * e2 + ep).real, (r1 * c1 * e1 + r2 * c2 * e2 + 1j * w * ep).real


def _initial_state(batch: int, d: int, seed: int, scale_v: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, d, generator=gen, dtype=DTYPE)
    v0 = scale_v * torch.randn(batch, d, generator=gen, dtype=DTYPE)
    return x0, v0


def damped_oscillator(
    eps: float = 0.5, *, k=(2.0, 0.3), a: float = 0.0, w: float = 3.0, t1: float = 2.0, batch: int = 3,
    seed: int = 0,
) -> Problem:
    """The damped linear oscillator ``eps x'' + x' = -k x + a cos(w t)`` on ``[0, t1]``, with its closed form.

    The defaults mix an under-damped feature (``k = 2``: ``4 eps k = 4 > 1``) and an over-damped one
    (``k = 0.3``); ``a = 0`` leaves it unforced. ``x0``, ``v0`` are standard normal, shape ``(batch, len(k))``,
    from a generator seeded with ``seed``.

    Raises
    ------
    ValueError
        For ``eps < 0``, ``t1 <= 0``, non-positive ``batch``.
    """
    eps = check_eps(eps)
    t1 = _check_horizon(t1)
    field = LinearForce(k, a, w)
    x0, v0 = _initial_state(check_positive_int("batch", batch), len(field.k), seed)

    def closed_form(t, eps_):
        return damped_oscillator_solution(t, x0.numpy(), v0.numpy(), eps=eps_, k=field.k, a=field.a, w=field.w)

    name = "damped oscillator" if a == 0 else "forced oscillator"
    return Problem(name, field, x0, v0, 0.0, t1, eps, closed_form)


def forced_pendulum(
    eps: float = 0.5, *, k: float = 2.0, a: float = 1.0, w: float = 3.0, t1: float = 2.0, batch: int = 4,
    d: int = 2, seed: int = 0,
) -> Problem:
    """The forced damped pendulum ``eps x'' + x' = -k sin(x) + a cos(w t)`` on ``[0, t1]`` (non-linear).

    No closed form: :meth:`Problem.solution` calls the reference solver. ``x0``, ``v0`` are standard
    normal, shape ``(batch, d)``, from a generator seeded with ``seed``.

    Raises
    ------
    ValueError
        For ``eps < 0``, ``t1 <= 0``, non-positive ``batch`` or ``d``.
    """
    eps = check_eps(eps)
    t1 = _check_horizon(t1)
    x0, v0 = _initial_state(check_positive_int("batch", batch), check_positive_int("d", d), seed)
    return Problem("forced pendulum", PendulumForce(k, a, w), x0, v0, 0.0, t1, eps)


def _check_horizon(t1) -> float:
    t1 = check_real("t1", t1)
    if t1 <= 0:
        raise ValueError(f"`t1` must be > 0 (the horizon starts at 0); got {t1!r}.")
    return t1


PROBLEMS = {"oscillator": damped_oscillator, "pendulum": forced_pendulum}
