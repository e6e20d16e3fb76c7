"""How to differentiate a solve, separate from how to integrate it.

``GRADIENTS`` maps each mode name to ``(solve, options_class)``; ``solve(traj, x0, v0, options)`` returns
the time-first ``(xs, vs)``. Front ends validate the mode name and build the options once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .._checks import check_choice
from .backprop import solve_backprop
from .exact import AutoOptions, ExactOptions, ExactReversalError, FixedPointRangeError, solve_auto, solve_exact
from .reversible import (
    CheckpointOptions,
    ReconstructionDriftError,
    ReconstructionDriftWarning,
    ReversibleOptions,
    solve_checkpoint,
    solve_reversible,
)
from .trajectory import Trajectory, make_grid


class BackpropOptions:
    """``gradient="backprop"`` takes no options."""


GRADIENTS = {
    "backprop": (solve_backprop, BackpropOptions),
    "reversible": (solve_reversible, ReversibleOptions),
    "checkpoint": (solve_checkpoint, CheckpointOptions),
    "exact": (solve_exact, ExactOptions),
    "auto": (solve_auto, AutoOptions),
}


def resolve_gradient(gradient: str, options: dict | None):
    """Return ``(solve, options_instance)`` for a mode name and a dict of its options."""
    check_choice("gradient", gradient, GRADIENTS)
    solve, options_class = GRADIENTS[gradient]
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(
            f"`gradient_options` must be a dict of options of gradient={gradient!r} (or None); got {options!r} "
            f"({type(options).__name__}). Example: gradient_options={{'on_drift': 'raise'}}."
        )
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(options_class)} if dataclasses.is_dataclass(options_class) else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for gradient={gradient!r}; valid options: {sorted(known) or 'none'}."
        )
    return solve, options_class(**options)

__all__ = [
    "AutoOptions",
    "CheckpointOptions",
    "ExactOptions",
    "ExactReversalError",
    "FixedPointRangeError",
    "GRADIENTS",
    "ReconstructionDriftError",
    "ReconstructionDriftWarning",
    "ReversibleOptions",
    "Trajectory",
    "make_grid",
    "resolve_gradient",
]
