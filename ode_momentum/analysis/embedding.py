"""First-order flows embed in momentum flows: ``x' = f(t, x)`` solves a momentum ODE with a corrected force.

If ``x' = f(t, x)`` then ``x'' = d/dt f(t, x(t)) = f_t + J_f f``, so ``x`` also solves::

    eps x'' + x' = f + eps (f_t + J_f f),      x(0) = x0,   x'(0) = f(0, x0)

and, by uniqueness, the momentum ODE with that force and initial velocity reproduces the first-order flow
exactly, for every ``eps``. The correction is a Jacobian-vector product, computed with ``torch.func.jvp``
(forward mode, one extra evaluation of ``f``, no Jacobian is formed).

Reference: Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 4
(Proposition: momentum ODEs contain first-order ODEs; hence the learned initial velocity ``v0 = f(x0)``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_eps, check_finite, check_positive_int, check_real, check_tensor
from ..integrators import INTEGRATORS
from ..odeint import odeint

__all__ = ["EmbeddedForce", "EmbeddingResult", "first_order_embedding"]


@functools.cache
def _load_forward_ad() -> None:
    """Run one trivial ``torch.func.jvp`` so that torch loads its forward-mode decompositions now.

    On first use, torch 2.13 scripts those decompositions with ``torch.jit.script``, which emits its own
    ``DeprecationWarning``: torch's internals, not ours to fix, and an error under ``-W error``. It is
    silenced here, once, by message.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        torch.func.jvp(torch.sin, (torch.zeros(1),), (torch.ones(1),))


class EmbeddedForce(nn.Module):
    """The force ``F(t, x) = f(t, x) + eps (df/dt + J_x f(t, x) f(t, x))`` of the embedding.

    Parameters
    ----------
    f : callable ``(t, x) -> tensor of x's shape``
        The first-order field (``t`` a 0-dim tensor, ``x`` of shape ``(batch, *features)``); an
        ``nn.Module`` becomes a submodule, so its parameters are found by the solvers.
    eps : float
        Inertia ``eps >= 0`` of the momentum ODE.

    Raises
    ------
    TypeError
        If ``f`` is not callable.
    ValueError
        If ``eps < 0``.

    References
    ----------
    Sander et al., ICML 2021, section 4.
    """

    def __init__(self, f: Callable, eps: float):
        super().__init__()
        if not callable(f):
            raise TypeError(f"`f` must be callable as f(t, x); got {type(f).__name__}.")
        self.f = f
        self.eps = check_eps(eps)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _load_forward_ad()
        fx = self.f(t, x)
        # d/ds f(t + s, x + s f) at s = 0, i.e. f_t + J_x f f, by forward-mode AD
        _, df = torch.func.jvp(self.f, (t, x), (torch.ones_like(t), fx))
        return fx + self.eps * df


@dataclass(frozen=True)
class EmbeddingResult:
    """Agreement of the embedded momentum ODE with the first-order flow, per step count.

    Attributes
    ----------
    eps : float
    method : str
        Integrator of the momentum ODE.
    n_steps : ndarray of int, shape ``(k,)``
    h : ndarray, shape ``(k,)``
        Step lengths ``t1 / n_steps`` (time units).
    error : ndarray, shape ``(k,)``
        ``max |x(t1) - x_ref(t1)| / max |x_ref(t1)|`` of the momentum solve against the first-order reference.
    velocity_error : ndarray, shape ``(k,)``
        ``max |v(t1) - f(t1, x_ref(t1))| / max |f(t1, x_ref(t1))|``: the velocity stays on ``f``.
    fitted_order : float
        Least-squares slope of ``log error`` against ``log h`` (the integrator's order once the error is
        above the reference's tolerance).
    uncorrected_error : float
        The same error, at the finest step, for the naive momentum ODE with force ``f`` and ``v0 = 0``: of
        order ``eps``, not of order ``h``.
    """

    eps: float
    method: str
    n_steps: np.ndarray
    h: np.ndarray
    error: np.ndarray
    velocity_error: np.ndarray
    fitted_order: float
    uncorrected_error: float


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


@torch.no_grad()
def first_order_embedding(
    f: Callable,
    x0: torch.Tensor,
    *,
    eps: float,
    t1: float = 1.0,
    n_steps: Sequence[int] = (16, 32, 64, 128, 256),
    method: str = "leapfrog",
    rtol: float = 1e-12,
) -> EmbeddingResult:
    """Solve the embedded momentum ODE and compare it with the first-order flow ``x' = f(t, x)``.

    The momentum ODE ``eps x'' + x' = f + eps (f_t + J_f f)``, ``x(0) = x0``, ``x'(0) = f(0, x0)`` is solved by
    :func:`~ode_momentum.odeint` with ``method`` at each step count; the reference is torchdiffeq's adaptive
    ``dopri5`` on ``x' = f`` at ``rtol = atol = rtol``. Work in float64: the errors go down to about
    ``rtol``.

    Parameters
    ----------
    f : callable ``(t, x) -> tensor of x's shape``
        The first-order field, differentiable (``torch.func.jvp`` is applied to it).
    x0 : Tensor, shape ``(batch, *features)``, floating (float64 recommended)
    eps : float
        Inertia ``> 0`` of the momentum ODE (time units).
    t1 : float
        Horizon ``> 0``.
    n_steps : sequence of int
        Step counts, each ``>= 1``; at least two for the order fit.
    method : str
        A reversible integrator of ``ode_momentum.INTEGRATORS`` (default ``"leapfrog"``, order 2).
    rtol : float
        Tolerance of the reference solve, ``> 0``.

    Returns
    -------
    EmbeddingResult

    Raises
    ------
    TypeError
        If ``f`` is not callable or ``x0`` not a floating tensor.
    ValueError
        For ``eps <= 0``, ``t1 <= 0``, fewer than two step counts, a non-positive count or ``rtol``, or an
        unknown method.

    References
    ----------
    Sander et al., ICML 2021, section 4; Dormand & Prince 1980 (the reference solver).
    """
    import torchdiffeq

    if not callable(f):
        raise TypeError(f"`f` must be callable as f(t, x); got {type(f).__name__}.")
    x0 = check_finite("x0", check_tensor("x0", x0))
    eps = check_eps(eps)
    if eps == 0:
        raise ValueError("`eps` must be > 0: with eps = 0 the momentum ODE already is x' = f. Try eps=0.5.")
    t1 = check_real("t1", t1)
    if t1 <= 0:
        raise ValueError(f"`t1` must be > 0; got {t1!r}.")
    n_steps = [check_positive_int("n_steps", n) for n in n_steps]
    if len(n_steps) < 2:
        raise ValueError(f"`n_steps` needs at least two step counts for an order fit; got {n_steps!r}.")
    check_choice("method", method, INTEGRATORS)
    rtol = check_real("rtol", rtol)
    if rtol <= 0:
        raise ValueError(f"`rtol` must be > 0; got {rtol!r}.")

    t = torch.tensor([0.0, t1], dtype=x0.dtype, device=x0.device)
    x_ref = torchdiffeq.odeint(f, x0, t, method="dopri5", rtol=rtol, atol=rtol)[-1]
    f_ref = f(t[-1], x_ref)
    v0 = f(t[0], x0)
    force = EmbeddedForce(f, eps)
    errors, v_errors = [], []
    for n in n_steps:
        xs, vs = odeint(force, (x0, v0), t, eps=eps, method=method, n_steps=n)
        errors.append(_rel(xs[-1], x_ref))
        v_errors.append(_rel(vs[-1], f_ref))
    xs, _ = odeint(f, (x0, None), t, eps=eps, method=method, n_steps=max(n_steps))
    uncorrected = _rel(xs[-1], x_ref)

    h = t1 / np.asarray(n_steps, dtype=np.float64)
    error = np.asarray(errors)
    order = float(np.polyfit(np.log(h), np.log(error), 1)[0])
    return EmbeddingResult(eps, method, np.asarray(n_steps), h, error, np.asarray(v_errors), order, uncorrected)
