"""How to differentiate a solve, separate from how to integrate it.

``GRADIENTS`` maps each mode name to ``(solve, options_class)``; ``solve(traj, x0, v0, options)`` returns
the time-first ``(xs, vs)``. Front ends validate the mode name and build the options once.
"""

from __future__ import annotations

from .._checks import check_choice
from .backprop import solve_backprop
from .reversible import (
    ReconstructionDriftError,
    ReconstructionDriftWarning,
    ReversibleOptions,
    solve_reversible,
)
from .trajectory import Trajectory, make_grid


class BackpropOptions:
    """``gradient="backprop"`` takes no options."""


GRADIENTS = {
    "backprop": (solve_backprop, BackpropOptions),
    "reversible": (solve_reversible, ReversibleOptions),
}


def resolve_gradient(gradient: str, options: dict | None):
    """Return ``(solve, options_instance)`` for a mode name and a dict of its options."""
    check_choice("gradient", gradient, GRADIENTS)
    solve, options_class = GRADIENTS[gradient]
    options = dict(options or {})
    try:
        return solve, options_class(**options)
    except TypeError as err:
        raise TypeError(f"unknown option for gradient={gradient!r}: {err}. Valid: {options_class.__doc__}") from None


__all__ = [
    "GRADIENTS",
    "ReconstructionDriftError",
    "ReconstructionDriftWarning",
    "ReversibleOptions",
    "Trajectory",
    "make_grid",
    "resolve_gradient",
]
