"""The exact mode's fixed-point sub-flows as kernels, in three interchangeable implementations.

Every implementation returns the same integers (each result is defined exactly by floor semantics; see
:mod:`~ode_momentum.gradients.fixed_point`), so the choice only changes speed:

- ``"eager"``: a few elementwise torch operations per sub-flow (any device; ~15 memory passes per damping).
- ``"native"``: one C loop per sub-flow (:mod:`~ode_momentum.gradients.native`; CPU, built on first use).
- ``"compiled"``: each sub-flow compiled by ``torch.compile`` (any device inductor supports; the first
  call compiles for tens of seconds).
- ``"auto"`` (the default): ``native`` for CPU states where it builds, ``eager`` otherwise.

The fast damping path covers factors ``n / 2^k`` in ``[1/2, 1)`` with ``n >= 2^12`` (blocks of at most two
inputs, one bit per push); other factors use the general :func:`~ode_momentum.gradients.fixed_point.exact_mul`.
Range-guard peaks are 0-dim float64 tensors (eager, compiled) or Python floats (native); checksums likewise
0-dim int64 tensors or Python ints. One solve uses one implementation throughout.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from . import native
from .fixed_point import _floor_divmod, decode_scaled

KERNELS = ("auto", "eager", "native", "compiled")


def _shift(V, h):
    """The drift increment ``h V`` as integers (``V`` itself for ``h == 1``) and its peak before rounding.
    ``h`` is a float, or a 0-dim float64 tensor (compiled kernels, never 1)."""
    if isinstance(h, float) and h == 1.0:
        return V, V.abs().amax().double()
    inc = V.double() * h
    return torch.round(inc).long(), inc.abs().amax()


class _Composed:
    """The fused sub-flows as compositions of the unfused ones. ``None`` sums: the checksum computes its own.

    ``damp_kick2`` / ``damp_kick_only`` / ``unkick_undamp2``: the damped kick ``v <- g v + c f`` and its
    inverse; ``drift_decode`` / ``undrift_decode``: a drift and the decoded result (what the next residual
    evaluation reads); ``damp_kick_drift2``: a damped kick and the drift by the new velocity. Signatures as in
    :class:`~ode_momentum.gradients.native.NativeKernels`.
    """

    def damp_kick2(self, V, word, n, s, k, f, scale):
        W, word = self.damp_push2(V, word, n, s, k)
        W, flag_inc, flag_v = self.kick(W, f, scale)
        return W, word, flag_inc, flag_v, None

    def damp_kick_only(self, V, n, s, k, f, scale):
        return self.kick(self.damp_only(V, n, s, k), f, scale)

    def unkick_undamp2(self, W, word, n, s, k, f, scale):
        V, word = self.undamp_pop2(self.unkick(W, f, scale), word, n, s, k)
        return V, word, None

    def drift_decode(self, X, V, h, dtype, scale):
        X, flag_inc, flag_x = self.drift(X, V, h)
        return X, self.decode(X, scale, dtype), flag_inc, flag_x, None, None

    def undrift_decode(self, X, V, h, dtype, scale):
        X = self.undrift(X, V, h)
        return X, self.decode(X, scale, dtype), None, None

    def damp_kick_drift2(self, X, V, word, n, s, k, f, scale, h, dtype, dscale):
        W, word, flag_inc, flag_w, sum_w = self.damp_kick2(V, word, n, s, k, f, scale)
        X, x, flag_drift, flag_x, sum_x, _ = self.drift_decode(X, W, h, dtype, dscale)
        return X, W, word, x, flag_inc, flag_w, flag_drift, flag_x, sum_x, sum_w


class EagerKernels(_Composed):
    """The sub-flows as plain elementwise torch operations."""

    name = "eager"

    @staticmethod
    def damp_push2(V, word, n, s, k: int):
        """Exact multiply by ``n / 2^k`` in ``[1/2, 1)`` and one-bit push: ``(W, word')``."""
        mask = (1 << k) - 1
        P = (V & mask) * n + s
        W = (V >> k) * n + (P >> k)
        r = P & mask
        upper = r >= n
        two = upper | (r < (1 << k) - n)
        return W, torch.where(two, (word << 1) | upper.long(), word)

    @staticmethod
    def damp_only(V, n, s, k: int):
        """The value of :meth:`damp_push2` without a buffer (inference)."""
        mask = (1 << k) - 1
        return (V >> k) * n + (((V & mask) * n + s) >> k)

    @staticmethod
    def undamp_pop2(W, word, n, s, k: int):
        """Inverse of :meth:`damp_push2`: ``(V, word')``."""
        mask = (1 << k) - 1
        a, b = _floor_divmod(W, n)
        lo = (a << k) - _floor_divmod(s - b * (1 << k), n)[0]
        r = ((lo & mask) * n + s) & mask
        two = r < (1 << k) - n
        return lo + torch.where(two, word & 1, 0), torch.where(two, word >> 1, word)

    @staticmethod
    def kick(V, f, scale: float):
        """``V + round(scale f)`` and the peaks ``max|scale f|``, ``max|V'|`` for the range guard."""
        inc = f.double() * scale
        V = V + torch.round(inc).long()
        return V, inc.abs().amax(), V.abs().amax().double()

    @staticmethod
    def unkick(V, f, scale: float):
        return V - torch.round(f.double() * scale).long()

    @staticmethod
    def drift(X, V, h: float):
        """``X + round(h V)`` and the peaks of the increment and of ``X'``."""
        inc, peak = _shift(V, h)
        X = X + inc
        return X, peak, X.abs().amax().double()

    @staticmethod
    def undrift(X, V, h: float):
        return X - _shift(V, h)[0]

    @staticmethod
    def decode(X, scale: float, dtype: torch.dtype):
        """``X 2^-R`` in ``dtype`` (:func:`~ode_momentum.gradients.fixed_point.decode_scaled`)."""
        return decode_scaled(X, scale, dtype)

    @staticmethod
    def checksum(X, V):
        """Order-free int64 checksum of a state (sums wrap modulo 2^64, so any summation order agrees)."""
        return X.sum() * 3 + V.sum()


class CompiledKernels(_Composed):
    """:class:`EagerKernels` compiled once per process by ``torch.compile``; scalars enter as 0-dim tensors so
    that one compiled kernel serves every damping factor, dither and step."""

    name = "compiled"
    _compiled: dict = {}

    def __init__(self):
        if not CompiledKernels._compiled:
            for name in ("damp_push2", "damp_only", "undamp_pop2", "kick", "unkick", "drift", "undrift", "decode",
                         "checksum"):
                fn = getattr(EagerKernels, name)
                CompiledKernels._compiled[name] = torch.compile(fn, dynamic=None, fullgraph=True)
        self.c = CompiledKernels._compiled

    @staticmethod
    def _t(value, like, dtype=None):
        return torch.tensor(value, dtype=dtype, device=like.device)

    def damp_push2(self, V, word, n, s, k):
        return self.c["damp_push2"](V, word, self._t(n, V), self._t(s, V), k)

    def damp_only(self, V, n, s, k):
        return self.c["damp_only"](V, self._t(n, V), self._t(s, V), k)

    def undamp_pop2(self, W, word, n, s, k):
        return self.c["undamp_pop2"](W, word, self._t(n, W), self._t(s, W), k)

    def kick(self, V, f, scale):
        return self.c["kick"](V, f, self._t(scale, V, torch.float64))

    def unkick(self, V, f, scale):
        return self.c["unkick"](V, f, self._t(scale, V, torch.float64))

    def drift(self, X, V, h):  # h = 1 stays a constant (no rounding); other steps enter as a tensor
        return self.c["drift"](X, V, h if h == 1.0 else self._t(h, V, torch.float64))

    def undrift(self, X, V, h):
        return self.c["undrift"](X, V, h if h == 1.0 else self._t(h, V, torch.float64))

    def decode(self, X, scale, dtype):
        return self.c["decode"](X, scale, dtype)

    def checksum(self, X, V):
        return self.c["checksum"](X, V)


EAGER = EagerKernels()


@lru_cache(maxsize=1)
def _native() -> native.NativeKernels:
    return native.NativeKernels()


def select(kernels: str, device: torch.device):
    """The kernel implementation named ``kernels`` for states on ``device`` (see the module doc).

    Raises
    ------
    ValueError
        For an unknown name, or ``"native"`` with a non-CPU state.
    RuntimeError
        For ``"native"`` where the library cannot be built (the message says why).
    """
    if kernels not in KERNELS:
        raise ValueError(f"`kernels` must be one of {KERNELS}; got {kernels!r}.")
    if kernels == "auto":
        return _native() if device.type == "cpu" and native.status()[0] else EAGER
    if kernels == "native":
        if device.type != "cpu":
            raise ValueError(
                f"kernels='native' runs on CPU states only; this state is on {device}. Use kernels='auto' "
                "(eager there) or 'compiled'."
            )
        return _native()
    if kernels == "compiled":
        return CompiledKernels()
    return EAGER
