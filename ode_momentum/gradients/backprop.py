"""Plain autograd through the solve (``gradient="backprop"``): the reference, O(N) activation memory."""

from __future__ import annotations

import torch

from .trajectory import Trajectory, run_forward, stack_outputs


def solve_backprop(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options=None):
    """Integrate ``traj`` recording every step for autograd; returns ``(xs, vs)``, time first."""
    xs, vs = run_forward(traj, x0, v0)
    return stack_outputs(xs), stack_outputs(vs)
