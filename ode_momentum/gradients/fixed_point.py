"""Exact integer arithmetic for bit-exact reversal: fixed point, an exact rational multiply, a bit buffer.

The state lives in int64 with ``R`` fractional bits (value ``X / 2^R``). Additive updates ("shears": a
kick by a function of ``x``, a drift by a function of ``v``) are exact in integers: the added amount is a
deterministic function of the other variable, recomputed identically in reverse. Only a multiplication of
the velocity by the damping factor ``g' = n / 2^k`` loses information; :func:`exact_mul` says exactly which
of the ``m`` inputs that share the rounded output was taken (``j in [0, m)``), and :class:`BitBuffer` stores
``j`` in mixed radix, ``B <- B m + j``. With ``g' >= 1/2`` at most one bit per element per multiply is
stored, ``2 (1 - g')`` bits on average for random low bits; expanding factors (``g' > 1``) store nothing.

Floor semantics throughout (arithmetic shifts, ``rounding_mode="floor"``): truncating division paired with
a floor modulo is not invertible for negative values, the bug of the reference package.

References
----------
Maclaurin, Duvenaud, Adams, "Gradient-based hyperparameter optimization through reversible learning",
ICML 2015 (exact multiply and information buffer); MacKay et al., NeurIPS 2018 (spilling buffer words);
``reference/exact_reversal.md`` section 6 (this "floor" variant).
"""

from __future__ import annotations

import math

import torch

# |X|, |V| and every added amount stay below 2^62, so the sum of two never wraps past int64's 2^63.
RANGE_BITS = 62
RANGE = float(2**RANGE_BITS)


def quantise(g: float, gamma_bits: int) -> int:
    """Numerator ``n`` of the dyadic damping factor ``n / 2^gamma_bits`` closest to ``g``.

    Raises
    ------
    ValueError
        If ``g`` rounds to 0 (the step forgets the velocity and cannot be reversed) or if ``n`` is so large
        that ``n * 2^gamma_bits`` would overflow int64 (an expanding factor above ``2^(62 - 2 k)``).
    """
    n = round(g * 2**gamma_bits)
    if n <= 0:
        raise ValueError(
            f"the damping factor {g!r} rounds to 0 at gamma_bits = {gamma_bits}: the step forgets the velocity "
            "and cannot be reversed exactly. Use a larger gamma (or eps / smaller step), or gradient='backprop'."
        )
    if n >= 2 ** (RANGE_BITS - gamma_bits):
        raise ValueError(
            f"the damping factor {g!r} is too large for exact arithmetic at gamma_bits = {gamma_bits} "
            f"(at most {2.0 ** (RANGE_BITS - 2 * gamma_bits):g}); use a smaller step."
        )
    return n


def encode(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """``round(x * 2^R)`` as int64 (computed in float64). The caller checks the range first."""
    return torch.round(x.double() * 2.0**frac_bits).long()


def decode(X: torch.Tensor, frac_bits: int, dtype: torch.dtype) -> torch.Tensor:
    """``X / 2^R`` in ``dtype`` (see :func:`decode_scaled`)."""
    return decode_scaled(X, 2.0**-frac_bits, dtype)


def decode_scaled(X: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``X scale`` in ``dtype`` for a power-of-two ``scale``: in float32 and float64 one rounding of ``X`` then
    an exact scaling; narrower floats go through float64 first, since ``X`` itself (about ``|x| 2^R``) would
    overflow float16."""
    if dtype in (torch.float32, torch.float64):
        return X.to(dtype) * scale
    return (X.double() * scale).to(dtype)


def scaled(t: torch.Tensor, c: float, frac_bits: int) -> torch.Tensor:
    """``c * t * 2^R`` in float64, before rounding to an integer increment."""
    return t.double() * (c * 2.0**frac_bits)


def dither(index: int, k: int) -> int:
    """Offset ``s in [0, 2^k)`` of the ``index``-th multiply of a solve (golden-ratio sequence).

    Rounding ``(V n + s) / 2^k`` instead of ``V n / 2^k`` moves the block boundaries from one multiply to the
    next, so values with structured low bits (an exact zero velocity, say) cost the average
    ``~2 (1 - g')`` bits instead of one bit every time. It changes the result by at most one unit in the
    last place and depends only on ``index``: the forward value never depends on the buffer.
    """
    return (((index + 1) * 0x9E3779B97F4A7C15) % 2**64) >> (64 - k)


def _floor_divmod(num: torch.Tensor, n: int):
    """``(num // n, num % n)`` with floor semantics, for int64 ``num`` and ``2^12 <= n < 2^32``.

    Integer division is an order of magnitude slower than float on CPUs, so the quotient is estimated in
    float64 and corrected: with ``|num| < 2^63`` and ``n >= 2^12`` the estimate is off by at most one.
    """
    q = torch.floor(num.double() / n).long()
    r = num - q * n
    low, high = r < 0, r >= n
    return q - low.long() + high.long(), r + n * low.long() - n * high.long()


def _small_div(r: torch.Tensor, n: int) -> torch.Tensor:
    """``r // n`` for ``0 <= r < 2^53``, exact through float64 (the quotient cannot round across an integer)."""
    return torch.floor(r.double() / n).long()


def _block_of(r: torch.Tensor, n: int, k: int):
    """Position ``j`` of an input within its block and the block's size ``m``, from the rounding remainder.

    ``r = (V n + s) mod 2^k``; the inputs ``V - i`` with ``r - i n >= 0`` and ``V + i`` with
    ``r + i n < 2^k`` round to the same output, so ``j = floor(r / n)`` and
    ``m = j + 1 + floor((2^k - 1 - r) / n)``.
    """
    j = _small_div(r, n)
    return j, j + 1 + _small_div(((1 << k) - 1) - r, n)


def exact_mul(V: torch.Tensor, n: int, k: int, s: int = 0):
    """``W = floor((V n + s) / 2^k)`` and what it forgot: ``(W, j, m)`` with ``0 <= j < m``.

    ``m`` is the number of inputs that round to ``W`` (1 or 2 when ``n / 2^k >= 1/2``; 1 when expanding) and
    ``j`` the position of ``V`` among them. Split ``V = Vh 2^k + Vl`` so that no product exceeds ``2^(2k+1)``.
    For ``n >= 2^(k-1)`` (every damping factor ``>= 1/2``) ``j = [r >= n]`` and ``m = 2`` exactly when
    ``r >= n`` or ``r < 2^k - n`` (``r`` the remainder of the rounding): no division at all.
    """
    mask = (1 << k) - 1
    P = (V & mask) * n + s
    W = (V >> k) * n + (P >> k)
    r = P & mask
    if 2 * n >= 1 << k and n < 1 << k:
        upper = r >= n
        return W, upper.long(), 1 + (upper | (r < (1 << k) - n)).long()
    j, m = _block_of(r, n, k)
    return W, j, m


def exact_div(W: torch.Tensor, n: int, k: int, s: int, pop):
    """Inverse of :func:`exact_mul`: ``pop(m, m_max)`` returns the stored ``j`` for the block sizes ``m``.

    The block of ``W = a n + b`` (``0 <= b < n``) starts at ``lo = a 2^k + ceil((b 2^k - s) / n)``.
    """
    mask = (1 << k) - 1
    if n < 1 << 12:  # the float estimates below need n >= 2^12 (gamma >= 2^-18 at k = 30)
        a = torch.div(W, n, rounding_mode="floor")
        b = W - a * n
        lo = (a << k) - torch.div(s - b * (1 << k), n, rounding_mode="floor")
    else:
        a, b = _floor_divmod(W, n)
        # ceil((b 2^k - s) / n) = -floor((s - b 2^k) / n); the numerator lies in (-2^(2k), 2^k)
        lo = (a << k) - _floor_divmod(s - b * (1 << k), n)[0]
    r = ((lo & mask) * n + s) & mask  # the rounding remainder of lo, the block's first input
    if 2 * n >= 1 << k and n < 1 << k:
        m = 1 + (r < (1 << k) - n).long()
    else:
        m = _block_of(r, n, k)[1]
    return lo + pop(m, max_block(n, k))


def max_block(n: int, k: int) -> int:
    """Largest ``m`` :func:`exact_mul` can produce for the factor ``n / 2^k``."""
    return max(1, -(-(1 << k) // n))


class BitBuffer:
    """Per-element mixed-radix store of the bits the exact multiplies forget, with spilling to a stack.

    One int64 word per element; ``push(j, m)`` does ``B <- B m + j``. Before a push that might overflow,
    the word is checked (one host synchronisation, skipped while a running bound proves it unnecessary) and,
    if full, moved whole onto the stack and restarted at 0 (lockstep spilling, one flag per push).
    ``pop(m)`` undoes ``push`` in reverse order and restores spilled words at their flags.

    A buffer is never modified in place: ``copy()`` is enough to replay it twice.
    """

    def __init__(self, like: torch.Tensor):
        self.word = torch.zeros_like(like, dtype=torch.int64)
        self.stack: list[torch.Tensor] = []
        self.spill_at: list[int] = []
        self.pushes = 0
        self._bound_bits = 0.0  # upper bound of log2(max word + 1)

    def copy(self) -> "BitBuffer":
        new = BitBuffer.__new__(BitBuffer)
        new.word, new.stack, new.spill_at = self.word, list(self.stack), list(self.spill_at)
        new.pushes, new._bound_bits = self.pushes, self._bound_bits
        return new

    def reserve(self, m_max: int) -> None:
        """Make room for one push of radix at most ``m_max``: spill the word first if it could overflow.

        The word itself is then updated by the caller (:meth:`push`, or a kernel of ``fixed_point_kernels``).
        """
        if m_max > 1:
            if self._bound_bits + math.log2(m_max) > 62.0:
                top = int(self.word.max()) if self.word.numel() else 0
                if top >= (2**63 - 1) // m_max:
                    self.stack.append(self.word)
                    self.spill_at.append(self.pushes)
                    self.word = torch.zeros_like(self.word)
                    top = 0
                self._bound_bits = math.log2(top + 1)
            self._bound_bits += math.log2(m_max)
        self.pushes += 1

    def unreserve(self) -> None:
        """Undo :meth:`reserve` after the word was popped: restore a spilled word at its flag."""
        self.pushes -= 1
        if self.spill_at and self.spill_at[-1] == self.pushes:
            self.spill_at.pop()
            self.word = self.stack.pop()

    def push(self, j: torch.Tensor, m: torch.Tensor, m_max: int) -> None:
        self.reserve(m_max)
        if m_max == 2:  # one bit where the block has two inputs (every damping factor >= 1/2)
            self.word = torch.where(m == 2, (self.word << 1) | j, self.word)
        elif m_max > 2:
            self.word = self.word * m + j

    def pop(self, m: torch.Tensor, m_max: int) -> torch.Tensor:
        if m_max == 1:
            j = torch.zeros_like(self.word)
        elif m_max == 2:
            two = m == 2
            j = torch.where(two, self.word & 1, 0)
            self.word = torch.where(two, self.word >> 1, self.word)
        else:
            j = torch.remainder(self.word, m)
            self.word = torch.div(self.word, m, rounding_mode="floor")
        self.unreserve()
        return j

    def is_empty(self) -> bool:
        return self.pushes == 0 and not self.stack and not bool(self.word.any())

    def words(self) -> list[torch.Tensor]:
        """Every stored word (spilled first), for saving and for measuring the cost."""
        return [*self.stack, self.word]

    def packed_words(self) -> list[torch.Tensor]:
        """:meth:`words` with the current word in the narrowest integer dtype that holds its largest entry
        (a shallow or lightly damped stack fills a few bits of it: int8 up to 7, int16 up to 15, int32 up to
        31). Where the running bound fits int8, no host synchronisation; otherwise one, per forward, reads
        the largest entry. Undo with :meth:`unpack_words`."""
        if self._bound_bits <= 7:
            return [*self.stack, self.word.to(torch.int8)]
        top = int(self.word.max()) if self.word.numel() else 0
        for dtype, bits in ((torch.int8, 7), (torch.int16, 15), (torch.int32, 31)):
            if top < 2**bits:
                return [*self.stack, self.word.to(dtype)]
        return self.words()

    @staticmethod
    def unpack_words(words: list[torch.Tensor]) -> list[torch.Tensor]:
        return [*words[:-1], words[-1].long()] if words else words

    def bits_per_element(self) -> dict:
        """``used``: 64 per spilled word plus ``log2(word + 1)`` averaged over elements; ``allocated``: 64 per
        word held."""
        used = 64.0 * len(self.stack) + float(torch.log2(self.word.double() + 1).mean()) if self.word.numel() else 0.0
        return {"used": used, "allocated": 64.0 * (len(self.stack) + 1)}
