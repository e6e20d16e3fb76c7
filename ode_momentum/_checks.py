"""Validators for user input at the public boundary.

Each raises ``ValueError`` or ``TypeError`` with the argument's name, the value and its type, and a hint.
Internal invariants (our own bugs, not the user's) go through :func:`internal_assert` instead, which says so.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


def check_real(name: str, value) -> float:
    """Return ``value`` as a float, raising ``TypeError`` for non-numbers and ``ValueError`` for nan/inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"`{name}` must be a real number; got {_show(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    return value


def check_gamma(gamma, *, allow_zero: bool = True) -> float:
    """Validate a momentum coefficient ``gamma`` in [0, 1]."""
    gamma = check_real("gamma", gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(
            f"`gamma` must lie in [0, 1]; got {gamma!r}. gamma = 0 is a plain ResNet, gamma close to 1 keeps "
            "more momentum (the paper uses 0.9)."
        )
    if not allow_zero and gamma == 0.0:
        raise ValueError(
            "`gamma` = 0 cannot be reversed: the inverse divides by gamma, and a plain ResNet step forgets "
            'the velocity. Use gradient="backprop" for gamma = 0, or a gamma in (0, 1].'
        )
    return gamma


def check_eps(eps) -> float:
    """Validate the inertia ``eps`` >= 0 of ``eps x'' + x' = F``."""
    eps = check_real("eps", eps)
    if eps < 0:
        raise ValueError(
            f"`eps` must be >= 0; got {eps!r}. eps > 0 gives the momentum ODE eps x'' + x' = F, eps = 0 the "
            "first-order ODE x' = F."
        )
    return eps


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive int; got {_show(value)}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1; got {value!r}.")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}; got {_show(value)}.")
    return value


def check_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {_show(value)}.")
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise if a floating tensor holds nan or inf (one host synchronisation)."""
    check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {value.dtype}. Use `.float()`.")
    if not bool(torch.isfinite(value).all()):
        n_bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"`{name}` has {n_bad} non-finite entries (nan or inf); clean the input first.")
    return value


def check_same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    check_tensor(name, value)
    if value.shape != ref.shape:
        raise ValueError(
            f"`{name}` must have the shape of `{ref_name}`, {tuple(ref.shape)}; got {tuple(value.shape)}. "
            f"Pass `{name}` = torch.zeros_like({ref_name}) to start at rest."
        )
    if value.dtype != ref.dtype or value.device != ref.device:
        raise TypeError(
            f"`{name}` must have the dtype and device of `{ref_name}` ({ref.dtype}, {ref.device}); got "
            f"({value.dtype}, {value.device})."
        )
    return value


def check_time_grid(t) -> torch.Tensor:
    """Validate output times: a 1-D floating tensor, strictly monotone, at least two entries."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`t` must be a 1-D torch.Tensor of output times; got {_show(t)}.")
    if t.dim() != 1:
        raise ValueError(f"`t` must be 1-D; got shape {tuple(t.shape)}. Pass torch.tensor([t0, t1, ...]).")
    if t.numel() < 2:
        raise ValueError(f"`t` needs at least two times (start and end); got {t.numel()}.")
    if not t.is_floating_point():
        raise TypeError(f"`t` must be a floating-point tensor; got dtype {t.dtype}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("`t` has non-finite entries.")
    dt = t[1:] - t[:-1]
    if not bool((dt > 0).all()):
        raise ValueError(
            f"`t` must be strictly increasing; got {t.tolist()}. Backward-in-time solves are not supported; "
            "reverse time in `func` instead."
        )
    return t


def internal_assert(condition: bool, message: str) -> None:
    """Guard an invariant of this library; failing it is our bug, not the user's."""
    if not condition:
        raise RuntimeError(f"ode_momentum internal error: {message}. Please report this as a bug.")


def check_seed(seed) -> int:
    """Validate a seed of a private random generator: an int ``>= 0``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int >= 0; got {_show(seed)}.")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0; got {seed!r}. Any non-negative int, e.g. seed=0.")
    return int(seed)
