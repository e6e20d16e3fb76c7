"""Linear theory (``ode_momentum.analysis.linear``): the kernels psi / phi against high-precision references, the
matrix kernel, the real range of psi, Culver's criterion, momentum representability with preimages checked by
psi_matrix and by the project's integrators, and learnability by gradient descent.

References used:
- mpmath closed form (50 digits, evaluated at the exact binary inputs, written with the two exponentials
  e^{r+- t} rather than the library's shifted cosh/sinh forms): the dense (eps, lam) grid and complex lam.
- mpmath Taylor-series ODE solve (``mpmath.odefun``) of ``eps x'' + x' = lam x``: a subset of the grid, to pin the
  closed form itself to the ODE (slow).
- mpmath eigen-decomposition (50 digits) for psi_matrix of non-normal matrices.
- ``ode_momentum.odeint`` (leapfrog, float64, Richardson-extrapolated) for preimages.
"""

import math
import re

import mpmath as mp  # high-precision references (test extra of pyproject.toml)
import numpy as np
import pytest
import scipy.linalg
import torch

from ode_momentum.analysis import (
    fit_linear_flow,
    first_zero,
    has_real_logarithm,
    integrate_psi_matrix,
    min_reachable,
    phi,
    psi,
    psi_matrix,
    representable,
)


# psi / phi against a 50-digit reference: the acceptance bound of the issue. The implementation measures about
# 7e-14 at worst on this grid (double-double phase); 1e-10 leaves room for libm differences across platforms.
KERNEL_RTOL = 1e-10
# psi_matrix and preimages against a 50-digit or closed-form reference, normwise (Frobenius). expm-based
# psi_matrix measures ~1e-12 at eps = 1e-3 (error ~ u * ||N||, ||N|| ~ 1 / eps).
MATRIX_RTOL = 1e-10
# Preimages re-integrated with leapfrog + Richardson at 512/1024 steps (order 4): about 1e-9 at eps = 0.1.
INTEGRATION_RTOL = 1e-8
# Fitted order of psi(lam, eps) - exp(lam) as eps -> 0 (expected 1, from the expansion below).
ORDER_TOL = 0.02


def rel_err(x, ref):
    """Frobenius relative error, scaled so that tiny matrices (e^{-1/(2 eps)}) do not underflow."""
    x, ref = np.asarray(x), np.asarray(ref)
    s = np.max(np.abs(ref))
    return float(np.linalg.norm((x - ref) / s) / np.linalg.norm(ref / s))


# ---------------------------------------------------------------------------------------------- references


def kernels_mp(lam, eps, t=1.0, dps=50):
    """psi and phi at the exact binary inputs, from the two exponentials of the roots r+- = (-1 +- s) / (2 eps):

    psi = ((1 + s) e^{r+ t} + (s - 1) e^{r- t}) / (2 s),  phi = eps / s (e^{r+ t} - e^{r- t}).
    """
    real = not np.iscomplexobj(lam)
    with mp.workdps(dps):
        lam, eps, t = mp.mpmathify(lam), mp.mpf(eps), mp.mpf(t)
        s = mp.sqrt(mp.mpc(1 + 4 * eps * lam))
        if s == 0:
            a = t / (2 * eps)
            return mp.e ** (-a) * (1 + a), t * mp.e ** (-a)
        rp, rm = (-1 + s) / (2 * eps), (-1 - s) / (2 * eps)
        ep, em = mp.e ** (rp * t), mp.e ** (rm * t)
        out = ((1 + s) * ep + (s - 1) * em) / (2 * s), eps / s * (ep - em)
        return tuple(mp.re(z) for z in out) if real else out


def kernels_ode_mp(lam, eps, dps=25):
    """x(1) of eps x'' + x' = lam x from (1, 0) and from (0, 1), by mpmath's Taylor-series ODE solver."""
    with mp.workdps(dps):
        lam, eps = mp.mpf(lam), mp.mpf(eps)

        def field(_t, y):
            return [y[1], (lam * y[0] - y[1]) / eps]

        x_psi = mp.odefun(field, 0, [mp.mpf(1), mp.mpf(0)])(1)[0]
        x_phi = mp.odefun(field, 0, [mp.mpf(0), mp.mpf(1)])(1)[0]
        return x_psi, x_phi


def psi_matrix_mp(A, eps, dps=50):
    """psi(A) = V psi(Lambda) V^{-1} from a 50-digit eigen-decomposition of the exact float matrix A."""
    with mp.workdps(dps):
        M = mp.matrix(A.tolist())
        E, V = mp.eig(M)
        P = V * mp.diag([kernels_mp(e, eps, dps=dps)[0] for e in E]) * mp.inverse(V)
        return np.array([[float(mp.re(P[i, j])) for j in range(A.shape[1])] for i in range(A.shape[0])])


def similar(M, seed=0, cond=3.0):
    """X M X^{-1} with X symmetric positive definite of condition number ``cond`` (seeded)."""
    rng = np.random.default_rng(seed)
    n = M.shape[0]
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    X = Q @ np.diag(np.linspace(1.0, cond, n)) @ Q.T
    return X @ M @ np.linalg.inv(X)


EPS_GRID = np.logspace(-3, 3, 13)


def lam_grid(eps):
    """lam in [-1e4, 10]: log-spaced magnitudes, zero, and points around the critical lam = -1/(4 eps)."""
    crit = -1.0 / (4.0 * eps)
    near = [crit * (1 + d) for d in (-1e-1, -1e-4, -1e-8, -1e-12, 1e-12, 1e-8, 1e-4, 1e-1)]
    lams = np.concatenate([-np.logspace(4, -3, 50), [0.0], np.logspace(-3, 1, 12), near])
    return lams[(lams >= -1e4) & (lams <= 10)]


# ---------------------------------------------------------------------------------------------- scalar kernels


def test_psi_phi_match_high_precision_closed_form_on_grid():
    worst_psi = worst_phi = 0.0
    for eps in EPS_GRID:
        lams = lam_grid(eps)
        got_psi, got_phi = psi(lams, eps), phi(lams, eps)
        for lam, p, f in zip(lams, got_psi, got_phi):
            ref_psi, ref_phi = kernels_mp(lam, eps)
            worst_psi = max(worst_psi, abs(float((p - ref_psi) / ref_psi)))
            worst_phi = max(worst_phi, abs(float((f - ref_phi) / ref_phi)))
    assert worst_psi < KERNEL_RTOL, worst_psi
    assert worst_phi < KERNEL_RTOL, worst_phi


@pytest.mark.slow
@pytest.mark.parametrize(
    "eps, lam",
    [(1.0, -20.0), (0.1, -50.0), (10.0, -1000.0), (1e-3, -10.0), (1e3, -1e4), (0.05, 5.0), (0.02, -12.5)],
)
def test_closed_form_matches_mpmath_ode_solve(eps, lam):
    # The independent reference: a 25-digit Taylor-series solve of the ODE itself pins the closed form used on the
    # dense grid, and the float kernels directly.
    x_psi, x_phi = kernels_ode_mp(lam, eps)
    ref_psi, ref_phi = kernels_mp(lam, eps)
    assert abs(float(x_psi / ref_psi - 1)) < 1e-15
    assert abs(float(x_phi / ref_phi - 1)) < 1e-15
    assert abs(float(psi(lam, eps) / x_psi - 1)) < KERNEL_RTOL
    assert abs(float(phi(lam, eps) / x_phi - 1)) < KERNEL_RTOL


@pytest.mark.parametrize("eps", [0.01, 0.3, 1.0, 30.0])
def test_psi_phi_complex_lam_match_closed_form(eps):
    lams = np.array([r * np.exp(1j * th) for r in (0.5, 20.0, 300.0) for th in (0.3, 1.5, 2.8, -2.0, math.pi)])
    got_psi, got_phi = psi(lams, eps), phi(lams, eps)
    assert got_psi.dtype == np.complex128
    for lam, p, f in zip(lams, got_psi, got_phi):
        ref_psi, ref_phi = (complex(z) for z in kernels_mp(lam, eps))
        assert abs(p - ref_psi) <= KERNEL_RTOL * abs(ref_psi)
        assert abs(f - ref_phi) <= KERNEL_RTOL * abs(ref_phi)
    # A real argument stored as complex takes the real (double-double) path.
    assert psi(np.array([-5.0 + 0j]), eps)[0] == psi(-5.0, eps)


def test_psi_is_the_horizon_one_kernel_rescaled():
    # eps x'' + x' = lam x on [0, t] is (eps / t) y'' + y' = (lam t) y on [0, 1].
    lams = np.array([-40.0, -3.0, 0.0, 2.0])
    for eps, t in [(0.5, 2.0), (3.0, 0.25)]:
        np.testing.assert_allclose(psi(lams, eps, t), psi(lams * t, eps / t), rtol=1e-13)
        np.testing.assert_allclose(phi(lams, eps, t), t * phi(lams * t, eps / t), rtol=1e-13)
    assert psi(3.0, 0.7, t=0.0) == 1.0 and phi(3.0, 0.7, t=0.0) == 0.0


def test_psi_eps_to_zero_is_exp_at_rate_one(fit_order):
    # s = 1 + 2 eps lam - 2 eps^2 lam^2 + ..., r+ t = 2 t lam / (1 + s) = lam t - eps lam^2 t + O(eps^2), and the
    # weight (1 + s) / (2 s) = 1 - eps lam + O(eps^2); the other root contributes O(eps e^{-t/eps}). Hence
    # psi = exp(lam t) (1 - eps lam (1 + lam t)) + O(eps^2): order 1 in eps, constant -lam (1 + lam) at t = 1
    # (it vanishes at lam = -1, so lam = -1 is avoided). phi = eps exp(lam t) (1 + O(eps)).
    eps_values = np.logspace(-7, -3, 9)
    for lam in (1.0, -2.0, 0.5):
        errors = [abs(psi(lam, e) - math.exp(lam)) for e in eps_values]
        assert fit_order(eps_values, errors) == pytest.approx(1.0, abs=ORDER_TOL)
        constant = (psi(lam, 1e-7) - math.exp(lam)) / (1e-7 * math.exp(lam))
        assert constant == pytest.approx(-lam * (1 + lam), rel=1e-4)
        assert phi(lam, 1e-7) / (1e-7 * math.exp(lam)) == pytest.approx(1.0, rel=1e-5)
    assert psi(-2.0, 0.0) == math.exp(-2.0) and phi(-2.0, 0.0) == 0.0


def test_psi_extremes_overflow_and_underflow_quietly():
    # No RuntimeWarning (pytest turns warnings into errors): inf above the float64 range, 0 below it.
    assert psi(1e4, 1e-3) == math.inf
    assert psi(-1e4, 1e-5) == 0.0
    assert psi(5.0, 1e-300) == pytest.approx(math.exp(5.0), rel=1e-14)  # a = 5e299: the eps -> 0 limit
    assert psi(1e-10, 1e301) == pytest.approx(1.0)  # splitting 4 eps for the exact product would overflow
    assert abs(psi(-1e200, 1.0)) < 1.0  # phase 1e100: meaningless, but bounded by the envelope


def test_psi_returns_the_callers_type():
    out = psi(torch.tensor([-1.0, 2.0], dtype=torch.float32), 1.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    out = psi(torch.tensor([-1.0 + 1j], dtype=torch.complex128), 1.0)
    assert out.dtype == torch.complex128
    assert isinstance(psi(-1.0, 1.0), float)
    assert psi(np.zeros((2, 3)), 1.0).shape == (2, 3)
    assert psi([1, 2], 1.0).dtype == np.float64


# ---------------------------------------------------------------------------------------------- matrix kernel


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.3, 1.0, 30.0, 1e3])
def test_psi_matrix_of_diagonal_is_psi(eps):
    lams = np.array([-1e4, -800.0, -1 / (4 * eps), -30.0, -1.0, 0.0, 3.0, 10.0])
    ref = psi(lams, eps)
    got = np.diag(psi_matrix(np.diag(lams), eps))
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(got - ref)) <= MATRIX_RTOL * scale


@pytest.mark.parametrize(
    "eps, lams",
    [
        (1e-3, [-300.0, -260.0, -255.0, -251.0]),  # all oscillatory, psi ~ e^{-500}
        (1e-3, [-300.0, 1.0, 5.0, -260.0]),
        (0.02, [-12.0, -12.6, -13.0, -40.0]),  # around the critical -1/(4 eps) = -12.5
        (0.3, [-3.0, -40.0, -100.0, -1e4]),
        (1.0, [-1e4, -20.0, 2.0, 10.0]),
        (1e-6, [-10.0, -3.0, 0.5, 4.0]),  # singular-perturbation route (sqrtm)
    ],
)
def test_psi_matrix_non_normal_matches_high_precision(eps, lams):
    rng = np.random.default_rng(1)
    X = np.eye(4) + 0.5 * rng.standard_normal((4, 4))
    A = X @ np.diag(lams) @ np.linalg.inv(X)
    assert rel_err(psi_matrix(A, eps), psi_matrix_mp(A, eps)) < MATRIX_RTOL


def test_psi_matrix_limits_and_types():
    A = np.array([[-1.0, 2.0], [0.5, -3.0]])
    np.testing.assert_allclose(psi_matrix(A, 0.0), scipy.linalg.expm(A), rtol=1e-14)
    np.testing.assert_allclose(psi_matrix(A, 0.4, t=2.0), psi_matrix(2.0 * A, 0.2), rtol=1e-12)
    out = psi_matrix(torch.tensor(A, dtype=torch.float32), 0.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert np.iscomplexobj(psi_matrix(A + 1j * np.eye(2), 0.5))


def test_psi_matrix_matches_the_projects_integrator():
    A = np.array([[-2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [0.0, -4.0, -0.5]])
    assert rel_err(integrate_psi_matrix(A, 0.5, n_steps=256), psi_matrix(A, 0.5)) < INTEGRATION_RTOL


# ---------------------------------------------------------------------------------------------- real range of psi


def test_min_reachable_grows_towards_minus_one_and_never_reaches_it():
    eps_values = np.logspace(-1, 3, 9)
    values = [min_reachable(e).value for e in eps_values]
    assert all(-1.0 < v < 0.0 for v in values)
    assert all(b < a for a, b in zip(values, values[1:]))  # more negative as eps grows
    assert values[-1] < -0.999
    assert min_reachable(1.0).value == pytest.approx(-0.6134986031674047, rel=1e-12)


@pytest.mark.parametrize("eps", [0.05, 1.0, 20.0])
def test_min_reachable_is_the_global_minimum_and_first_zero_the_last_sign_change(eps):
    low, zero = min_reachable(eps), first_zero(eps)
    assert psi(low.lam, eps) == pytest.approx(low.value, rel=1e-14)
    # A dense scan over many oscillations finds nothing lower.
    lams = np.linspace(low.lam * 60, 10.0, 400_001)
    values = psi(lams, eps)
    assert values.min() >= low.value * (1 + 1e-12)
    assert abs(psi(zero, eps)) <= 1e-13 * abs(low.value)
    assert np.all(values[lams > zero * (1 - 1e-9)] > 0)
    assert low.lam < zero < -1 / (4 * eps)


# ---------------------------------------------------------------------------------------------- Culver's criterion

J2 = np.array([[-1.0, 1.0], [0.0, -1.0]])


def rotation(angle):
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


CULVER_CASES = [
    ("diag(-1, 2)", np.diag([-1.0, 2.0]), False, "negative eigenvalue -1"),
    ("diag(-1, -1)", np.diag([-1.0, -1.0]), True, "pairs"),
    ("one Jordan block J2(-1)", J2, False, r"sizes \[2\]"),
    ("two blocks J2(-1)", np.kron(np.eye(2), J2), True, "pairs"),
    ("J2(-1) + [-1]", scipy.linalg.block_diag(J2, [[-1.0]]), False, r"sizes \[2, 1\]"),
    ("J3(-1) twice", np.kron(np.eye(2), np.eye(3) * -1 + np.eye(3, k=1)), True, "pairs"),
    ("singular diag(0, 1)", np.diag([0.0, 1.0]), False, "singular"),
    ("nilpotent J2(0)", np.array([[0.0, 1.0], [0.0, 0.0]]), False, "singular"),
    ("zero matrix", np.zeros((2, 2)), False, "singular"),
    ("rotation 1 rad", rotation(1.0), True, "no negative eigenvalue"),
    ("rotation pi/2", rotation(math.pi / 2), True, "no negative eigenvalue"),
    ("rotation pi", rotation(math.pi), True, "pairs"),
    ("scaled rotation 3 rad", 2.0 * rotation(3.0), True, "no negative eigenvalue"),
    ("diag(-2, -2, -2)", -2.0 * np.eye(3), False, "odd number"),
    ("diag(-2, -2, -3, -3)", np.diag([-2.0, -2.0, -3.0, -3.0]), True, "pairs"),
    ("positive diag", np.diag([0.5, 3.0]), True, "no negative eigenvalue"),
]


@pytest.mark.parametrize("name, D, expected, reason", CULVER_CASES, ids=[c[0] for c in CULVER_CASES])
@pytest.mark.parametrize("transform", ["exact", "similar"])
def test_has_real_logarithm_table(name, D, expected, reason, transform):
    # "similar": the same Jordan structure seen through a rounded similarity (condition 3), so that repeated and
    # defective eigenvalues arrive split by rounding.
    M = D if transform == "exact" else similar(D, seed=len(name))
    result = has_real_logarithm(M)
    assert bool(result) is expected
    assert result.exists is expected
    assert result.reason and re.search(reason, result.reason)


def test_has_real_logarithm_agrees_with_scipy_logm_when_it_exists():
    for _name, D, expected, _ in CULVER_CASES:
        if expected:
            L = scipy.linalg.logm(D)
            if np.iscomplexobj(L):  # the principal log is complex for pairs of negative eigenvalues
                continue
            assert rel_err(scipy.linalg.expm(L), D) < 1e-12


# ---------------------------------------------------------------------------------------------- momentum flows

D_NEG = np.diag([-1.0, 2.0])


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0, 3.0, 30.0])
def test_diag_minus_one_two_is_reachable_with_momentum_only(eps):
    result = representable(D_NEG, eps)
    low = min_reachable(eps)
    assert result.max_scale == pytest.approx(abs(low.value), rel=1e-14)
    assert result.attained and result.limiting_eigenvalue == pytest.approx(-1.0)
    for alpha in (0.5 * result.max_scale, result.max_scale):
        assert not has_real_logarithm(alpha * D_NEG)  # det < 0 at every scale
        A = result.preimage(alpha)
        assert A.dtype == np.float64
        assert rel_err(psi_matrix(A, eps), alpha * D_NEG) < MATRIX_RTOL
    # The eigenvalue -1 is mapped from the minimum itself at alpha = max_scale.
    assert np.sort(np.diag(result.preimage(result.max_scale)))[0] == pytest.approx(low.lam, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
def test_preimage_verified_by_integration(eps):
    result = representable(similar(D_NEG, seed=3), eps)
    alpha = result.max_scale
    A = result.preimage(alpha)
    assert rel_err(integrate_psi_matrix(A, eps, n_steps=512), alpha * similar(D_NEG, seed=3)) < INTEGRATION_RTOL


def J(lam, k):
    return lam * np.eye(k) + np.eye(k, k=1)


@pytest.mark.parametrize(
    "name, D, max_scale_over_m, attained",
    [
        ("rotation", rotation(2.0), math.inf, True),
        ("diag(-1, -1): a complex-conjugate preimage", np.diag([-1.0, -1.0]), math.inf, True),
        ("diag(-2, -1, 3)", np.diag([-2.0, -1.0, 3.0]), 0.5, True),
        ("J2(-1): defective at the boundary", J(-1.0, 2), 1.0, False),
        ("singular diag(0, -1)", np.diag([0.0, -1.0]), 1.0, True),
        ("J2(0.5) + rotation", scipy.linalg.block_diag(J(0.5, 2), 3 * rotation(2.5)), math.inf, True),
        ("J2(-1) twice + [-4]", scipy.linalg.block_diag(J(-1.0, 2), J(-1.0, 2), [[-4.0]]), 0.25, True),
    ],
)
@pytest.mark.parametrize("eps", [0.2, 2.0])
def test_representable_table(name, D, max_scale_over_m, attained, eps):
    D = similar(D, seed=7)
    result = representable(D, eps)
    m = abs(min_reachable(eps).value)
    assert result.max_scale == pytest.approx(max_scale_over_m * m, rel=1e-9)
    assert result.attained is attained
    alphas = [0.5 * result.max_scale] if math.isfinite(result.max_scale) else [0.5 * m, 3.0]
    if attained and math.isfinite(result.max_scale):
        alphas.append(result.max_scale)
    for alpha in alphas:
        A = result.preimage(alpha)
        assert rel_err(psi_matrix(A, eps), alpha * D) < MATRIX_RTOL, (name, alpha)


def test_representable_random_matrix():
    D = np.random.default_rng(0).standard_normal((5, 5))
    for eps in (0.1, 1.0, 10.0):
        result = representable(D, eps)
        for alpha in (0.3 * result.max_scale, result.max_scale):
            assert rel_err(psi_matrix(result.preimage(alpha), eps), alpha * D) < MATRIX_RTOL


def test_preimage_errors_name_the_obstruction():
    result = representable(J(-1.0, 2), 1.0)
    with pytest.raises(ValueError, match="not reachable.*defective Jordan structure at the boundary"):
        result.preimage(result.max_scale)
    with pytest.raises(ValueError, match="exceeds max_scale"):
        result.preimage(2 * result.max_scale)
    with pytest.raises(ValueError, match="`alpha` must be > 0"):
        result.preimage(0.0)
    with pytest.raises(TypeError, match="`alpha` must be a real number"):
        result.preimage("1")
    with pytest.raises(NotImplementedError, match="paired Jordan blocks"):
        representable(np.kron(np.eye(2), J(-1.0, 2)), 1.0).preimage(5.0)


# ---------------------------------------------------------------------------------------------- learnability


@pytest.mark.slow
def test_momentum_ode_learns_what_a_first_order_model_cannot():
    eps = 1.0
    alpha = 0.5 * representable(D_NEG, eps).max_scale
    momentum = fit_linear_flow(alpha * D_NEG, eps, n_steps=32, iters=100)
    assert momentum.model_error < 1e-3
    first_order = fit_linear_flow(alpha * D_NEG, 0.0, n_steps=32, iters=100)
    # (I + A/32)^32 and exp(A) have det >= 0; the nearest such matrix to alpha D is sigma_min(alpha D) = alpha away.
    assert first_order.model_error >= (1 / math.sqrt(5)) * (1 - 1e-9)
    assert first_order.flow_error >= (1 / math.sqrt(5)) * (1 - 1e-9)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: psi("x", 1.0), TypeError, "`lam` must be a number"),
        (lambda: psi(torch.tensor([True]), 1.0), TypeError, "`lam` must be a real or complex tensor"),
        (lambda: psi(np.array([1.0, np.nan]), 1.0), ValueError, "`lam` has 1 non-finite"),
        (lambda: psi(1.0, -1.0), ValueError, "`eps` must be >= 0"),
        (lambda: phi(1.0, 1.0, t=-1.0), ValueError, "`t` must be >= 0"),
        (lambda: psi(1e10, 1e300), ValueError, "outside the supported range"),
        (lambda: psi_matrix(np.ones((2, 3)), 1.0), ValueError, "`A` must be a non-empty square"),
        (lambda: psi_matrix(np.array([[np.inf]]), 1.0), ValueError, "`A` has 1 non-finite"),
        (lambda: psi_matrix("A", 1.0), TypeError, "`A` must be a square matrix"),
        (lambda: has_real_logarithm(np.eye(2) * 1j), TypeError, "`D` must be a real matrix"),
        (lambda: representable(np.eye(2), 0.0), ValueError, "`eps` must be > 0"),
        (lambda: min_reachable(0.0), ValueError, "`eps` must be > 0"),
        (lambda: first_zero("1"), TypeError, "`eps` must be a real number"),
        (lambda: integrate_psi_matrix(np.eye(2), 1.0, n_steps=0), ValueError, "`n_steps` must be >= 1"),
        (lambda: fit_linear_flow(np.eye(2), 1.0, lr=0.0), ValueError, "`lr` must be > 0"),
        (lambda: fit_linear_flow(np.eye(2), 1.0, seed=True), TypeError, "`seed` must be an int"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
