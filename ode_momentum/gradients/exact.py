"""Bit-exact memory-free gradients (``gradient="exact"``) and the automatic choice (``gradient="auto"``).

The state ``(x, v)`` is held as int64 fixed point with ``frac_bits`` fractional bits; every damping factor
is quantised to the dyadic rational ``g' = n / 2^gamma_bits`` (the *effective* gamma, within ``2^-31`` of
the float one at the default 30 bits: below float32 rounding) and applied by an exact multiply whose lost
bits go to a :class:`~ode_momentum.gradients.fixed_point.BitBuffer`. Kicks and drifts add deterministic
integer amounts. The reverse sweep therefore reconstructs every state bit for bit, at any depth; the
gradient is that of the fixed-point forward written straight-through (its value is the integer state, its
derivative the real recurrence with ``g'``).

Integrity checks make silent failure impossible: a checksum of ``(X_n, V_n)`` per step, compared in the
backward, names the first step whose recomputation differs (dropout without replay, a weight changed
between forward and backward, a nondeterministic kernel), down to the recovered ``(X_0, V_0)``; the buffer
must end empty; a value that would leave the int64 range raises with its step.

References
----------
``reference/exact_reversal.md`` sections 6-8; Maclaurin, Duvenaud & Adams, ICML 2015.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_positive_int, internal_assert
from ..integrators import FloatArithmetic
from . import fixed_point as fp
from . import fixed_point_kernels as fpk
from .reversal import check_reversible, solve_with_reversal
from .reversible import FloatSystem, ReversibleOptions, predicted_drift, unit_roundoff
from .trajectory import Trajectory


class ExactReversalError(RuntimeError):
    """A memory-free exact backward found that the recomputation is not the forward (names the step)."""


class FixedPointRangeError(ValueError):
    """A state or increment does not fit the fixed-point range (names the step and the fix)."""


@dataclass
class ExactOptions:
    """Options of ``gradient="exact"``.

    frac_bits : int
        Fractional bits ``R`` of the int64 state (default 44: resolution ``2^-44 = 5.7e-14``, range
        ``|x|, |v| < 2^(62 - R) = 2^18``).
    gamma_bits : int
        Bits ``k`` of the dyadic damping factors ``n / 2^k`` (default 30, at most 30 so that no intermediate
        exceeds int64: ``|g' - g| <= 2^-31``).
    replay_rng : bool
        Replay each residual evaluation's random number generator state in the backward (default True;
        ``False`` only to show that the checksums catch unreplayed dropout).
    kernels : str
        Implementation of the integer sub-flows (default ``"auto"``: native C loops for CPU states where a C
        compiler builds them, eager torch operations otherwise; ``"eager"``, ``"native"``, ``"compiled"`` for
        ``torch.compile``). All give the same bits; see :mod:`~ode_momentum.gradients.fixed_point_kernels`.
    """

    frac_bits: int = 44
    gamma_bits: int = 30
    replay_rng: bool = True
    kernels: str = "auto"

    def __post_init__(self):
        check_positive_int("frac_bits", self.frac_bits)
        check_positive_int("gamma_bits", self.gamma_bits)
        if not 8 <= self.frac_bits <= 60:
            raise ValueError(f"`frac_bits` must lie in [8, 60]; got {self.frac_bits}.")
        if not 8 <= self.gamma_bits <= 30:
            raise ValueError(f"`gamma_bits` must lie in [8, 30] (int64 intermediates); got {self.gamma_bits}.")
        if self.kernels not in fpk.KERNELS:
            raise ValueError(f"`kernels` must be one of {fpk.KERNELS}; got {self.kernels!r}.")


AUTO_FLOAT_ULPS = 32  # gradient="auto" reverses in float only within this many unit roundoffs (float64)


@dataclass
class AutoOptions(ReversibleOptions):
    """Options of ``gradient="auto"``: those of ``"reversible"`` (used when it is chosen) and of ``"exact"``.

    The rule: float reversal only where it is exact to working precision: a float64 state whose predicted
    reconstruction error ``u * prod_n 1/gamma_n`` stays within ``AUTO_FLOAT_ULPS = 32`` unit roundoffs (at
    gamma 0.9, up to 32 layers); the exact fixed point everywhere else, float32 included. A reconstruction
    error far below ``drift_tol`` still flips the branch of any pre-activation that lies closer to a kink (ReLU,
    max-pool, a mask ``x * (x > 0)`` that autograd cannot even see), and each flip changes a gradient entry by
    O(1): a float32 Conv-BN-ReLU stack of depth 32 gets 3% input-gradient error with ``x_0`` reconstructed to
    3e-5. Within 32 unit roundoffs such flips are as rare as the rounding ties backprop itself meets.
    """

    frac_bits: int = 44
    gamma_bits: int = 30
    kernels: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        self.exact = ExactOptions(self.frac_bits, self.gamma_bits, self.replay_rng, self.kernels)


def solve_exact(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options: ExactOptions):
    """Integrate ``traj`` with the bit-exact memory-free gradient; returns ``(xs, vs)``, time first."""
    check_reversible(traj.integrator, [span.h for span in traj.spans], "exact")
    return solve_with_reversal(traj, x0, v0, FixedPointSystem(traj, options))


def solve_auto(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options: AutoOptions):
    """``reversible`` for a float64 state whose predicted drift stays within ``AUTO_FLOAT_ULPS`` unit roundoffs,
    ``exact`` otherwise (see :class:`AutoOptions`)."""
    check_reversible(traj.integrator, [span.h for span in traj.spans], "auto")
    if x0.dtype == torch.float64 and predicted_drift(traj, x0.dtype) <= AUTO_FLOAT_ULPS * unit_roundoff(x0.dtype):
        return solve_with_reversal(traj, x0, v0, FloatSystem(traj, options, every=None))
    return solve_with_reversal(traj, x0, v0, FixedPointSystem(traj, options.exact))


def effective_gamma(gamma: float, gamma_bits: int = ExactOptions.gamma_bits) -> float:
    """The dyadic damping factor the exact mode uses for ``gamma``: ``round(gamma 2^k) / 2^k``."""
    return fp.quantise(gamma, gamma_bits) / 2**gamma_bits


class QuantisedFloat(FloatArithmetic):
    """Float arithmetic with the exact mode's dyadic damping factors (the coefficients of the real recurrence
    whose derivative the exact mode returns)."""

    def __init__(self, gamma_bits: int):
        self.k = gamma_bits
        self._coefficients: dict[float, float] = {}  # a solve uses a few distinct factors, at every step

    def coefficient(self, g: float) -> float:
        q = self._coefficients.get(g)
        if q is None:
            if g == 1.0 or g == -1.0:
                q = g
            else:
                q = (-1.0 if g < 0 else 1.0) * fp.quantise(abs(g), self.k) / 2**self.k
            self._coefficients[g] = q
        return q


class FixedPointArithmetic(QuantisedFloat):
    """The primitive sub-flows on int64 fixed-point states; damping is an exact multiply into ``buffer``.

    ``buffer=None`` (inference) skips storing the lost bits; the values are identical. ``kern`` is the
    kernel implementation (:mod:`~ode_momentum.gradients.fixed_point_kernels`); all give the same bits.
    """

    def __init__(self, frac_bits, gamma_bits, buffer: fp.BitBuffer | None, guard: "_RangeGuard", kern,
                 dtype: torch.dtype = torch.float64, known: "_Known | None" = None):
        super().__init__(gamma_bits)
        self.R = frac_bits
        self.buffer = buffer
        self.guard = guard
        self.n_mul = 0  # multiplies done so far: indexes the dither
        self.kern = kern
        self.dtype = dtype  # of the decoded states the residual functions read
        self.known = _Known() if known is None else known
        self._factors: dict[float, tuple[int, bool]] = {}

    def _factor(self, g: float) -> tuple[int, bool]:
        factor = self._factors.get(g)
        if factor is None:
            n = round(abs(g) * 2**self.k)
            internal_assert(n == abs(g) * 2**self.k, "damping factors reach the arithmetic quantised")
            factor = self._factors[g] = (n, g < 0)
        return factor

    def _fast(self, n: int) -> bool:
        """Damping factor in [1/2, 1): blocks of at most two inputs, one bit, one kernel."""
        return 1 << (self.k - 1) <= n < 1 << self.k and n >= 1 << 12

    def damp(self, V, g):
        n, negate = self._factor(g)
        if negate:
            V = -V
        if n == 1 << self.k:
            return V
        s = fp.dither(self.n_mul, self.k)
        self.n_mul += 1
        if self._fast(n):
            if self.buffer is None:
                return self.kern.damp_only(V, n, s, self.k)
            self.buffer.reserve(2)
            W, self.buffer.word = self.kern.damp_push2(V, self.buffer.word, n, s, self.k)
            return W
        W, j, m = fp.exact_mul(V, n, self.k, s)
        if self.buffer is not None:
            self.buffer.push(j, m, fp.max_block(n, self.k))
        if n > 1 << self.k:
            self.guard.check(W)
        return W

    def undamp(self, W, g):
        n, negate = self._factor(g)
        if n != 1 << self.k:
            self.n_mul -= 1
            s = fp.dither(self.n_mul, self.k)
            if self._fast(n):
                buf = self.buffer
                W, buf.word = self.kern.undamp_pop2(W, buf.word, n, s, self.k)
                buf.unreserve()
            else:
                W = fp.exact_div(W, n, self.k, s, self.buffer.pop)
        return -W if negate else W

    def kick(self, V, c, f):
        V, peak_inc, peak_v = self.kern.kick(V, f, c * 2.0**self.R)
        self.guard.record(peak_inc, peak_v)
        return V

    def unkick(self, V, c, f):
        return self.kern.unkick(V, f, c * 2.0**self.R)

    def damp_kick(self, V, g, c, f):
        """``damp`` then ``kick`` as one kernel on the fast path (same bits)."""
        n, negate = self._factor(g)
        if negate or not self._fast(n):  # the identity and factors outside [1/2, 1): the primitives
            return self.kick(self.damp(V, g), c, f)
        s = fp.dither(self.n_mul, self.k)
        self.n_mul += 1
        scale = c * 2.0**self.R
        if self.buffer is None:
            W, peak_inc, peak_v = self.kern.damp_kick_only(V, n, s, self.k, f, scale)
        else:
            self.buffer.reserve(2)
            buf = self.buffer
            W, buf.word, peak_inc, peak_v, total = self.kern.damp_kick2(V, buf.word, n, s, self.k, f, scale)
            self.known.sums(W, total)
        self.guard.record(peak_inc, peak_v)
        return W

    def damp_kick_drift(self, X, V, g, c, f, h):
        """:meth:`damp_kick` then :meth:`drift`, as one kernel on the fast path (same bits)."""
        n, negate = self._factor(g)
        if negate or not self._fast(n) or self.buffer is None:
            V = self.damp_kick(V, g, c, f)
            return self.drift(X, h, V), V
        s = fp.dither(self.n_mul, self.k)
        self.n_mul += 1
        buf = self.buffer
        buf.reserve(2)
        X, V, buf.word, x, *flags, sum_x, sum_v = self.kern.damp_kick_drift2(
            X, V, buf.word, n, s, self.k, f, c * 2.0**self.R, h, self.dtype, 2.0**-self.R
        )
        self.guard.record(*flags)
        self.known.decoded(X, x)
        self.known.sums(X, sum_x, V, sum_v)
        return X, V

    def unkick_undamp(self, W, c, f, g):
        """The inverse of :meth:`damp_kick`, as one kernel on the fast path."""
        n, negate = self._factor(g)
        if negate or not self._fast(n):  # the identity and factors outside [1/2, 1): the primitives
            return self.undamp(self.unkick(W, c, f), g)
        self.n_mul -= 1
        s = fp.dither(self.n_mul, self.k)
        buf = self.buffer
        V, buf.word, total = self.kern.unkick_undamp2(W, buf.word, n, s, self.k, f, c * 2.0**self.R)
        buf.unreserve()
        self.known.sums(V, total)
        return V

    def drift(self, X, h, V):
        X, x, peak_inc, peak_x, sum_x, sum_v = self.kern.drift_decode(X, V, h, self.dtype, 2.0**-self.R)
        self.guard.record(peak_inc, peak_x)
        self.known.decoded(X, x)
        self.known.sums(X, sum_x, V, sum_v)
        return X

    def undrift(self, X, h, V):
        X, x, sum_x, sum_v = self.kern.undrift_decode(X, V, h, self.dtype, 2.0**-self.R)
        self.known.decoded(X, x)
        self.known.sums(X, sum_x, V, sum_v)
        return X

    def checksum(self, X, V):
        """``3 sum(X) + sum(V)`` modulo 2^64, from the sums the fused kernels returned where they did."""
        sum_x, sum_v = self.known.sum_of(X), self.known.sum_of(V)
        if sum_x is None or sum_v is None:
            return self.kern.checksum(X, V)
        return (3 * sum_x + sum_v + 2**63) % 2**64 - 2**63


class _Known:
    """By-products of the fused kernels, looked up by tensor identity: the last decoded state (handed out
    once: a residual function may then modify it) and the integer sums of the last few states."""

    def __init__(self):
        self._decoded: tuple | None = None
        self._sums: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor, sum), the last few, oldest first

    def decoded(self, X: torch.Tensor, x: torch.Tensor) -> None:
        self._decoded = (X, x)

    def take_decoded(self, X: torch.Tensor) -> torch.Tensor | None:
        if self._decoded is not None and self._decoded[0] is X:
            x, self._decoded = self._decoded[1], None
            return x
        return None

    def sums(self, t: torch.Tensor, total: int | None, u: torch.Tensor | None = None,
             total_u: int | None = None) -> None:
        """Remember the sums of ``t`` and ``u`` (a sum of None: not known)."""
        known = self._sums
        for tensor, value in ((t, total), (u, total_u)):
            if value is not None:
                known.pop(id(tensor), None)  # re-inserted: newest last
                known[id(tensor)] = (tensor, value)
        while len(known) > 4:
            del known[next(iter(known))]

    def sum_of(self, t: torch.Tensor) -> int | None:
        entry = self._sums.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def clear(self) -> None:
        self._decoded, self._sums = None, {}


class _RangeGuard:
    """Collects, per step, the largest magnitude of the values that must stay below ``2^62``; checked once.

    Every increment (before its cast to int64: nan and inf fail), every velocity after a kick and every
    position after a drift is checked, so no sum of two checked values can wrap past ``2^63``. Peaks that
    are tensors stay on the device and are compared once, after the forward; peaks that are Python floats
    (the native kernels) are compared as they come.
    """

    def __init__(self):
        self.peaks: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.step = 0
        self.first_bad_float: int | None = None

    def check(self, t: torch.Tensor) -> None:
        self.record(t.abs().amax().double())

    def record(self, *peaks) -> None:
        """Record already-reduced peaks (float64 0-dim tensors, or floats) of the current step."""
        for peak in peaks:
            if isinstance(peak, float):
                if not peak < fp.RANGE and self.first_bad_float is None:
                    self.first_bad_float = self.step
                continue
            self.peaks.append(peak)
            self.steps.append(self.step)

    def first_bad_step(self) -> int | None:
        bad_steps = [] if self.first_bad_float is None else [self.first_bad_float]
        if self.peaks:
            bad = ~(torch.stack(self.peaks) < fp.RANGE)
            if bool(bad.any()):
                bad_steps.append(self.steps[int(bad.nonzero()[0, 0])])
        return min(bad_steps, default=None)


def _first_mismatch(got: list, want: list) -> int | None:
    """Last index where two lists of checksums (0-dim tensors or ints) differ; ``None`` if they agree."""
    if want and isinstance(want[0], torch.Tensor):
        bad = (torch.stack(got) != torch.stack(want)).nonzero()
        return int(bad[-1, 0]) if bad.numel() else None
    return max((i for i, (a, b) in enumerate(zip(got, want)) if a != b), default=None)


class FixedPointSystem:
    """State system of the exact mode: int64 fixed point, exact damping, checksums and a range guard."""

    def __init__(self, traj: Trajectory, options: ExactOptions):
        self.traj = traj
        self.options = options
        self.R, self.k = options.frac_bits, options.gamma_bits
        self.kern = None  # chosen for the state's device by encode()
        self.dtype: torch.dtype | None = None
        self.guard = _RangeGuard()
        self.buffer: fp.BitBuffer | None = None
        self.checksums: list = []
        self._ops: FixedPointArithmetic | None = None
        self.known = _Known()

    def encode(self, x0, v0):
        self.dtype = x0.dtype
        self.kern = fpk.select(self.options.kernels, x0.device)
        limit = 2.0 ** (fp.RANGE_BITS - self.R)
        for name, t in (("x0", x0), ("v0", v0)):
            big = float(t.detach().abs().max()) if t.numel() else 0.0
            if math.isnan(big) or math.isinf(big):
                raise FixedPointRangeError(
                    f"`{name}` contains nan or inf: the exact mode holds the state as fixed-point integers and "
                    "needs finite values. Find where the non-finite input comes from (e.g. "
                    "torch.isfinite(x).all()) before the layer."
                )
            if not big < limit:
                raise FixedPointRangeError(
                    f"`{name}` has entries of magnitude {big:.4g}, outside the exact mode's range |x| < "
                    f"2^(62 - frac_bits) = {limit:g}. Normalise the input or lower `frac_bits` in "
                    "gradient_options."
                )
        # Row-major, whatever the input's layout (channels_last, a transpose): every kernel implementation then
        # hands the residual functions the same layout, and convolutions and matmuls round the same way.
        return fp.encode(x0.detach().contiguous(), self.R), fp.encode(v0.detach().contiguous(), self.R)

    def decode(self, X):
        x = self.known.take_decoded(X)
        return self.kern.decode(X, 2.0**-self.R, self.dtype) if x is None else x

    def _arithmetic(self, buffer, guard):
        return FixedPointArithmetic(self.R, self.k, buffer, guard, self.kern, self.dtype, self.known)

    def training_ops(self, V):
        self.buffer = fp.BitBuffer(V)
        self._ops = self._arithmetic(self.buffer, self.guard)
        return self._ops

    def inference_ops(self):
        return self._arithmetic(None, self.guard)

    def on_step(self, n, X, V):
        self.guard.step = n
        if n < self.traj.n_steps and self._ops is not None:
            self.checksums.append(self._ops.checksum(X, V))

    def end_forward(self):
        self.known.clear()  # holds states: the autograd context must not keep them alive
        bad = self.guard.first_bad_step()
        self.guard = _RangeGuard()
        if bad is not None:
            raise FixedPointRangeError(
                f"step {bad} left the exact mode's fixed-point range: a state or a residual increment exceeded "
                f"2^(62 - frac_bits) = {2.0 ** (fp.RANGE_BITS - self.R):g} in magnitude (or was nan/inf). "
                "Normalise the residual functions' outputs, or lower `frac_bits` in gradient_options."
            )

    def tensors_to_save(self, x0, v0):
        # Only the buffer: the reconstructed (X_0, V_0) are checked against the forward's checksum of step 0,
        # so the inputs need not be kept (for a shallow stack they would cost more than the buffer).
        self.n_mul = self._ops.n_mul
        self._spill_at, self._pushes = list(self.buffer.spill_at), self.buffer.pushes
        self._bound = self.buffer._bound_bits
        words = self.buffer.packed_words()
        self.buffer = None  # the words now live in the autograd context
        return words

    def start_backward(self, saved):
        buffer = fp.BitBuffer.__new__(fp.BitBuffer)
        saved = fp.BitBuffer.unpack_words(list(saved))
        buffer.word, buffer.stack = saved[-1], saved[:-1]
        buffer.spill_at, buffer.pushes, buffer._bound_bits = list(self._spill_at), self._pushes, self._bound
        ops = self._arithmetic(buffer, _RangeGuard())
        ops.n_mul = self.n_mul
        return _ExactReverse(self, ops)


class _ExactReverse:
    def __init__(self, system: FixedPointSystem, ops: FixedPointArithmetic):
        self.system, self.ops = system, ops
        self.checksums: list[torch.Tensor] = []

    def after_inverse(self, n, X, V):
        self.checksums.append(self.ops.checksum(X, V))
        return X, V

    def finish(self, X, V):
        system = self.system
        system.known.clear()
        n = _first_mismatch(self.checksums[::-1], system.checksums)  # the last: the backward meets it first
        if n is not None:
            raise ExactReversalError(
                f"exact reversal mismatch at step {n} (layer {n} of a MomentumResNet): the recomputed residual "
                "differs from the forward's. Something changed between forward and backward: a parameter "
                "modified in place, dropout or other randomness not replayed, or a nondeterministic kernel "
                "(use torch.use_deterministic_algorithms(True)), or a torch.compile'd residual that ran "
                "eagerly in the backward (Dynamo's recompile limit is shared by all compiled modules). The "
                "gradients would be wrong, so none are returned."
            )
        internal_assert(self.ops.buffer.is_empty(), "the bit buffer is empty after an exact reversal")
        internal_assert(self.ops.n_mul == 0, "every exact multiply was undone")


__all__ = [
    "AutoOptions",
    "ExactOptions",
    "ExactReversalError",
    "FixedPointArithmetic",
    "FixedPointRangeError",
    "QuantisedFloat",
    "effective_gamma",
    "solve_auto",
    "solve_exact",
]
