"""Linear theory of the momentum ODE: which matrices the flow of ``eps x'' + x' = A x`` reaches.

For ``F(x) = A x`` the solution of ``eps x'' + x' = A x``, ``x(0) = x0``, ``x'(0) = v0`` is
``x(t) = psi(A) x0 + phi(A) v0`` with the scalar kernels, for ``s = sqrt(1 + 4 eps lam)`` and
``a = t / (2 eps)``,

    psi(lam) = e^{-a} [cosh(a s) + sinh(a s) / s],        phi(lam) = t e^{-a} sinh(a s) / (a s),

both entire functions of ``lam`` (they depend on ``s`` only through ``s^2``). A first-order flow (``eps = 0``)
reaches ``exp(A)``: exactly the matrices with a real logarithm (Culver 1966). A momentum flow reaches every real
matrix up to a positive factor, because ``psi(., eps)`` takes negative values on the real axis down to
``min_reachable(eps)`` (Sander et al., ICML 2021, "Representation capabilities", linear residual functions).

Contents: the kernels (:func:`psi`, :func:`phi`, :func:`psi_matrix`), the real range of ``psi``
(:func:`min_reachable`, :func:`first_zero`), the two representability criteria (:func:`has_real_logarithm`,
:func:`representable`), and a verification path through the project's own integrators and training
(:func:`integrate_psi_matrix`, :func:`fit_linear_flow`).

Everything here computes in float64 (complex128) with NumPy/SciPy; tensors are accepted and returned, but no
gradient flows through these functions.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from .._checks import _show, check_eps, check_positive_int, check_real, internal_assert

__all__ = [
    "LinearFit",
    "MinReachable",
    "RealLogarithm",
    "Representability",
    "fit_linear_flow",
    "first_zero",
    "has_real_logarithm",
    "integrate_psi_matrix",
    "min_reachable",
    "phi",
    "psi",
    "psi_matrix",
    "representable",
]

# ---------------------------------------------------------------------------------------------- tolerances

# Eigenvalues of a matrix closer than CLUSTER_RTOL * ||D||_2 are treated as one eigenvalue split by rounding.
# Rounding of size u * kappa (u = 2^-53, kappa the condition number of the similarity) splits a Jordan block of
# size k into eigenvalues about (u * kappa)^(1/k) * ||D||_2 apart: 1e-8 for k = 2, 5e-6 for k = 3. 1e-5 keeps
# blocks up to size 3 in one cluster. A cluster that turns out not to be one eigenvalue (see RANK_RTOL) is split
# again with a tolerance ten times smaller, down to singletons.
CLUSTER_RTOL = 1e-5

# Singular values of (T_c - c I)^k below RANK_RTOL * ||D||_2^k count as zero when reading the Jordan structure
# of a cluster with centre c off its triangular block T_c. Rounding leaves about u * kappa there (1e-16 for a
# well-conditioned D), so sqrt(u) ~ 1e-8 leaves a margin of 1e8 for kappa while still resolving Jordan couplings
# down to 1e-8 * ||D||_2. Eigenvalues within RANK_RTOL * ||D||_2 of zero count as zero (D singular).
RANK_RTOL = 1e-8

# alpha may exceed max_scale by this relative amount and still be treated as alpha = max_scale (so that
# `preimage(result.max_scale)` works after rounding).
ALPHA_RTOL = 1e-12

# A computed preimage A is accepted when ||psi_matrix(A) - alpha D||_F <= PREIMAGE_RTOL * ||alpha D||_F. The
# construction reaches about 1e-14 on well-conditioned inputs; 1e-9 flags ill-conditioning (eigenvalues close to
# the branch point of psi^-1, an ill-conditioned eigenbasis) instead of returning a poor matrix silently.
PREIMAGE_RTOL = 1e-9

_U = np.finfo(np.float64).eps / 2  # unit roundoff 2^-53

# psi and phi need s^2 = 1 + 4 eps lam in float64 (max about 1.8e308); larger products are refused.
_MAX_PRODUCT = 1e300


# ---------------------------------------------------------------------------------------------- input handling


def _lam_array(lam) -> tuple[np.ndarray, object]:
    """``lam`` as a float64 or complex128 array, and a recipe to return results in the caller's type."""
    if isinstance(lam, torch.Tensor):
        if lam.dtype == torch.bool:
            raise TypeError(f"`lam` must be a real or complex tensor; got {_show(lam)}.")
        arr = lam.detach().cpu().numpy()
        if lam.is_complex():
            out_dtype = lam.dtype
        elif lam.is_floating_point():
            out_dtype = lam.dtype
        else:
            out_dtype = torch.float64
        like = ("tensor", lam.device, out_dtype)
    elif isinstance(lam, np.ndarray) or isinstance(lam, (list, tuple)):
        arr = np.asarray(lam)
        like = ("array", None, None)
    elif isinstance(lam, numbers.Number) and not isinstance(lam, bool):
        arr = np.asarray(lam)
        like = ("scalar", None, None)
    else:
        raise TypeError(
            f"`lam` must be a number, a NumPy array or a torch.Tensor of real or complex values; got {_show(lam)}."
        )
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"`lam` must hold real or complex numbers; got an array of dtype {arr.dtype}.")
    arr = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`lam` has {int(np.sum(~np.isfinite(arr)))} non-finite entries (nan or inf).")
    return arr, like


def _return_like(values: np.ndarray, like):
    kind, device, dtype = like
    if kind == "tensor":
        if not dtype.is_complex and np.iscomplexobj(values):
            dtype = torch.complex128
        return torch.from_numpy(np.ascontiguousarray(values)).to(device=device, dtype=dtype)
    if kind == "scalar":
        return values[()]
    return values


def _check_t(t) -> float:
    t = check_real("t", t)
    if t < 0:
        raise ValueError(f"`t` must be >= 0 (the flow runs forward in time); got {t!r}.")
    return t


def _matrix(name: str, value, *, real: bool) -> np.ndarray:
    """A square 2-D float64 (or complex128) matrix from an array or tensor, validated."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
    elif isinstance(value, (np.ndarray, list, tuple)):
        arr = np.asarray(value)
    else:
        raise TypeError(f"`{name}` must be a square matrix (NumPy array or torch.Tensor); got {_show(value)}.")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"`{name}` must hold numbers; got dtype {arr.dtype}.")
    if real and np.iscomplexobj(arr):
        raise TypeError(
            f"`{name}` must be a real matrix; got dtype {arr.dtype}. Representability is a question about real "
            "matrices (a complex matrix always has a complex logarithm)."
        )
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty square 2-D matrix; got shape {arr.shape}.")
    arr = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` has {int(np.sum(~np.isfinite(arr)))} non-finite entries (nan or inf).")
    return arr


# ---------------------------------------------------------------------------------------------- double-double
# Error-free transformations (Dekker 1971, Knuth TAOCP vol. 2): the oscillatory branch of psi needs its phase
# theta = a sigma to about 1e-16 *absolute* accuracy, where plain float64 gives 1e-16 relative (1e-13 absolute at
# theta ~ 3000, eps = 1e-3, lam = -1e4), which near a zero of psi becomes a large relative error of psi.

_SPLITTER = 134217729.0  # 2^27 + 1


def _two_sum(a, b):
    """``s + e = a + b`` exactly, ``s = fl(a + b)``."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a):
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    """``p + e = a * b`` exactly, ``p = fl(a * b)`` (Dekker); ``e = 0`` where splitting overflows (|a| > 1e300)."""
    p = a * b
    with np.errstate(over="ignore", invalid="ignore"):
        a_hi, a_lo = _split(a)
        b_hi, b_lo = _split(b)
        e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, np.where(np.isfinite(e), e, 0.0)


# ---------------------------------------------------------------------------------------------- scalar kernels


def _kernels_real(lam: np.ndarray, eps: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    """psi and phi for real lam (float64 arrays), eps > 0."""
    a = t / (2.0 * eps)
    # s^2 = 1 + 4 eps lam with the product kept exactly: near the critical point 4 eps lam = -1 the sum cancels.
    p_hi, p_lo = _two_prod(4.0 * eps, lam)
    q_hi, q_err = _two_sum(1.0, p_hi)
    q_lo = q_err + p_lo
    q = q_hi + q_lo  # s^2, correct to about u * max(1, |4 eps lam|) absolutely
    psi_out = np.empty_like(lam)
    phi_out = np.empty_like(lam)

    # Over-damped and critical side, s = sqrt(q) >= 0 real: the shifted forms
    #   psi = e^{E} [(1 + e^{-2u}) / 2 + (1 - e^{-2u}) / (2 s)],  phi = t e^{E} (1 - e^{-2u}) / (2u),
    # u = a s, E = u - a = a (s - 1) = 2 t lam / (1 + s) (the second form has no cancellation for s near 1; the
    # first is used for s < 1/2 so that the result stays an exact even function of the computed s).
    real = q >= 0
    if np.any(real):
        lr, qr = lam[real], q[real]
        s = np.sqrt(qr)
        u = a * s
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            expo = np.where(s >= 0.5, 2.0 * t * lr / (1.0 + s), u - a)
            em = np.exp(-2.0 * u)  # in [0, 1]
            one_minus = -np.expm1(-2.0 * u)  # 1 - e^{-2u}, accurate for small u
            sterm = np.where(s > 0, one_minus / np.where(s > 0, 2.0 * s, 1.0), a)  # sinh(u) e^{-u} / s -> a
            g = np.where(u > 0, one_minus / np.where(u > 0, 2.0 * u, 1.0), 1.0)  # sinh(u) e^{-u} / u -> 1
            scale = np.exp(expo)
            psi_out[real] = scale * (0.5 * (1.0 + em) + sterm)
            phi_out[real] = t * scale * g

    # Under-damped side, s = i sigma: psi = e^{-a} [cos(theta) + sin(theta) / sigma], phi = t e^{-a} sin(theta) /
    # theta, theta = a sigma, with theta carried in double-double and e^{-a} corrected for the rounding of a.
    osc = ~real
    if np.any(osc):
        q_h, q_l = -q_hi[osc], -q_lo[osc]  # sigma^2 = -(1 + 4 eps lam) > 0
        q_h, q_l = _two_sum(q_h, q_l)
        sig = np.sqrt(q_h)
        sq_hi, sq_lo = _two_prod(sig, sig)
        sig_lo = ((q_h - sq_hi) - sq_lo + q_l) / (2.0 * sig)
        a_hi = a
        pa_hi, pa_lo = _two_prod(a_hi, 2.0 * eps)
        a_lo = ((t - pa_hi) - pa_lo) / (2.0 * eps)
        th_hi, th_lo = _two_prod(a_hi, sig)
        th_lo = th_lo + (a_hi * sig_lo + a_lo * sig)
        th_hi, th_lo = _two_sum(th_hi, th_lo)
        c_hi, s_hi, c_lo, s_lo = np.cos(th_hi), np.sin(th_hi), np.cos(th_lo), np.sin(th_lo)
        cos_t = c_hi * c_lo - s_hi * s_lo  # angle addition: exact for any size of th_lo
        sin_t = s_hi * c_lo + c_hi * s_lo
        sig_full = sig + sig_lo
        with np.errstate(under="ignore"):
            env = np.exp(-a_hi) * (1.0 - a_lo)
            sinc = np.where(th_hi > 0, sin_t / np.where(th_hi > 0, th_hi + th_lo, 1.0), 1.0)
            sin_over_sig = np.where(sig_full > 0, sin_t / np.where(sig_full > 0, sig_full, 1.0), a)
            psi_out[osc] = env * (cos_t + sin_over_sig)
            phi_out[osc] = t * env * sinc
    return psi_out, phi_out


def _kernels_complex(lam: np.ndarray, eps: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    """psi and phi for complex lam (complex128 arrays), eps > 0, principal sqrt (Re s >= 0)."""
    a = t / (2.0 * eps)
    s = np.sqrt(1.0 + 4.0 * eps * lam)
    u = a * s
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        expo = np.where(np.abs(s) >= 0.5, 2.0 * t * lam / (1.0 + s), u - a)
        em = np.exp(-2.0 * u)  # |e^{-2u}| <= 1 since Re u >= 0
        one_minus = -np.expm1(-2.0 * u)
        nz_s, nz_u = s != 0, u != 0
        sterm = np.where(nz_s, one_minus / np.where(nz_s, 2.0 * s, 1.0), a)
        g = np.where(nz_u, one_minus / np.where(nz_u, 2.0 * u, 1.0), 1.0)
        scale = np.exp(expo)
        return scale * (0.5 * (1.0 + em) + sterm), t * scale * g


def _kernels(lam: np.ndarray, eps: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    shape = lam.shape
    psi_v, phi_v = _kernels_flat(lam.reshape(-1), eps, t)
    return psi_v.reshape(shape), phi_v.reshape(shape)


def _kernels_flat(lam: np.ndarray, eps: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    if eps == 0.0:
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(lam * t), np.zeros_like(lam)
    product = 4.0 * eps * float(np.max(np.abs(lam))) if lam.size else 0.0  # Python floats: inf, no warning
    if product > _MAX_PRODUCT:
        raise ValueError(
            f"`lam` and `eps` are outside the supported range: 4 eps |lam| = {product:.3g} "
            f"exceeds {_MAX_PRODUCT:g}, near where 1 + 4 eps lam overflows float64."
        )
    if not np.iscomplexobj(lam):
        return _kernels_real(lam, eps, t)
    psi_c, phi_c = _kernels_complex(lam, eps, t)
    on_axis = lam.imag == 0
    if np.any(on_axis):  # real arguments take the real path (double-double phase), so psi(-5 + 0j) == psi(-5)
        psi_r, phi_r = _kernels_real(lam.real[on_axis], eps, t)
        psi_c[on_axis], phi_c[on_axis] = psi_r, phi_r
    return psi_c, phi_c


def psi(lam, eps: float, t: float = 1.0):
    r"""Position kernel of the linear momentum flow: ``x(t) = psi x0`` for ``eps x'' + x' = lam x``, ``x'(0) = 0``.

    With ``s = sqrt(1 + 4 eps lam)`` and ``a = t / (2 eps)``,

    .. math:: \psi_\varepsilon(\lambda, t) = e^{-a} \left[\cosh(a s) + \frac{\sinh(a s)}{s}\right],

    an entire function of ``lam`` (even in ``s``). ``eps = 0`` gives ``exp(lam t)``; as ``eps -> 0``,
    ``psi = exp(lam t) (1 - eps lam (1 + lam t)) + O(eps^2)``. ``psi(lam t, eps / t, 1) = psi(lam, eps, t)``.

    Evaluated without overflow or cancellation: the growing exponential is factored out
    (``e^{-a} cosh(a s) = e^{a(s-1)} (1 + e^{-2as}) / 2`` with ``a (s - 1) = 2 t lam / (1 + s)``), ``expm1``
    keeps ``sinh(u) / u`` accurate near the critical point ``s = 0``, and for real ``lam`` the product
    ``4 eps lam`` and the oscillation phase ``a |s|`` are carried in double-double, so the relative error stays
    below about 1e-13 for ``eps`` in ``[1e-3, 1e3]`` and ``|lam| <= 1e4`` (larger only within about 1e-6 of a
    zero of ``psi``, where no float64 evaluation has small relative error). Values beyond the float64 range come
    back as ``inf`` (``lam t`` above about 709) or ``0`` (``t / (2 eps)`` above about 745).

    Parameters
    ----------
    lam : float, complex, array_like or Tensor
        Eigenvalue(s) of the force ``F(x) = lam x`` (units of 1/time); any shape, real or complex.
    eps : float
        Inertia ``eps >= 0`` (units of time).
    t : float
        Time ``>= 0`` (default 1, the horizon of the paper).

    Returns
    -------
    ndarray, scalar or Tensor
        ``psi`` with the shape of ``lam``: float64 for real ``lam``, complex128 for complex ``lam``; a tensor in
        the dtype (promoted to complex if needed) and device of a tensor ``lam``, computed in float64 and
        detached (no gradient).

    Raises
    ------
    TypeError
        If ``lam`` is not numeric (or boolean), or ``eps`` / ``t`` are not real numbers.
    ValueError
        If ``lam`` has nan/inf entries, ``eps < 0``, ``t < 0``, or ``4 eps |lam| > 1e300`` (where
        ``1 + 4 eps lam`` would overflow).

    References
    ----------
    Sander et al., ICML 2021, representation capabilities (``Psi_eps``); ``DESIGN.md`` section 2, "Linear theory".
    """
    arr, like = _lam_array(lam)
    eps, t = check_eps(eps), _check_t(t)
    return _return_like(_kernels(arr, eps, t)[0], like)


def phi(lam, eps: float, t: float = 1.0):
    r"""Velocity kernel of the linear momentum flow: ``x(t) = phi v0`` for ``eps x'' + x' = lam x``, ``x(0) = 0``.

    With ``s = sqrt(1 + 4 eps lam)`` and ``a = t / (2 eps)``,

    .. math:: \phi_\varepsilon(\lambda, t) = t\, e^{-a} \frac{\sinh(a s)}{a s} = \frac{2\varepsilon}{s} e^{-a}
        \sinh(a s),

    entire in ``lam``; ``phi = 0`` at ``eps = 0`` (a first-order flow forgets the initial velocity), and
    ``phi -> eps exp(lam t)`` as ``eps -> 0``. The full solution is ``x(t) = psi x0 + phi v0``. Evaluated with
    the same scaled forms and accuracy as :func:`psi`.

    Parameters
    ----------
    lam : float, complex, array_like or Tensor
        Eigenvalue(s) of the force ``F(x) = lam x`` (units of 1/time).
    eps : float
        Inertia ``eps >= 0`` (units of time).
    t : float
        Time ``>= 0`` (default 1).

    Returns
    -------
    ndarray, scalar or Tensor
        ``phi`` (units of time), shaped, typed and placed as in :func:`psi`.

    Raises
    ------
    TypeError, ValueError
        As :func:`psi`.

    References
    ----------
    Sander et al., ICML 2021, section 3 (the momentum ODE) and 4.2.
    """
    arr, like = _lam_array(lam)
    eps, t = check_eps(eps), _check_t(t)
    return _return_like(_kernels(arr, eps, t)[1], like)


# ---------------------------------------------------------------------------------------------- matrix kernel

# Below this damping-to-horizon ratio the small-eps route of psi_matrix is not used: its neglected term
# e^{-a (I + S)} is below e^{-1.7 a} <= 1e-29 relative at a = 40.
_SMALL_EPS_MIN_A = 40.0


def _psi_phi_matrix(A: np.ndarray, eps: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    """psi(A) and phi(A) for a validated square float64 / complex128 matrix."""
    n = A.shape[0]
    eye = np.eye(n, dtype=A.dtype)
    if eps == 0.0:
        return scipy.linalg.expm(t * A), np.zeros_like(A)
    a = t / (2.0 * eps)
    norm_a = np.linalg.norm(A, 2)
    if a >= _SMALL_EPS_MIN_A and 4.0 * eps * norm_a <= 0.5:
        # Singular-perturbation regime (eps small against the horizon and against 1/||A||): the block route below
        # loses about u * a (1e-9 at eps = 1e-8). Here S = sqrt(I + 4 eps A) is a well-conditioned square root
        # near I, the slow exponent R+ t = 2 t A (I + S)^{-1} = a (S - I) has no cancellation, and the fast term
        # e^{-a(I + S)} only matters through rounding:
        #   psi = (I + S)(2S)^{-1} e^{R+ t} + (S - I)(2S)^{-1} e^{-a(I + S)},
        #   phi = eps S^{-1} (e^{R+ t} - e^{-a(I + S)}).
        S = scipy.linalg.sqrtm(eye + 4.0 * eps * A)
        if not np.iscomplexobj(A):
            S = np.real(S)
        slow = scipy.linalg.expm(2.0 * t * np.linalg.solve((eye + S).T, A.T).T)
        fast = scipy.linalg.expm(-a * (eye + S))
        two_s = 2.0 * S
        psi_m = np.linalg.solve(two_s, (eye + S) @ slow + (S - eye) @ fast)
        phi_m = eps * np.linalg.solve(S, slow - fast)
        return psi_m, phi_m
    # General route: in the variables x and z = x + 2 eps x' the flow is exp(N) with
    #   N = -a I_{2n} + [[0, a I], [a I + 2 t A, 0]],   a = t / (2 eps),
    # a scalar shift (the mean damping, which carries the stiffness) plus a block whose square is
    # diag(a^2 I + 2 a t A) twice. expm's scaling and squaring then has no hump: the rounding error is about
    # u * ||N|| relative to ||psi||, not to e^{+a}-sized intermediates as with the first-order form
    # [[0, I], [A / eps, -I / eps]] (tested: 1e-12 against 1e-9 for eigenvalues near the critical -1 / (4 eps)).
    N = np.block([[-a * eye, a * eye], [a * eye + 2.0 * t * A, -a * eye]])
    E = scipy.linalg.expm(N)
    # x(t) = E11 x0 + E12 z0 with z0 = x0 + 2 eps v0: psi = E11 + E12, phi = 2 eps E12.
    return E[:n, :n] + E[:n, n:], (2.0 * eps) * E[:n, n:]


def psi_matrix(A, eps: float, t: float = 1.0):
    r"""The linear momentum flow map ``x0 -> x(t)`` of ``eps x'' + x' = A x`` from rest: ``Psi_eps(A)``.

    The primary matrix function of :func:`psi`: ``x(t) = psi_matrix(A) x0`` when ``x'(0) = 0``. Computed with
    ``scipy.linalg.expm`` in the variables ``x`` and ``z = x + 2 eps x'``, where the flow is
    ``exp(-a I + [[0, a I], [a I + 2 t A, 0]])`` with ``a = t / (2 eps)``: the stiff part of the damping is a
    scalar shift, so scaling and squaring stays accurate to about ``u ||N||`` relative to ``||psi(A)||``
    (``u = 2^-53``; about 1e-13 at ``eps = 1e-3``). For ``a >= 40`` and ``4 eps ||A||_2 <= 1/2`` (the
    singular-perturbation regime, where that bound degrades like ``u / eps``) the closed form
    ``(I + S)(2S)^{-1} exp(2 t A (I + S)^{-1})`` with ``S = sqrtm(I + 4 eps A)`` is used instead, accurate to
    about ``u`` times the condition of ``A``'s eigenbasis. ``eps = 0`` gives ``expm(t A)``.

    Parameters
    ----------
    A : array_like or Tensor, shape ``(n, n)``
        The linear force ``F(x) = A x``; real or complex.
    eps : float
        Inertia ``eps >= 0``.
    t : float
        Time ``>= 0`` (default 1).

    Returns
    -------
    ndarray or Tensor, shape ``(n, n)``
        ``Psi_eps(A)``: float64 (complex128 for complex ``A``); a tensor in the dtype and device of a tensor
        ``A`` (detached).

    Raises
    ------
    TypeError
        If ``A`` is not an array or tensor of numbers.
    ValueError
        If ``A`` is not square 2-D or has nan/inf entries, ``eps < 0`` or ``t < 0``.

    References
    ----------
    Sander et al., ICML 2021, representation capabilities; Higham, "Functions of Matrices", SIAM 2008,
    chapter 10 (scaling and squaring for the matrix exponential).
    """
    arr = _matrix("A", A, real=False)
    eps, t = check_eps(eps), _check_t(t)
    out = _psi_phi_matrix(arr, eps, t)[0]
    if isinstance(A, torch.Tensor):
        dtype = A.dtype if (A.is_floating_point() or A.is_complex()) else torch.float64
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=A.device, dtype=dtype)
    return out


# ---------------------------------------------------------------------------------------------- real range of psi
# On the real axis, for lam < -1/(4 eps), write sigma = sqrt(-1 - 4 eps lam) and theta = a sigma (t = 1, a = 1/(2 eps)):
#   psi = e^{-a} f(theta),  f(theta) = cos(theta) + a sin(theta) / theta,  lam = -1/(4 eps) - eps theta^2.
# f' = -sin(theta) + a (theta cos(theta) - sin(theta)) / theta^2 < 0 on (0, pi], so psi increases with lam from the
# first critical point theta_1 in (pi, 2 pi) (f'(pi) = -a/pi < 0 < f'(2 pi) = a/(2 pi)) to +inf, and its first zero
# theta_0 lies in (pi/2, pi) (f(pi/2) = 2a/pi > 0 > f(pi) = -1). Later minima are no deeper: the second is near
# 3 pi where |f| <= sqrt(1 + a^2/theta^2) is smaller than |f(theta_1)| (checked numerically below).


def _f(theta, a):
    return math.cos(theta) + a * math.sin(theta) / theta


def _df(theta, a):
    return -math.sin(theta) + a * (theta * math.cos(theta) - math.sin(theta)) / theta**2


def _lam_of_theta(theta: float, eps: float) -> float:
    return -1.0 / (4.0 * eps) - eps * theta * theta


class MinReachable(NamedTuple):
    """The most negative real value of ``psi(., eps)`` (horizon 1) and where it is attained.

    Attributes
    ----------
    value : float
        ``min over real lam of psi(lam, eps)``, in ``(-1, 0)``.
    lam : float
        The ``lam`` attaining it (a critical point of ``psi``: ``psi'(lam) = 0``).
    """

    value: float
    lam: float


def _check_positive_eps(eps) -> float:
    eps = check_eps(eps)
    if eps == 0.0:
        raise ValueError(
            "`eps` must be > 0 here; got 0.0. At eps = 0 the flow is exp(lam) > 0 and reaches no negative value; "
            "use has_real_logarithm for first-order flows."
        )
    return eps


def min_reachable(eps: float) -> MinReachable:
    """Most negative real value of ``psi(lam, eps)`` over real ``lam`` (horizon ``t = 1``), and its ``lam``.

    With ``a = 1/(2 eps)`` the minimum is ``e^{-a} f(theta_1)``, ``f(theta) = cos(theta) + a sin(theta) / theta``,
    at the first critical point ``theta_1`` of ``f`` (in ``(pi, 2 pi)``, found with ``scipy.optimize.brentq``),
    ``lam = -1/(4 eps) - eps theta_1^2``. It increases in magnitude from ``0`` (``eps -> 0``, where
    ``psi -> exp(lam) > 0``) towards ``-1`` (``eps -> inf``) and never reaches ``-1`` (energy:
    ``E = eps x'^2 / 2 - lam x^2 / 2`` decreases strictly). It underflows to ``-0.0`` below ``eps`` about
    ``6.7e-4``. For another horizon use ``psi(lam, eps, t) = psi(lam t, eps / t)``.

    Parameters
    ----------
    eps : float
        Inertia ``eps > 0``.

    Returns
    -------
    MinReachable
        ``(value, lam)``.

    Raises
    ------
    TypeError
        If ``eps`` is not a real number.
    ValueError
        If ``eps <= 0`` or not finite.

    References
    ----------
    Sander et al., ICML 2021, representation capabilities (the reachable negative eigenvalues grow with eps).
    """
    eps = _check_positive_eps(eps)
    a = 1.0 / (2.0 * eps)
    theta = scipy.optimize.brentq(_df, math.pi, 2.0 * math.pi, args=(a,), xtol=1e-15, rtol=8 * _U)
    best = _f(theta, a)
    # Later minima are shallower: |f| <= sqrt(1 + a^2/theta^2) decreases to 1 < |f(theta_1)|. Search each period
    # [2k pi, 2(k+1) pi] until that envelope at its left end is below |f(theta_1)|.
    k = 1
    while math.sqrt(1.0 + (a / (2 * k * math.pi)) ** 2) > -best and k < 1000:
        lo, hi = 2 * k * math.pi, 2 * (k + 1) * math.pi
        res = scipy.optimize.minimize_scalar(lambda th: _f(th, a), bounds=(lo, hi), method="bounded",
                                             options={"xatol": 1e-12})
        internal_assert(res.fun >= best - 1e-12 * abs(best), f"a later minimum of psi is deeper (eps={eps})")
        k += 1
    lam = _lam_of_theta(theta, eps)
    return MinReachable(float(np.real(_kernels_real(np.array([lam]), eps, 1.0)[0][0])), lam)


def first_zero(eps: float) -> float:
    """The largest real ``lam`` with ``psi(lam, eps) = 0`` (horizon ``t = 1``).

    It is ``-1/(4 eps) - eps theta_0^2`` with ``theta_0`` the root in ``(pi/2, pi)`` of
    ``cos(theta) + a sin(theta) / theta = 0``, ``a = 1/(2 eps)`` (``tan(theta) = -theta / a``), found with
    ``scipy.optimize.brentq``. ``psi`` is positive and increasing for larger ``lam``, so ``psi(A)`` is invertible
    whenever every real eigenvalue of ``A`` exceeds ``first_zero(eps)`` (and no complex one is a zero).
    As ``eps -> inf`` it tends to ``-pi^2 eps / 4``; as ``eps -> 0`` to ``-1/(4 eps)``.

    Parameters
    ----------
    eps : float
        Inertia ``eps > 0``.

    Returns
    -------
    float
        The zero ``lam_0 < -1/(4 eps)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`min_reachable`.
    """
    eps = _check_positive_eps(eps)
    a = 1.0 / (2.0 * eps)
    theta = scipy.optimize.brentq(_f, 0.5 * math.pi, math.pi, args=(a,), xtol=1e-15, rtol=8 * _U)
    return _lam_of_theta(theta, eps)


# ---------------------------------------------------------------------------------------------- spectral structure


@dataclass(frozen=True)
class _Group:
    """One eigenvalue of a real matrix, up to rounding, and the rows of its block in a block-diagonal form.

    ``real``: a real eigenvalue (``centre`` real; rounding may have split it into a cluster, even into complex
    pairs). Otherwise ``centre`` (``Im > 0``) and its conjugate share one real block. ``blocks``: Jordan block
    sizes of a real eigenvalue, descending.
    """

    centre: complex
    members: np.ndarray
    real: bool
    blocks: tuple[int, ...]
    rows: slice


@dataclass(frozen=True)
class _Spectral:
    """``D = W blockdiag(T) W_inv`` with one real block per group (real Schur + Sylvester decoupling)."""

    scale: float
    W: np.ndarray
    W_inv: np.ndarray
    T: tuple[np.ndarray, ...]
    groups: tuple[_Group, ...]


def _single_linkage(values: np.ndarray, thr: float) -> list[np.ndarray]:
    """Indices of ``values`` grouped by chains of distances ``<= thr`` (connected components)."""
    n = len(values)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if abs(values[i] - values[j]) <= thr:
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return [np.array(c) for c in comps.values()]


def _jordan_blocks(N: np.ndarray) -> tuple[int, ...] | None:
    """Jordan block sizes of the (nearly) nilpotent ``N`` (scaled by ``||D||_2``), or None if it is not nilpotent.

    Nullities ``nu_k = dim ker N^k`` give the number of blocks of size ``>= k`` as ``nu_k - nu_{k-1}`` (the
    Weyr characteristic); ranks count singular values above ``RANK_RTOL``.
    """
    m = N.shape[0]
    nullity = [0]
    P = np.eye(m)
    for k in range(1, m + 1):
        P = P @ N
        sv = np.linalg.svd(P, compute_uv=False)
        nullity.append(int(np.sum(sv <= RANK_RTOL)))
    if nullity[-1] != m:
        return None
    at_least = [nullity[k] - nullity[k - 1] for k in range(1, m + 1)] + [0]
    if any(at_least[k] < at_least[k + 1] for k in range(m)):
        return None
    sizes = []
    for k in range(m, 0, -1):
        sizes += [k] * (at_least[k - 1] - at_least[k])
    return tuple(sizes)


def _spectral(D: np.ndarray) -> _Spectral:
    """Eigenvalue groups of a real matrix with their Jordan structure, and a real block diagonalisation.

    Works on ``D / ||D||_2`` (so the tolerances are relative and huge or tiny entries do not overflow) and scales
    the blocks and eigenvalues back.
    """
    n = D.shape[0]
    scale = float(np.linalg.norm(D, 2))
    if scale == 0.0:
        group = _Group(0.0, np.zeros(n, complex), True, (1,) * n, slice(0, n))
        return _Spectral(0.0, np.eye(n), np.eye(n), (D.copy(),), (group,))
    Dn = D / scale
    w = scipy.linalg.eigvals(Dn)
    parts = [(idx, CLUSTER_RTOL) for idx in _single_linkage(w, CLUSTER_RTOL)]
    for _ in range(40):
        unit, bad = _decompose(Dn, w, parts)
        if not bad:
            groups = tuple(
                _Group(g.centre * scale, g.members * scale, g.real, g.blocks, g.rows) for g in unit.groups
            )
            return _Spectral(scale, unit.W, unit.W_inv, tuple(scale * T for T in unit.T), groups)
        # A real cluster that is not one eigenvalue at RANK_RTOL: split it with a ten times finer linkage.
        new_parts = []
        for k, (idx, thr) in enumerate(parts):
            if k in bad:
                new_parts += [(idx[sub], thr / 10) for sub in _single_linkage(w[idx], thr / 10)]
            else:
                new_parts.append((idx, thr))
        parts = new_parts
    raise ValueError(
        f"could not determine the Jordan structure of D (eigenvalues {np.round(w * scale, 12).tolist()}): "
        f"eigenvalues within {CLUSTER_RTOL:g} * ||D|| of each other do not form Jordan blocks at the rank "
        f"tolerance {RANK_RTOL:g}. Perturb D or separate its eigenvalues."
    )


def _decompose(D, w, parts):
    """Real Schur ordered by the partition ``parts``, Sylvester-decoupled; returns (spectral, bad cluster ids).

    ``D`` has unit 2-norm; ``w`` are its eigenvalues; ``parts`` lists (indices into ``w``, linkage threshold).
    """
    n = D.shape[0]
    label = np.empty(len(w), int)
    for k, (idx, _) in enumerate(parts):
        label[idx] = k
    # Self-conjugate clusters are real eigenvalues; others pair with the cluster holding their conjugates.
    order, seen = [], set()
    for k, (idx, _) in enumerate(parts):
        if k in seen:
            continue
        mirror = int(label[np.argmin(np.abs(w - np.conj(w[idx[0]])))])
        if mirror == k:
            order.append(([k], True))
            seen.add(k)
        else:
            order.append(([k, mirror], False))
            seen.update((k, mirror))

    def selector(ids):
        chosen = np.concatenate([parts[k][0] for k in ids])

        def pick(re, im):
            return bool(np.isin(np.argmin(np.abs(w - complex(re, im))), chosen))

        return pick, len(chosen)

    T, Z, offset, rows = D.copy(), np.eye(n), 0, []
    for j, (ids, _) in enumerate(order):
        pick, size = selector(ids)
        if j < len(order) - 1:
            try:
                Ts, Q, sdim = scipy.linalg.schur(T[offset:, offset:], output="real", sort=pick)
            except (np.linalg.LinAlgError, ValueError) as err:
                raise ValueError(f"could not separate the eigenvalue groups of D by a real Schur form: {err}") from err
            if sdim != size:
                raise ValueError(
                    f"could not separate the eigenvalue groups of D: {sdim} eigenvalues selected for a group of "
                    f"{size}. The eigenvalues are too close to decide; perturb D."
                )
            T[offset:, offset:] = Ts
            T[:offset, offset:] = T[:offset, offset:] @ Q
            Z[:, offset:] = Z[:, offset:] @ Q
        rows.append(slice(offset, offset + size))
        offset += size
    internal_assert(offset == n, "groups do not cover the spectrum")
    # Decouple: T = S blockdiag S^-1 with S = product of (I + E_j), E_j = X_j in block-row j, trailing columns.
    W, W_inv = Z.copy(), Z.T.copy()
    for j, sl in enumerate(rows[:-1]):
        rest = slice(sl.stop, n)
        X = scipy.linalg.solve_sylvester(T[sl, sl], -T[rest, rest], -T[sl, rest])
        T[sl, rest] = 0.0
        W[:, rest] = W[:, rest] + W[:, sl] @ X
        W_inv[sl, :] = W_inv[sl, :] - X @ W_inv[rest, :]
    groups, bad = [], []
    for (ids, real), sl in zip(order, rows):
        members = np.concatenate([w[parts[k][0]] for k in ids])
        if real:
            centre = float(np.mean(members).real)
            blocks = _jordan_blocks(T[sl, sl] - centre * np.eye(sl.stop - sl.start))
            if blocks is None:
                bad.append(ids[0])
                blocks = ()
            groups.append(_Group(centre, members, True, blocks, sl))
        else:
            upper = members[members.imag > 0]
            groups.append(_Group(complex(np.mean(upper)), members, False, (), sl))
    blocks_T = tuple(T[sl, sl].copy() for sl in rows)
    return _Spectral(1.0, W, W_inv, blocks_T, tuple(groups)), bad


def _unpaired(blocks: tuple[int, ...]) -> tuple[int, ...]:
    """Jordan block sizes that occur an odd number of times."""
    return tuple(sorted({k for k in blocks if blocks.count(k) % 2 == 1}, reverse=True))


def _is_zero(group: _Group, scale: float) -> bool:
    return group.real and abs(group.centre) <= RANK_RTOL * scale


# ---------------------------------------------------------------------------------------------- first order


@dataclass(frozen=True)
class RealLogarithm:
    """Whether a real matrix has a real logarithm, i.e. is reached by a first-order linear flow ``exp(A)``.

    Truthy when it does. Attributes: ``exists`` (bool) and ``reason`` (str: why not, or a one-line
    confirmation).
    """

    exists: bool
    reason: str

    def __bool__(self) -> bool:
        return self.exists


def has_real_logarithm(D) -> RealLogarithm:
    """Culver's criterion: does the real matrix ``D`` equal ``exp(L)`` for a real ``L``?

    It does exactly when ``D`` is invertible and every Jordan block of each negative real eigenvalue occurs an
    even number of times (Culver 1966, theorem 1). These are the matrices a first-order linear flow
    ``x' = A x`` reaches at horizon 1 (``x(1) = exp(A) x0``); ``det exp(A) = exp(tr A) > 0``.

    Rounding: eigenvalues within ``CLUSTER_RTOL * ||D||_2`` (1e-5) of each other are treated as one eigenvalue
    (rounding splits a Jordan block of size ``k`` by about ``(u kappa)^(1/k)``), the Jordan structure is read from
    ranks of ``(T_c - c I)^k`` on the eigenvalue's block of a reordered real Schur form with singular values below
    ``RANK_RTOL * ||D||_2^k`` (1e-8) counted as zero, and eigenvalues within ``RANK_RTOL * ||D||_2`` of zero count
    as zero. So the answer is that of the most degenerate matrix within about ``1e-8 ||D||`` of ``D``: ``diag(-1,
    -1)`` perturbed by rounding still has a real logarithm; ``diag(-1, -1 - 1e-6)`` does not. A cluster that is not
    one eigenvalue at the rank tolerance is split with a finer linkage.

    Parameters
    ----------
    D : array_like or Tensor, shape ``(n, n)``
        A real square matrix (float dtype; integers are converted).

    Returns
    -------
    RealLogarithm
        Truthy when a real logarithm exists; ``reason`` names the obstruction otherwise (a zero eigenvalue, or
        the negative eigenvalue and its unpaired Jordan block sizes).

    Raises
    ------
    TypeError
        If ``D`` is not an array or tensor of real numbers.
    ValueError
        If ``D`` is not square 2-D, has nan/inf entries, or its eigenvalues are too close to decide the Jordan
        structure.

    References
    ----------
    W. J. Culver, "On the existence and uniqueness of the real logarithm of a matrix", Proc. AMS 17 (1966);
    Higham, "Functions of Matrices" (2008), chapter 1 (real logarithms); Sander et al., ICML 2021,
    representation capabilities.
    """
    D = _matrix("D", D, real=True)
    spec = _spectral(D)
    for g in spec.groups:
        if _is_zero(g, spec.scale):
            return RealLogarithm(
                False,
                f"D is singular (an eigenvalue within {RANK_RTOL:g} * ||D|| of 0); exp(L) is always invertible.",
            )
    for g in spec.groups:
        if g.real and g.centre < 0 and _unpaired(g.blocks):
            return RealLogarithm(
                False,
                f"the negative eigenvalue {g.centre:.6g} has Jordan blocks of sizes {list(g.blocks)}; the sizes "
                f"{list(_unpaired(g.blocks))} occur an odd number of times, but a real logarithm needs each "
                "Jordan block of a negative eigenvalue to occur an even number of times (Culver 1966).",
            )
    negatives = [g.centre for g in spec.groups if g.real and g.centre < 0]
    detail = "its negative eigenvalues' Jordan blocks come in pairs" if negatives else "no negative eigenvalue"
    return RealLogarithm(True, f"D is invertible and has {detail}.")


# ---------------------------------------------------------------------------------------------- inverse of psi
# The principal branch g of psi^{-1} (horizon 1): real and increasing from [m, inf) onto [lam*, inf), where
# m = min_reachable(eps) is attained at lam* (psi'(lam*) = 0, a square-root branch point of g). psi has real
# coefficients and only real zeros (its zeros are the eigenvalues of a Sturm-Liouville problem), so it lies in the
# Laguerre-Polya class and its critical points are all real; g continues holomorphically to C \ (-inf, m]. Values
# on the cut come from above (g(conj z) = conj g(z)) and are not real: no real lam has psi(lam) < m.


def _psi_dpsi(mu: complex, eps: float) -> tuple[complex, complex]:
    """psi(mu) and d psi / d lam at complex mu (horizon 1), in the shifted forms of :func:`psi`."""
    a = 1.0 / (2.0 * eps)
    s = complex(np.sqrt(complex(1.0 + 4.0 * eps * mu)))
    u = a * s
    expo = 2.0 * mu / (1.0 + s) if abs(s) >= 0.5 else u - a
    scale = complex(np.exp(expo))
    em = complex(np.exp(-2.0 * u))
    ch = scale * 0.5 * (1.0 + em)  # e^{-a} cosh(u)
    sc = scale * (complex(-np.expm1(-2.0 * u)) / (2.0 * u)) if u != 0 else scale  # e^{-a} sinh(u) / u
    if abs(u) > 0.1:
        d = (ch - sc) / (u * u)  # e^{-a} (cosh u - sinh u / u) / u^2
    else:
        u2 = u * u
        d = complex(np.exp(-a)) * (1 / 3 + u2 * (1 / 30 + u2 * (1 / 840 + u2 * (1 / 45360 + u2 / 3991680))))
    return ch + a * sc, (sc + a * d) / (2.0 * eps)


def _newton(z: complex, mu: complex, eps: float) -> complex | None:
    """Solve psi(mu) = z by Newton from ``mu``; None if it does not converge in 40 steps."""
    for _ in range(40):
        p, dp = _psi_dpsi(mu, eps)
        if dp == 0 or not np.isfinite(p):
            return None
        step = (p - z) / dp
        mu = mu - step
        if abs(step) <= 4 * _U * max(1.0, abs(mu)):
            return mu
    return None


def _g_real(z: float, eps: float, low: MinReachable) -> float:
    """The principal real branch: the lam >= lam* with psi(lam) = z, for real z >= m."""
    if z <= low.value:
        return low.lam
    hi = 1.0
    while _kernels_real(np.array([hi]), eps, 1.0)[0][0] <= z:
        hi *= 2.0
    f = lambda lam: _kernels_real(np.array([lam]), eps, 1.0)[0][0] - z  # noqa: E731
    return scipy.optimize.brentq(f, low.lam, hi, xtol=1e-300, rtol=8 * _U, maxiter=500)


def _continue(path: list[complex], mu: complex, eps: float, branch_point: float) -> complex:
    """Follow g from ``path[0]`` (where g = mu) along the polygon ``path`` by predictor-corrector Newton."""
    for start, end in zip(path[:-1], path[1:]):
        z = start
        while z != end:
            room = max(abs(z - branch_point), 1e-300)
            h = end - z
            if abs(h) > 0.2 * room:
                h = h * (0.2 * room / abs(h))
            for _ in range(60):
                _, dp = _psi_dpsi(mu, eps)
                nxt = _newton(z + h, mu + h / dp, eps) if dp != 0 else None
                if nxt is not None:
                    break
                h = h / 2
            else:
                raise ValueError(f"could not continue the inverse of psi to {end} (eps={eps}); stuck at {z}.")
            z, mu = (end if abs(end - (z + h)) <= 4 * _U * abs(end) else z + h), nxt
    return mu


def _g_complex(z: complex, eps: float, low: MinReachable) -> complex:
    """Principal branch at complex z (or the upper boundary value on the cut z < m), by continuation."""
    m = low.value
    x_s = max(z.real, m + abs(z.imag), m / 2 if m < 0 else 1.0, m + 0.5 * abs(m - z.real))
    mu = complex(_g_real(x_s, eps, low))
    if z.imag == 0 and z.real < m:  # the cut: approach from above
        eta = 0.5 * (m - z.real)
        path = [complex(x_s), complex(x_s, eta), complex(z.real, eta), z]
    else:
        path = [complex(x_s), complex(x_s, z.imag), z]
    return _continue(path, mu, eps, m)


def _g_block(B: np.ndarray, centres: list[complex], R: float, eps: float, low: MinReachable) -> np.ndarray:
    """g(B) for a real block B by the Cauchy integral over circles around ``centres`` (real or conjugate pair).

    ``R``: radius of the disk around each centre where g is holomorphic and holds no other group's eigenvalue.
    The trapezoid rule on a circle of radius rho converges like (r / rho)^K + (rho / R)^K, r = spread of the
    enclosed eigenvalues; rho = R sqrt(max(q, 1/16)) with q = r / R balances the two.
    """
    n = B.shape[0]
    eigs = scipy.linalg.eigvals(B)
    r = 0.0
    for lam_b in eigs:
        r = max(r, min(abs(lam_b - c) for c in centres))
    q = r / R
    if q >= 0.5:
        raise ValueError(
            f"the eigenvalues of alpha D near {centres[0]:.6g} spread over {r:.3g}, too close to the branch point "
            f"{low.value:.6g} of psi^-1 (or to their conjugates), distance {R:.3g}, for a reliable inverse; "
            "choose alpha further from max_scale."
        )
    qq = max(q, 1.0 / 16.0)
    rho = R * math.sqrt(qq)
    K = int(min(4096, max(16, math.ceil(math.log(1e-18) / math.log(math.sqrt(qq))))))
    out = np.zeros((n, n), complex)
    eye = np.eye(n)
    for c in centres:
        mu0 = complex(_g_real(c.real, eps, low)) if c.imag == 0 else _g_complex(c, eps, low)
        mu = _continue([c, c + rho], mu0, eps, low.value)
        prev = c + rho
        for k in range(K):
            w = np.exp(2j * math.pi * k / K)
            z = c + rho * w
            if k:
                mu = _continue([prev, z], mu, eps, low.value)
                prev = z
            out += (mu * rho * w / K) * np.linalg.solve(z * eye - B, eye)
    internal_assert(np.linalg.norm(out.imag) <= 1e-8 * max(1.0, np.linalg.norm(out.real)),
                    "the contour integral of a real block is not real")
    return out.real


# ---------------------------------------------------------------------------------------------- momentum flows


@dataclass(frozen=True, eq=False)
class Representability:
    """Which positive multiples ``alpha D`` of a real matrix the linear momentum flow reaches at one ``eps``.

    ``alpha D = Psi_eps(A)`` for a real ``A`` exactly when every real eigenvalue ``alpha d < m``
    (``m = min_reachable(eps).value``) has its Jordan blocks in pairs (each pair is the image of a complex-conjugate
    pair of eigenvalues of ``A``), and no Jordan block of size ``>= 2`` of an eigenvalue equal to ``m`` is unpaired
    (``psi'`` vanishes there, so ``psi`` maps a real Jordan block at ``lam*`` to a diagonal one). Complex,
    positive, zero and ``(m, 0)`` eigenvalues are always reached (``psi`` is entire, non-polynomial, increasing
    on ``[lam*, inf)``).

    Attributes
    ----------
    eps : float
        The inertia.
    max_scale : float
        Supremum of ``alpha > 0`` with ``alpha D`` reachable: ``|m| / |d|`` for the negative eigenvalue ``d`` of
        largest modulus that has an unpaired Jordan block; ``inf`` if there is none. Reachable scales form the
        interval ``(0, max_scale]`` (or ``(0, max_scale)`` when ``attained`` is false).
    attained : bool
        Whether ``alpha = max_scale`` itself is reachable (false when the limiting eigenvalue has an unpaired
        Jordan block of size ``>= 2``; true when ``max_scale`` is infinite).
    limiting_eigenvalue : float or None
        The eigenvalue ``d`` of ``D`` that sets ``max_scale``.
    min_reachable : MinReachable
        ``min_reachable(eps)``.
    reason : str
        One line explaining ``max_scale``.

    Methods
    -------
    preimage(alpha)
        A real ``A`` with ``psi_matrix(A, eps) == alpha D``.
    """

    eps: float
    max_scale: float
    attained: bool
    limiting_eigenvalue: float | None
    min_reachable: MinReachable
    reason: str
    _D: np.ndarray = field(repr=False)
    _spec: _Spectral = field(repr=False)

    def preimage(self, alpha: float) -> np.ndarray:
        """A real matrix ``A`` with ``psi_matrix(A, eps) = alpha D``, checked to ``PREIMAGE_RTOL`` (1e-9) relative.

        Built group by group on a real block diagonalisation ``D = W blockdiag(T_j) W^-1`` (reordered real Schur
        form, Sylvester decoupling): a real eigenvalue ``alpha d >= m`` takes the principal branch ``g`` of
        ``psi^-1`` (``lam >= lam*``, the monotone part of ``psi``; found with ``brentq``), a defective one takes
        ``g(alpha T_j)`` by a Cauchy integral of ``g`` (continued by Newton) around ``alpha d``; a complex pair
        takes the branch continued from the real axis through the upper half-plane, and its conjugate; a
        semisimple negative eigenvalue ``alpha d < m`` of even multiplicity takes ``2 x 2`` blocks
        ``[[Re mu, Im mu], [-Im mu, Re mu]]`` with ``psi(mu) = alpha d``, ``mu`` non-real.

        Parameters
        ----------
        alpha : float
            Scale, ``0 < alpha <= max_scale`` (``alpha < max_scale`` when ``attained`` is false).

        Returns
        -------
        ndarray, shape ``(n, n)``, float64
            The preimage ``A``.

        Raises
        ------
        TypeError
            If ``alpha`` is not a real number.
        ValueError
            If ``alpha <= 0`` or above ``max_scale``; if ``alpha = max_scale`` is not attained (a defective
            Jordan structure at the boundary); if eigenvalues of ``alpha D`` sit too close to the branch point
            ``m`` for an accurate inverse; if the result misses ``alpha D`` by more than ``PREIMAGE_RTOL``.
        NotImplementedError
            For pairs of defective Jordan blocks of a negative eigenvalue beyond ``m`` (reachable through complex
            Jordan chains, not constructed here).
        """
        alpha = check_real("alpha", alpha)
        if alpha <= 0:
            raise ValueError(f"`alpha` must be > 0; got {alpha!r}. The reachable scales are (0, max_scale].")
        if alpha > self.max_scale * (1.0 + ALPHA_RTOL):
            raise ValueError(
                f"`alpha` = {alpha!r} exceeds max_scale = {self.max_scale!r} at eps = {self.eps!r}: {self.reason} "
                "Pass an alpha <= max_scale, or a larger eps."
            )
        if not self.attained and alpha >= self.max_scale * (1.0 - ALPHA_RTOL):
            raise ValueError(
                f"`alpha` = max_scale = {self.max_scale!r} is not reachable: the limiting eigenvalue "
                f"{self.limiting_eigenvalue!r} has an unpaired Jordan block of size >= 2, and psi' = 0 at the "
                "minimum of psi maps a Jordan block to a diagonal one (a defective Jordan structure at the "
                "boundary). Any alpha < max_scale is reachable."
            )
        eps, low, spec = self.eps, self.min_reachable, self._spec
        m = low.value
        blocks = []
        for grp, T in zip(spec.groups, spec.T):
            B = alpha * T
            size = B.shape[0]
            if grp.real:
                z = float(np.trace(B)) / size
                if all(k == 1 for k in grp.blocks):  # semisimple: B = z I up to rounding
                    if z >= m * (1.0 + ALPHA_RTOL):  # real preimage on the monotone branch (m itself included)
                        lam = _g_real(z, eps, low)
                        A_j = lam * np.eye(size)
                        _, dp = _psi_dpsi(lam, eps)
                        if z > m * (1.0 - ALPHA_RTOL) and dp.real > 0:  # off the boundary: first-order correction
                            A_j = A_j + (B - z * np.eye(size)) / dp.real
                    elif size % 2 == 0:  # below m: complex-conjugate pairs
                        mu = _g_complex(complex(z), eps, low)
                        internal_assert(abs(mu.imag) > 0, "a point below min_reachable has a real preimage")
                        A_j = np.kron(np.eye(size // 2), np.array([[mu.real, mu.imag], [-mu.imag, mu.real]]))
                    else:
                        raise ValueError(
                            f"alpha d = {z:.6g} for the eigenvalue {grp.centre:.6g} of odd multiplicity lies below "
                            f"min_reachable(eps) = {m:.6g}; use a smaller alpha."
                        )
                elif z > m:  # defective, strictly inside the range: g(B) by a contour integral
                    A_j = _g_block(B, [complex(z)], z - m, eps, low)
                elif not _unpaired(grp.blocks):
                    raise NotImplementedError(
                        f"alpha d = {z:.6g} does not exceed min_reachable(eps) = {m:.6g} for the eigenvalue "
                        f"{grp.centre:.6g} with paired Jordan blocks {list(grp.blocks)}: reachable through complex "
                        "Jordan chains, which this construction does not build. Use alpha < "
                        f"{m / grp.centre:.6g}."
                    )
                else:
                    raise ValueError(
                        f"alpha d = {z:.6g} for the eigenvalue {grp.centre:.6g} (Jordan blocks {list(grp.blocks)}) "
                        f"is not reachable at eps = {eps!r}: a defective Jordan structure at or beyond the boundary "
                        f"min_reachable(eps) = {m:.6g}; use a smaller alpha."
                    )
            else:
                c = alpha * grp.centre
                # Both circles in their half-planes (radius Im c), or one circle around the pair centred on the
                # real axis when that is farther from the branch point than the pair is wide.
                if c.real > m and c.real - m > 2.0 * abs(c.imag):
                    A_j = _g_block(B, [complex(c.real)], c.real - m, eps, low)
                else:
                    A_j = _g_block(B, [c, c.conjugate()], abs(c.imag), eps, low)
            blocks.append(A_j)
        A = spec.W @ scipy.linalg.block_diag(*blocks) @ spec.W_inv
        target = alpha * self._D
        residual = _rel_err(_psi_phi_matrix(A, eps, 1.0)[0], target)
        if not residual <= PREIMAGE_RTOL:
            raise ValueError(
                f"the computed preimage misses alpha D by {residual:.2e} (relative, Frobenius), above "
                f"PREIMAGE_RTOL = {PREIMAGE_RTOL:g}: D's eigenbasis is ill-conditioned (cond(W) = "
                f"{np.linalg.cond(spec.W):.2e}) or alpha D has eigenvalues close to the branch point "
                f"{m:.6g}. Try an alpha further from max_scale."
            )
        return A


def _rel_err(X: np.ndarray, ref: np.ndarray) -> float:
    """``||X - ref||_F / ||ref||_F``, scaled so that tiny matrices (e^{-1/(2 eps)}) do not underflow."""
    s = float(np.max(np.abs(ref)))
    if s == 0.0:
        return float(np.linalg.norm(X))
    return float(np.linalg.norm((X - ref) / s) / np.linalg.norm(ref / s))


def representable(D, eps: float) -> Representability:
    """Up to which positive scale ``alpha`` is ``alpha D = Psi_eps(A)`` for a real ``A`` (the momentum flow)?

    The momentum flow ``eps x'' + x' = A x``, ``x'(0) = 0``, maps ``x0 -> Psi_eps(A) x0`` at horizon 1. On the real
    axis ``psi(., eps)`` covers exactly ``[m, inf)`` with ``m = min_reachable(eps).value`` in ``(-1, 0)``; off it,
    ``psi`` (entire, of order 1/2) takes every complex value. So a real eigenvalue ``d < 0`` of ``D`` limits the
    scale only if one of its Jordan blocks is unpaired, to ``alpha <= |m| / |d|``; paired blocks, zero, positive
    and complex eigenvalues never do. Every real ``D`` is therefore reachable up to a positive factor, unlike
    first-order flows (:func:`has_real_logarithm`). ``D = diag(-1, 2)``: ``max_scale = |m|``.

    Jordan structure is read with the tolerances of :func:`has_real_logarithm` (``CLUSTER_RTOL``,
    ``RANK_RTOL``).

    Parameters
    ----------
    D : array_like or Tensor, shape ``(n, n)``
        A real square matrix.
    eps : float
        Inertia ``eps > 0``.

    Returns
    -------
    Representability
        ``max_scale``, whether it is attained, the limiting eigenvalue, the reason, and ``preimage(alpha)``.
        For ``eps`` below about ``6.7e-4``, ``m`` underflows and ``max_scale`` is ``0.0`` for matrices with an
        unpaired negative eigenvalue.

    Raises
    ------
    TypeError
        If ``D`` is not a real array or tensor, or ``eps`` not a real number.
    ValueError
        If ``D`` is not square 2-D or not finite, ``eps <= 0``, or the Jordan structure cannot be decided.

    References
    ----------
    Sander et al., ICML 2021, representation capabilities (linear residual functions); Culver 1966 for the
    first-order comparison.
    """
    D = _matrix("D", D, real=True)
    eps = _check_positive_eps(eps)
    low = min_reachable(eps)
    spec = _spectral(D)
    limits = []
    for g in spec.groups:
        if g.real and g.centre < 0 and not _is_zero(g, spec.scale) and _unpaired(g.blocks):
            limits.append((abs(low.value) / abs(g.centre), g))
    if not limits:
        reason = (
            "no negative eigenvalue of D has an unpaired Jordan block, so complex-conjugate preimages reach every "
            "alpha D."
        )
        return Representability(eps, math.inf, True, None, low, reason, D, spec)
    scale, g = min(limits, key=lambda item: item[0])
    attained = all(
        max(_unpaired(h.blocks)) == 1 for s, h in limits if s <= scale * (1.0 + ALPHA_RTOL)
    )
    reason = (
        f"the eigenvalue {g.centre:.6g} of D has unpaired Jordan blocks {list(_unpaired(g.blocks))}, so alpha * "
        f"{g.centre:.6g} must be a real value of psi(., eps), which are >= min_reachable(eps) = {low.value:.6g}."
    )
    return Representability(eps, scale, attained, float(g.centre), low, reason, D, spec)


# ---------------------------------------------------------------------------------------------- verification path


class _LinearField(torch.nn.Module):
    """``F(t, x) = x A^T`` (``A x`` for each row ``x``); ``A`` a trainable ``(n, n)`` parameter."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = torch.nn.Parameter(A)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T


def integrate_psi_matrix(A, eps: float, *, n_steps: int = 1024, method: str = "leapfrog",
                         extrapolate: bool = True) -> np.ndarray:
    """``Psi_eps(A)`` by integrating ``eps x'' + x' = A x`` with :func:`ode_momentum.odeint` in float64.

    Columns come from ``n`` solves from rest at ``x0 = e_i`` (one batch, ``F(t, x) = x A^T``) over ``[0, 1]``.
    With ``extrapolate`` the solve is repeated at ``2 n_steps`` and Richardson-extrapolated,
    ``(2^p X_{h/2} - X_h) / (2^p - 1)`` with ``p`` the integrator's order; for the symmetric ``leapfrog``
    (Strang splitting, whose global error expands in even powers of ``h``) this gives order 4. This path shares no
    code with :func:`psi_matrix` and checks it, and preimages, against the project's integrators.

    Parameters
    ----------
    A : array_like or Tensor, shape ``(n, n)``
        Real force matrix.
    eps : float
        Inertia ``eps > 0``.
    n_steps : int
        Steps over ``[0, 1]`` (the finer solve uses twice as many).
    method : str
        A key of ``ode_momentum.INTEGRATORS``.
    extrapolate : bool
        Richardson extrapolation (default true).

    Returns
    -------
    ndarray, shape ``(n, n)``, float64

    Raises
    ------
    TypeError, ValueError
        For a non-real or non-square ``A``, ``eps <= 0``, ``n_steps < 1`` or an unknown ``method`` (from
        :func:`ode_momentum.odeint`).
    """
    from ..integrators import INTEGRATORS
    from ..odeint import odeint

    A_np = _matrix("A", A, real=True)
    eps = _check_positive_eps(eps)
    n_steps = check_positive_int("n_steps", n_steps)
    A_t = torch.from_numpy(A_np)
    n = A_np.shape[0]
    x0 = torch.eye(n, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def solve(steps):
        with torch.no_grad():
            xs, _ = odeint(lambda _t, x: x @ A_t.T, (x0, None), t, eps=eps, method=method, n_steps=steps)
        return xs[-1].T.numpy()  # row i is psi(A) e_i

    coarse = solve(n_steps)
    if not extrapolate:
        return coarse
    p = INTEGRATORS[method].order
    fine = solve(2 * n_steps)
    return (2**p * fine - coarse) / (2**p - 1)


@dataclass(frozen=True)
class LinearFit:
    """A linear flow trained to represent a target matrix (see :func:`fit_linear_flow`).

    Attributes
    ----------
    A : ndarray, shape ``(n, n)``
        The learned force matrix.
    model_error : float
        ``||M - target||_F / ||target||_F`` for the trained model's own map ``M`` (the discrete flow).
    flow_error : float
        The same for the exact flow of the learned ``A``: ``psi_matrix(A, eps)`` (``expm(A)`` at ``eps = 0``).
    losses : list of float
        The loss (squared relative error of the model) at each evaluation: Adam steps, then L-BFGS evaluations.
    eps : float
        Inertia of the model (0 for the first-order baseline).
    """

    A: np.ndarray
    model_error: float
    flow_error: float
    losses: list[float]
    eps: float


def fit_linear_flow(target, eps: float, *, n_steps: int = 32, iters: int = 60, lr: float = 0.1,
                    seed: int = 0) -> LinearFit:
    """Train a linear continuous-depth model by gradient descent so that its map ``x0 -> x(1)`` is ``target``.

    ``eps > 0``: a :class:`ode_momentum.MomentumODE` with ``F(t, x) = A x`` (leapfrog, ``n_steps`` steps,
    backprop). ``eps = 0``: the first-order :func:`ode_momentum.NeuralODE` (explicit Euler, ``x' = A x``). The
    loss is ``||M(I) - target||_F^2 / ||target||_F^2`` over the identity batch, minimised with ``iters`` Adam
    steps (``lr``) and then polished by at most ``iters`` L-BFGS iterations, in float64, from ``A = 0.1 G`` with
    ``G`` standard normal from a generator seeded with ``seed`` (no global RNG).

    A first-order model cannot go below the distance of ``target`` to matrices with a non-negative determinant:
    for even ``n_steps`` its map ``(I + A / n_steps)^{n_steps}`` and its flow ``exp(A)`` both have
    ``det >= 0``, so ``model_error >= sigma_min(target) / ||target||_F`` when ``det(target) < 0``
    (``1 / sqrt(5)`` for ``diag(-1, 2)``).

    Parameters
    ----------
    target : array_like or Tensor, shape ``(n, n)``
        Real matrix to represent.
    eps : float
        Inertia ``eps >= 0``.
    n_steps : int
        Steps of the model over ``[0, 1]``.
    iters : int
        Adam iterations, and the cap on L-BFGS iterations after them.
    lr : float
        Adam learning rate ``> 0``.
    seed : int
        Seed of the initial ``A``.

    Returns
    -------
    LinearFit

    Raises
    ------
    TypeError, ValueError
        For a non-real or non-square ``target``, ``eps < 0``, non-positive ``n_steps`` / ``iters`` / ``lr``.

    References
    ----------
    Sander et al., ICML 2021, representation capabilities (learning linear maps with momentum; first-order models fail).
    """
    from ..nn import MomentumODE, NeuralODE

    target_np = _matrix("target", target, real=True)
    eps = check_eps(eps)
    n_steps = check_positive_int("n_steps", n_steps)
    iters = check_positive_int("iters", iters)
    lr = check_real("lr", lr)
    if lr <= 0:
        raise ValueError(f"`lr` must be > 0; got {lr!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int; got {_show(seed)}.")
    n = target_np.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    field_ = _LinearField(0.1 * torch.randn(n, n, generator=gen, dtype=torch.float64))
    if eps > 0:
        model = MomentumODE(field_, eps, n_steps=n_steps, method="leapfrog", gradient="backprop")
    else:
        model = NeuralODE(field_, n_steps=n_steps)
    x0 = torch.eye(n, dtype=torch.float64)
    goal = torch.from_numpy(target_np).T  # row i of the output is M e_i
    norm2 = float((goal**2).sum())

    def loss_fn():
        return ((model(x0) - goal) ** 2).sum() / norm2

    losses: list[float] = []
    adam = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(iters):
        adam.zero_grad()
        loss = loss_fn()
        loss.backward()
        adam.step()
        losses.append(float(loss.detach()))
    # Polish: one L-BFGS run of at most `iters` iterations (strong Wolfe line search), every evaluation recorded.
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iters, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    lbfgs.step(closure)
    with torch.no_grad():
        M = model(x0).T.numpy()
    A = field_.A.detach().numpy().copy()
    return LinearFit(A, _rel_err(M, target_np), _rel_err(_psi_phi_matrix(A, eps, 1.0)[0], target_np), losses, eps)
