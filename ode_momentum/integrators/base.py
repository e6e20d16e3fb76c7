"""The integrator contract, and the float arithmetic the schemes are written in.

A fixed-step integrator for the momentum ODE ``eps x'' + x' = F(t, x)`` in first-order form
``x' = v``, ``eps v' = F(t, x) - v`` advances the state ``(x, v)`` (physical velocity ``v = x'``) over one
step ``[t0, t1]`` of length ``h``.

Contract for implementers (numbered, as in scipy's ``OdeSolver``):

1. Set the class attributes ``name`` (registry key), ``order`` (global order of accuracy), ``n_evals``
   (evaluations of ``F`` per step once first-same-as-last reuse is counted) and ``reversible``.
2. Write ``step`` using only the primitive sub-flows of an arithmetic object ``ops``:
   ``ops.damp(v, g)`` (``v <- g v``), ``ops.kick(v, c, f)`` (``v <- v + c f``) and ``ops.drift(x, h, v)``
   (``x <- x + h v``), or the damped kick ``ops.damp_kick(v, g, c, f)`` (``v <- g v + c f``, the two in one,
   which an arithmetic may run as one kernel), or ``ops.damp_kick_drift(x, v, g, c, f, h)`` (a damped kick
   then a drift by the new velocity, likewise). Nothing else may touch the state. Pass every damping factor
   through ``g = ops.coefficient(g)`` first and derive the kick from the result (``c = 1 - g``), so that an arithmetic
   that can only multiply by certain numbers (the exact mode's dyadic rationals) keeps the scheme consistent.
   The float arithmetic below is the default; the exact (fixed-point) gradient mode swaps in its own, so a
   scheme written this way is bit-exactly reversible for free.
3. A reversible scheme writes ``inverse_step`` with the inverse primitives (``undamp``, ``unkick``,
   ``undrift``, and ``unkick_undamp(v, c, f, g)`` for ``damp_kick``) applied in the reverse order, evaluating ``F`` at the same ``(t, x)`` as the forward did.
4. Evaluate ``F`` only through ``func(t, x)``, with ``t`` one of ``span.t0`` / ``span.t1`` or an intermediate
   time from :class:`~ode_momentum.integrators.SubTimes`, which hands ``step`` and ``inverse_step`` the same
   tensor objects. The driver passes a memoising ``func`` keyed on object identity, so an evaluation at the
   end of one step is reused at the start of the next (first same as last), forwards and backwards.
5. Know nothing of autograd: gradient modes only call ``step`` / ``inverse_step``.

``damping(s)`` is the factor by which a sub-step of length ``s`` contracts the velocity (``|g|``; 1 for a
scheme that does not damp); memory-free gradient modes refuse a step whose factor is 0. Schemes built with :meth:`AbstractIntegrator.from_gamma`
return the given ``gamma`` exactly for the unit step, so a discrete net's coefficient is not perturbed by a
round trip through ``eps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from .._checks import check_eps, check_gamma

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Span:
    """One step ``[t0, t1]``: times as 0-dim tensors (dtype and device of the state), ``h = t1 - t0`` as a float."""

    t0: torch.Tensor
    t1: torch.Tensor
    h: float


class FloatArithmetic:
    """The primitive sub-flows in floating point (the state's dtype). Inverses are exact up to rounding."""

    @staticmethod
    def coefficient(g: float) -> float:
        """The damping factor this arithmetic applies for a requested ``g`` (float: ``g`` itself)."""
        return g

    @staticmethod
    def damp(v: torch.Tensor, g: float) -> torch.Tensor:
        return v * g

    @staticmethod
    def undamp(v: torch.Tensor, g: float) -> torch.Tensor:
        return v / g

    @staticmethod
    def kick(v: torch.Tensor, c: float, f: torch.Tensor) -> torch.Tensor:
        return v + c * f

    @staticmethod
    def unkick(v: torch.Tensor, c: float, f: torch.Tensor) -> torch.Tensor:
        return v - c * f

    def damp_kick(self, v: torch.Tensor, g: float, c: float, f: torch.Tensor) -> torch.Tensor:
        """``v <- g v + c f``: :meth:`damp` then :meth:`kick` (an arithmetic may fuse them)."""
        return self.kick(self.damp(v, g), c, f)

    def damp_kick_drift(self, x: torch.Tensor, v: torch.Tensor, g: float, c: float, f: torch.Tensor, h: float):
        """``v <- g v + c f``, then ``x <- x + h v``: :meth:`damp_kick` then :meth:`drift`; returns ``(x, v)``.
        Undone by :meth:`undrift` then :meth:`unkick_undamp`."""
        v = self.damp_kick(v, g, c, f)
        return self.drift(x, h, v), v

    def unkick_undamp(self, v: torch.Tensor, c: float, f: torch.Tensor, g: float) -> torch.Tensor:
        """The inverse of :meth:`damp_kick`: :meth:`unkick` then :meth:`undamp`."""
        return self.undamp(self.unkick(v, c, f), g)

    @staticmethod
    def drift(x: torch.Tensor, h: float, v: torch.Tensor) -> torch.Tensor:
        return x + v if h == 1.0 else x + h * v

    @staticmethod
    def undrift(x: torch.Tensor, h: float, v: torch.Tensor) -> torch.Tensor:
        return x - v if h == 1.0 else x - h * v


FLOAT = FloatArithmetic()


class AbstractIntegrator:
    """Base of every fixed-step integrator of ``eps x'' + x' = F(t, x)``; never instantiated itself.

    Parameters
    ----------
    eps : float
        Inertia ``eps >= 0`` (units of time). ``eps = 0`` is the first-order ODE ``x' = F``.

    Raises
    ------
    ValueError
        If ``eps`` is negative or not finite (``math.inf``, no damping, is allowed).
    """

    name: ClassVar[str]
    order: ClassVar[int]
    n_evals: ClassVar[int]
    reversible: ClassVar[bool] = False

    def __init__(self, eps: float):
        if eps == math.inf:
            self.eps = math.inf
        else:
            self.eps = check_eps(eps)
        self._unit_gamma: float | None = None

    @classmethod
    def from_gamma(cls, gamma: float) -> "AbstractIntegrator":
        """The scheme whose unit step (``h = 1``) damps the velocity by exactly ``gamma``.

        This is how a discrete Momentum ResNet (step 1, ``f_n = F``) is run: ``eps`` is derived from
        ``gamma`` by the scheme's own damping law (:meth:`eps_for_gamma`).
        """
        gamma = check_gamma(gamma)
        integrator = cls(cls.eps_for_gamma(gamma))
        integrator._unit_gamma = gamma
        return integrator

    @staticmethod
    def eps_for_gamma(gamma: float) -> float:
        """The ``eps`` at which a unit step damps by ``gamma`` (overridden by each damping law)."""
        raise NotImplementedError

    def damping(self, s: float) -> float:
        """Velocity factor ``g`` of a damping sub-step of length ``s`` (``v <- g v + (1 - g) F``)."""
        if self._unit_gamma is not None and s == 1.0:
            return self._unit_gamma
        return self._damping(s)

    def _damping(self, s: float) -> float:
        raise NotImplementedError

    def gamma(self, h: float) -> float:
        """Net velocity damping of one whole step of length ``h`` (for drift prediction and reports)."""
        return self.damping(h)

    def step(self, func: Func, x: torch.Tensor, v: torch.Tensor, span: Span, ops=FLOAT):
        """Advance ``(x, v)`` from ``span.t0`` to ``span.t1``; returns the new ``(x, v)``."""
        raise NotImplementedError

    def inverse_step(self, func: Func, x: torch.Tensor, v: torch.Tensor, span: Span, ops=FLOAT):
        """Undo :meth:`step`: from the state at ``span.t1`` return the state at ``span.t0``."""
        raise NotImplementedError(f"integrator {self.name!r} is not reversible")

    def __repr__(self) -> str:
        if self._unit_gamma is not None:
            return f"{type(self).__name__}(gamma={self._unit_gamma})"
        return f"{type(self).__name__}(eps={self.eps})"


class AbstractReversibleIntegrator(AbstractIntegrator):
    """Base of the schemes with an algebraic inverse (``inverse_step``); never instantiated itself."""

    reversible: ClassVar[bool] = True


class LastCall:
    """Memoise ``func(t, x)`` on the identity of its last arguments (first-same-as-last reuse).

    Tensors in this library are never modified in place, so the same objects mean the same values.
    """

    def __init__(self, func: Func):
        self.func = func
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None
        self.n_calls = 0

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._key is not None and self._key[0] is t and self._key[1] is x:
            return self._value
        value = self.func(t, x)
        self.n_calls += 1
        self._key, self._value = (t, x), value
        return value
