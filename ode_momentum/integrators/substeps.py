"""Intermediate times of a composed step, shared by ``step`` and ``inverse_step``.

A scheme that evaluates ``F`` inside a step (``yoshida4`` at its sub-step boundaries, ``alf`` at the
midpoint) must hand ``func`` the *same* time tensor objects in ``step`` and in ``inverse_step`` of one span:
first-same-as-last reuse (:class:`~ode_momentum.integrators.LastCall`) keys on object identity.
:class:`SubTimes` builds the tensors once per span and returns them again while the span is the same.
"""

from __future__ import annotations

import torch

from .base import Span


class SubTimes:
    """Times ``t0 + c_i h`` of one span, memoised on the identity of ``(span.t0, span.t1)``.

    Parameters
    ----------
    fractions : tuple of float
        The ``c_i`` (dimensionless; may lie outside [0, 1], as in the triple jump).

    Notes
    -----
    One entry is kept: a driver works on one span at a time. The entry holds references to ``t0`` and ``t1``, so
    their identities cannot be recycled while it lives.
    """

    def __init__(self, fractions: tuple[float, ...]):
        self.fractions = tuple(float(c) for c in fractions)
        self._key: tuple[torch.Tensor, torch.Tensor] | None = None
        self._times: tuple[torch.Tensor, ...] = ()

    def __call__(self, span: Span) -> tuple[torch.Tensor, ...]:
        """0-dim tensors ``t0 + c_i h`` (dtype and device of ``span.t0``), one per fraction."""
        key = self._key
        if key is not None and key[0] is span.t0 and key[1] is span.t1:
            return self._times
        self._times = tuple(span.t0 + c * span.h for c in self.fractions)
        self._key = (span.t0, span.t1)
        return self._times
