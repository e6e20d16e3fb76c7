"""Measure what reversal costs and how well it works: float drift per step, changed branches of piecewise
functions, exact-mode round trips and bits.

The helpers take a layer (``MomentumResNet`` or ``MomentumODE``) and an input, run the layer's own solve
(its ``trajectory``) forward while keeping every state, then run the integrator's inverse and compare each
reconstructed state with the forward's. They are measurement tools: they keep all states on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..gradients.exact import ExactOptions, FixedPointSystem
from ..gradients.replay_state import buffers_unchanged
from ..gradients.reversible import ROUNDING_TIE_ULPS, decisions_of, unit_roundoff
from ..gradients.trajectory import Trajectory, run_forward


@dataclass(frozen=True)
class DriftReport:
    """Float reversal error per step.

    Attributes
    ----------
    steps : list of int
        ``n`` (step index of the state, 0 = input).
    relative_error : list of float
        ``max|x_n_rec - x_n| / max|x_n|`` of the state reconstructed from ``(x_N, v_N)``.
    predicted_growth : list of float
        ``prod_{m >= n} 1/gamma_m``, the amplification float reversal suffers down to step ``n``.
    dtype : str
    """

    steps: list
    relative_error: list
    predicted_growth: list
    dtype: str

    @property
    def input_error(self) -> float:
        """Relative error of the reconstructed input ``x_0``."""
        return self.relative_error[0]


@dataclass(frozen=True)
class BranchFlipReport:
    """Branch decisions of piecewise operations (ReLU masks, max-pool indices, ...) that float reversal
    changes, per step.

    Attributes
    ----------
    steps : list of int
        ``n`` (step index, 0 = the first residual evaluation's step).
    flips : list of int
        Decisions of step ``n``'s residual evaluations that differ between the forward (at ``x_n``) and the
        recomputation at the reconstructed state (elementwise count).
    decisions : list of int
        Decisions made by step ``n``'s residual evaluations.
    relative_error : list of float
        ``max|x_n_rec - x_n| / max|x_n|``.
    dtype : str
    """

    steps: list
    flips: list
    decisions: list
    relative_error: list
    dtype: str

    @property
    def total_flips(self) -> int:
        return sum(self.flips)

    @property
    def beyond_rounding(self) -> list:
        """Steps with flips whose reconstruction error exceeds ``ROUNDING_TIE_ULPS`` unit roundoffs: those the
        ``reversible`` mode reports (up to its estimate of the error)."""
        tie = ROUNDING_TIE_ULPS * unit_roundoff(getattr(torch, self.dtype))
        return [n for n, f, e in zip(self.steps, self.flips, self.relative_error) if f and e > tie]


@dataclass(frozen=True)
class ExactRoundTrip:
    """An exact-mode forward and its inverse, state by state.

    Attributes
    ----------
    n_steps : int
    all_equal : bool
        Every reconstructed ``(X_n, V_n)`` is ``torch.equal`` to the forward's.
    first_unequal : int or None
        The last step (in forward order) whose reconstruction differed, or None.
    buffer_empty : bool
        The bit buffer is empty after the inverse sweep.
    bits_used, bits_allocated : float
        Bits per state element held by the buffer after the forward: used (64 per spilled word plus
        ``log2(word + 1)``, averaged over elements) and allocated (64 per word held).
    bits_per_step : float
        ``bits_allocated / n_steps``.
    """

    n_steps: int
    all_equal: bool
    first_unequal: int | None
    buffer_empty: bool
    bits_used: float
    bits_allocated: float

    @property
    def bits_per_step(self) -> float:
        return self.bits_allocated / self.n_steps


def _trajectory(layer, x, v0):
    """``(trajectory, x0, v0)`` of a ``MomentumODE`` or ``MomentumResNet`` on input ``x``."""
    from ..nn import MomentumODE

    if isinstance(layer, MomentumODE):
        return layer.trajectory(x, v0)
    if v0 is None:
        v0 = layer.init_function(x) if layer.init_function is not None else torch.zeros_like(x)
    return layer.trajectory(x), x, v0


@torch.no_grad()
def reconstruction_drift(layer, x: torch.Tensor, v0: torch.Tensor | None = None) -> DriftReport:
    """Relative error of float reversal at every step of ``layer``'s solve on input ``x``.

    Parameters
    ----------
    layer : MomentumResNet or MomentumODE
    x : Tensor, shape ``(batch, *features)``, floating
        The input; the error is measured in its dtype.
    v0 : Tensor, optional
        Initial velocity (default: the layer's own, i.e. ``init_function(x)`` or zeros).

    Returns
    -------
    DriftReport
    """
    traj, x, v0 = _trajectory(layer, x, v0)
    states = _forward_states(traj, x, v0)
    X, V = states[-1]
    errors = [0.0] * (traj.n_steps + 1)
    for n in range(traj.n_steps - 1, -1, -1):
        X, V = traj.integrator.inverse_step(traj.funcs[n], X, V, traj.spans[n])
        ref = states[n][0]
        scale = float(ref.abs().max()) or 1.0
        errors[n] = float((X - ref).abs().max()) / scale
    growth, log_g = [1.0] * (traj.n_steps + 1), 0.0
    for n in range(traj.n_steps - 1, -1, -1):
        log_g -= math.log(traj.integrator.gamma(traj.spans[n].h))
        growth[n] = math.exp(min(log_g, 700.0))
    return DriftReport(list(range(traj.n_steps + 1)), errors, growth, str(x.dtype).replace("torch.", ""))


def branch_flips(layer, x: torch.Tensor, v0: torch.Tensor | None = None) -> BranchFlipReport:
    """Count, step by step, the branch decisions that float reversal of ``layer``'s solve changes.

    Every residual evaluation of the forward and of the inverse runs with autograd on (its graph is dropped at
    once) so that :func:`~ode_momentum.gradients.reversible.decisions_of` can read the decisions of its
    piecewise operations; the two are compared elementwise. Module buffers (BatchNorm statistics) are
    restored afterwards. The residual functions must be deterministic (no dropout).

    Parameters
    ----------
    layer : MomentumResNet or MomentumODE
    x : Tensor, shape ``(batch, *features)``, floating
        The input; the reversal runs in its dtype.
    v0 : Tensor, optional
        Initial velocity (default: the layer's own).

    Returns
    -------
    BranchFlipReport
    """
    traj, x, v0 = _trajectory(layer, x, v0)
    N = traj.n_steps
    seen: list[list] = [[] for _ in range(N)]

    def recording(n, out_list):
        def func(t, z):
            with torch.enable_grad():
                f = traj.funcs[n](t, z.detach().requires_grad_())
            out_list.append([d.detach().clone() for d in decisions_of(f)])
            return f.detach()
        return func

    with buffers_unchanged(traj.root), torch.no_grad():
        states = [(x, v0)]
        X, V = x, v0
        for n in range(N):
            X, V = traj.integrator.step(recording(n, seen[n]), X, V, traj.spans[n])
            states.append((X, V))
        flips, decisions, errors = [0] * N, [0] * N, [0.0] * N
        for n in range(N - 1, -1, -1):
            again: list = []
            X, V = traj.integrator.inverse_step(recording(n, again), X, V, traj.spans[n])
            ref = states[n][0]
            errors[n] = float((X - ref).abs().max()) / (float(ref.abs().max()) or 1.0)
            for fwd, bwd in zip(seen[n], reversed(again)):  # the inverse evaluates in reverse order
                for a, b in zip(fwd, bwd):
                    decisions[n] += a.numel()
                    flips[n] += int((a != b).sum()) if a.shape == b.shape else a.numel()
    return BranchFlipReport(list(range(N)), flips, decisions, errors, str(x.dtype).replace("torch.", ""))


@torch.no_grad()
def exact_round_trip(layer, x: torch.Tensor, v0: torch.Tensor | None = None, options: ExactOptions | None = None):
    """Run ``layer``'s solve in the exact mode's fixed point, then invert it step by step.

    Parameters
    ----------
    layer : MomentumResNet or MomentumODE
    x : Tensor, shape ``(batch, *features)``, floating
    v0 : Tensor, optional
        Initial velocity (default: the layer's own).
    options : ExactOptions, optional
        Fixed-point format (default 44 fractional bits, 30-bit damping factors).

    Returns
    -------
    ExactRoundTrip
    """
    traj, x, v0 = _trajectory(layer, x, v0)
    system = FixedPointSystem(traj, options or ExactOptions())
    X, V = system.encode(x, v0)
    ops = system.training_ops(V)
    states = _forward_states(traj, X, V, ops=ops, on_step=system.on_step, decode=system.decode)
    system.end_forward()
    bits = system.buffer.bits_per_element()
    X, V = states[-1]
    first_bad = None
    for n in range(traj.n_steps - 1, -1, -1):
        func = traj.funcs[n]
        X, V = traj.integrator.inverse_step(lambda t, Z: func(t, system.decode(Z)), X, V, traj.spans[n], ops)
        if first_bad is None and not (torch.equal(X, states[n][0]) and torch.equal(V, states[n][1])):
            first_bad = n
    return ExactRoundTrip(
        traj.n_steps, first_bad is None, first_bad, system.buffer.is_empty(), bits["used"], bits["allocated"]
    )


def buffer_bound(gamma: float, n_steps: int) -> float:
    """The issue's budget for the exact buffer: ``2 log2(1/gamma)`` bits per element per step plus one word."""
    return 2 * math.log2(1 / gamma) * n_steps + 64


def _forward_states(traj: Trajectory, x, v, **kwargs):
    """Every state ``(x_n, v_n)``, ``n = 0..N``, of ``traj`` (measurement only: memory O(N))."""
    every = list(range(traj.n_steps + 1))
    all_steps = Trajectory(traj.integrator, traj.funcs, traj.spans, every, traj.root, traj.extras)
    xs, vs = run_forward(all_steps, x, v, **kwargs)
    return list(zip(xs, vs))


__all__ = [
    "BranchFlipReport",
    "DriftReport",
    "ExactRoundTrip",
    "branch_flips",
    "buffer_bound",
    "exact_round_trip",
    "reconstruction_drift",
]
