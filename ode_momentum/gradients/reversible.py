"""Float reversal (``gradient="reversible"``) and its checkpointed form (``gradient="checkpoint"``).

``reversible`` saves ``x_0``, ``x_N`` and ``v_N`` whatever the depth and reconstructs every step with the
algebraic inverse in floating point. The inverse divides by the damping ``g < 1``, so rounding grows by
about ``1/g`` per step (``gamma^{-N}``, ``e^{T/eps}``): the reconstructed ``x_0`` is compared with the saved
one, and a relative error above ``drift_tol`` warns (``on_drift="warn"``) or raises (``"raise"``).

``checkpoint`` also stores the state every ``every`` steps and reverses in float inside each segment,
restarting from the stored state at every segment boundary: the drift is bounded by about
``u gamma^{-every}`` (``u`` the unit roundoff) at any depth, for ``2 / every`` extra states per step, and it
is measured at every boundary.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_positive_int, check_real
from ..integrators import FLOAT
from .reversal import check_reversible, solve_with_reversal
from .trajectory import Trajectory

ON_DRIFT = ("warn", "raise", "ignore")
DEFAULT_DRIFT_TOL = 1e-4


class ReconstructionDriftWarning(UserWarning):
    """The float reversal did not recover the forward's states to the requested tolerance."""


class ReconstructionDriftError(RuntimeError):
    """Raised instead of :class:`ReconstructionDriftWarning` with ``on_drift="raise"``."""


@dataclass
class ReversibleOptions:
    """Options of ``gradient="reversible"``.

    drift_tol : float
        Largest accepted relative error ``max|x0_rec - x0| / max|x0|`` of the reconstructed input (default
        1e-4: above it float32 gradients are no longer trustworthy to 4 digits).
    on_drift : {"warn", "raise", "ignore"}
        What to do when ``drift_tol`` is exceeded.
    replay_rng : bool
        Replay each residual evaluation's random number generator state in the backward (default True).
    """

    drift_tol: float = DEFAULT_DRIFT_TOL
    on_drift: str = "warn"
    replay_rng: bool = True

    def __post_init__(self):
        self.drift_tol = check_real("drift_tol", self.drift_tol)
        if self.drift_tol <= 0:
            raise ValueError(f"`drift_tol` must be > 0; got {self.drift_tol!r}.")
        check_choice("on_drift", self.on_drift, ON_DRIFT)


@dataclass
class CheckpointOptions(ReversibleOptions):
    """Options of ``gradient="checkpoint"``: those of ``"reversible"`` plus the segment length.

    every : int or None
        Store the state every ``every`` steps (memory ``2 N / every`` states). ``None`` picks the largest
        segment whose predicted drift ``u prod(1/g)`` stays below ``drift_tol / 100`` (``u`` the unit
        roundoff of the state's dtype), at least 1.
    """

    every: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.every is not None:
            check_positive_int("every", self.every)


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def predicted_drift(traj: Trajectory, dtype: torch.dtype, steps: range | None = None) -> float:
    """Predicted relative reconstruction error of float reversal: ``u * prod_n 1 / gamma_n``.

    The growth factor of one inverse step is ``1 / gamma_n`` (the net velocity damping of step ``n``), the
    rounding of one step is about the unit roundoff ``u``. A Lipschitz constant of ``F`` adds to this, so it
    is a lower estimate, used with a safety factor.
    """
    steps = range(traj.n_steps) if steps is None else steps
    log_growth = sum(-math.log(traj.integrator.gamma(traj.spans[n].h)) for n in steps)
    return unit_roundoff(dtype) * math.exp(min(log_growth, 700.0))


def solve_reversible(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options: ReversibleOptions):
    """Integrate ``traj`` with the memory-free float-reversal gradient; returns ``(xs, vs)``, time first."""
    check_reversible(traj.integrator, [span.h for span in traj.spans], "reversible")
    return solve_with_reversal(traj, x0, v0, FloatSystem(traj, options, every=None))


def solve_checkpoint(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options: CheckpointOptions):
    """Integrate ``traj`` with float reversal inside checkpointed segments; returns ``(xs, vs)``."""
    check_reversible(traj.integrator, [span.h for span in traj.spans], "checkpoint")
    every = options.every or auto_segment(traj, x0.dtype, options.drift_tol)
    return solve_with_reversal(traj, x0, v0, FloatSystem(traj, options, every=every))


def auto_segment(traj: Trajectory, dtype: torch.dtype, drift_tol: float) -> int:
    """Largest ``K`` with ``u gamma^{-K} <= drift_tol / 100`` for the strongest damping of ``traj``."""
    worst = max(-math.log(traj.integrator.gamma(span.h)) for span in traj.spans)
    if worst <= 0:
        return traj.n_steps
    return max(1, min(traj.n_steps, int(math.log(drift_tol / 100 / unit_roundoff(dtype)) / worst)))


class FloatSystem:
    """State system of float reversal: the state is its own encoding; ``every`` adds checkpoints."""

    def __init__(self, traj: Trajectory, options: ReversibleOptions, every: int | None):
        self.traj = traj
        self.options = options
        self.every = every
        self.checkpoints: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def encode(x0, v0):
        return x0, v0

    @staticmethod
    def decode(x):
        return x

    def training_ops(self, v):
        return FLOAT

    def inference_ops(self):
        return FLOAT

    def on_step(self, n, x, v):
        if self.every is not None and 0 < n < self.traj.n_steps and n % self.every == 0:
            self.checkpoints[n] = (x, v)

    def end_forward(self):
        pass

    def tensors_to_save(self, x0, v0):
        saved = [x0]
        for n in sorted(self.checkpoints):
            saved.extend(self.checkpoints[n])
        self.checkpoints = {n: None for n in self.checkpoints}  # the tensors now live in the autograd context
        return saved

    def start_backward(self, saved):
        x0, *flat = saved
        stored = dict(zip(sorted(self.checkpoints), zip(flat[0::2], flat[1::2])))
        return _FloatReverse(self, x0, stored)


class _FloatReverse:
    ops = FLOAT

    def __init__(self, system: FloatSystem, x0, stored):
        self.system, self.x0, self.stored = system, x0, stored
        self.worst = 0.0

    def after_inverse(self, n, x, v):
        if n in self.stored:  # measure the segment's drift, then restart from the stored state
            xs, vs = self.stored[n]
            self.worst = max(self.worst, _relative_error(x, xs))
            return xs, vs
        return x, v

    def finish(self, x, v):
        self.worst = max(self.worst, _relative_error(x, self.x0))
        opts, traj = self.system.options, self.system.traj
        if opts.on_drift == "ignore" or self.worst <= opts.drift_tol:
            return
        where = f"segments of {self.system.every} steps" if self.system.every else f"{traj.n_steps} steps"
        msg = (
            f"float reversal drifted: a reconstructed state differs from the forward's by {self.worst:.3g} "
            f"(relative, max norm) > drift_tol = {opts.drift_tol:g} over {where} of {traj.integrator!r} in "
            f"{self.x0.dtype}. Each inverse step divides by the damping factor, so rounding grows like "
            'gamma^-N; gradients are unreliable. Use gradient="exact" (bit-exact at any depth), '
            'gradient="checkpoint", float64, or gradient="backprop".'
        )
        if opts.on_drift == "raise":
            raise ReconstructionDriftError(msg)
        warnings.warn(msg, ReconstructionDriftWarning, stacklevel=2)


def _relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    err = float((x - ref).abs().max())
    scale = float(ref.abs().max())
    rel = err / scale if scale > 0 else err
    return rel if math.isfinite(rel) else math.inf
