"""What a gradient mode integrates: a fixed grid of steps, one residual function per step.

A :class:`Trajectory` is the canonical form every front end (``odeint``, ``MomentumResNet``,
``MomentumODE``) reduces its input to, once, at the boundary. Gradient modes only see this form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .._checks import check_positive_int, check_real, internal_assert
from ..integrators import FLOAT, AbstractIntegrator, LastCall, Span
from ..integrators.base import Func


@dataclass
class Trajectory:
    """A fixed-step solve of ``eps x'' + x' = F(t, x)`` (or a discrete momentum stack).

    Attributes
    ----------
    integrator : AbstractIntegrator
        The scheme, with its ``eps`` (or unit-step ``gamma``).
    funcs : sequence of callables, length ``N``
        ``funcs[n](t, x) -> F`` used by step ``n`` (the same object for a tied / time-conditioned field).
    spans : sequence of Span, length ``N``
        Step ``n`` runs from ``spans[n].t0`` to ``spans[n].t1``; consecutive spans share time tensors.
    save_at : sequence of int
        Increasing step counts after which the state is returned (``0`` is the initial state); the last is
        ``N``.
    root : nn.Module or None
        Owner of every parameter the ``funcs`` read; memory-free modes rebind its trainable parameters to
        detached aliases while recomputing, so user hooks fire once per backward.
    extras : tuple of Tensor
        Other tensors the ``funcs`` read that need gradients (closure tensors, extra arguments).
    """

    integrator: AbstractIntegrator
    funcs: Sequence[Func]
    spans: Sequence[Span]
    save_at: Sequence[int]
    root: nn.Module | None = None
    extras: tuple[torch.Tensor, ...] = field(default_factory=tuple)

    def __post_init__(self):
        internal_assert(len(self.funcs) == len(self.spans), "one function per step")
        internal_assert(len(self.save_at) >= 1 and self.save_at[-1] == len(self.spans), "last output is step N")

    @property
    def n_steps(self) -> int:
        return len(self.spans)


def make_grid(times: list[float], step_size, n_steps, like: torch.Tensor):
    """Steps between output ``times``: returns the spans of every step and the step counts at the outputs.

    Exactly one of ``step_size`` (each interval is cut into the fewest equal steps no longer than it) or
    ``n_steps`` (equal steps per interval) must be given. Time tensors have ``like``'s dtype and device and
    are shared by consecutive spans; output times are hit exactly.
    """
    if (step_size is None) == (n_steps is None):
        raise ValueError(
            "give exactly one of `step_size` (a float) or `n_steps` (steps per output interval); got "
            f"step_size={step_size!r}, n_steps={n_steps!r}. There is no default step: pick one that resolves "
            "eps and the time scale of F (e.g. step_size=0.1 * min(eps, 1))."
        )
    if n_steps is not None:
        check_positive_int("n_steps", n_steps)
        counts = [n_steps] * (len(times) - 1)
    else:
        step_size = check_real("step_size", step_size)
        if step_size <= 0:
            raise ValueError(f"`step_size` must be > 0; got {step_size!r}.")
        # the fewest equal steps no longer than step_size; the relative slack absorbs t's own rounding
        counts = [max(1, math.ceil((b - a) / step_size * (1 - 1e-12))) for a, b in zip(times[:-1], times[1:])]
    points, hs, save_at = [times[0]], [], [0]
    for a, b, m in zip(times[:-1], times[1:], counts):
        h = (b - a) / m
        points.extend(a + j * h for j in range(1, m))
        points.append(b)
        hs.extend([h] * m)
        save_at.append(save_at[-1] + m)
    ts = torch.tensor(points, dtype=torch.float64).to(dtype=like.dtype, device=like.device).unbind()
    spans = [Span(ts[n], ts[n + 1], h) for n, h in enumerate(hs)]
    return spans, save_at


def stack_outputs(states: list[torch.Tensor]) -> torch.Tensor:
    """Time-first stack, ``(len(states), *state.shape)``."""
    return torch.stack(states, dim=0)


def check_residual(f, x: torch.Tensor, step: int) -> torch.Tensor:
    """Return ``f``, the residual ``F`` step ``step`` computed at ``x``, after checking that it is a tensor of
    ``x``'s shape and dtype (a user error otherwise: ``ValueError`` / ``TypeError`` naming the step)."""
    if not isinstance(f, torch.Tensor) or f.shape != x.shape:
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(
            f"the residual function of step {step} must return a tensor of the state's shape "
            f"{tuple(x.shape)}; got {got}. A residual block maps x to F(t, x) of the same shape."
        )
    if f.dtype != x.dtype and torch.promote_types(f.dtype, x.dtype) != x.dtype:
        raise TypeError(
            f"the residual function of step {step} returned dtype {f.dtype} for a state of dtype "
            f"{x.dtype}; it would silently promote the whole solve. Cast the function (e.g. `.to({x.dtype})`)."
        )
    return f


def run_forward(
    traj: Trajectory, x0, v0, *, on_eval=None, ops=FLOAT, on_step=None, decode=None, as_recorded=False
):
    """Integrate ``traj`` from ``(x0, v0)``; returns the lists of saved ``x`` and ``v``.

    Autograd records whatever the caller's grad mode allows. ``ops`` is the arithmetic of the steps and
    ``decode`` turns a state into the float tensor the residual functions see (identity by default).
    ``on_eval()``, if given, is called before every actual evaluation of a residual function (not before
    reused ones), in order; ``on_step(n, x, v)`` before step ``n`` and once more with ``n = N`` at the end.
    ``as_recorded=True`` evaluates every residual exactly as a memory-free backward will: with autograd on
    and an input that requires grad, keeping only the detached value. Kernels chosen by grad mode (a
    compiled function's training graph, fused attention) then round the same way in both directions.
    """
    memo: LastCall | None = None
    saves = iter(traj.save_at)
    next_save = next(saves)
    xs, vs = [], []
    x, v = x0, v0
    for n in range(traj.n_steps + 1):
        if on_step is not None:
            on_step(n, x, v)
        if n == next_save:
            xs.append(x)
            vs.append(v)
            next_save = next(saves, None)
        if n == traj.n_steps:
            break
        func = traj.funcs[n]
        if memo is None or memo.func.func is not func:  # a new function: earlier evaluations cannot be reused
            memo = LastCall(_Evaluator(func, on_eval, decode, as_recorded))
        memo.func.step = n
        x, v = traj.integrator.step(memo, x, v, traj.spans[n], ops)
    return xs, vs


class _Evaluator:
    """One residual function as ``step`` evaluates it: decoded input, checked output, and, ``as_recorded``,
    autograd on with the graph dropped at once."""

    def __init__(self, func, on_eval, decode, as_recorded):
        self.func = func
        self.step = 0
        self.on_eval = on_eval
        self.decode = decode
        self.as_recorded = as_recorded

    def __call__(self, t, x):
        if self.on_eval is not None:
            self.on_eval()
        x = x if self.decode is None else self.decode(x)
        if not self.as_recorded:
            return check_residual(self.func(t, x), x, self.step)
        with torch.enable_grad():  # the graph is dropped at once: memory stays one evaluation deep
            x = x.detach().requires_grad_()
            return check_residual(self.func(t, x), x, self.step).detach()
