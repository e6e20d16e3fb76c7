"""The integrators on their own (driven step by step, without ``odeint``).

Every test is parametrised over the registry ``ode_momentum.INTEGRATORS`` and reads what it expects from the
class attributes ``name``, ``order``, ``n_evals``, ``reversible``, so a new scheme is tested by registering
it. A scheme runs the second-order problem at ``EPS`` when it accepts that inertia, and the first-order
problem (``eps = 0``) otherwise (``euler``).
"""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ode_momentum import INTEGRATORS
from ode_momentum.gradients.reversal import check_reversible
from ode_momentum.integrators import LastCall, Span

DTYPE = torch.float64  # numerical truth

# The bound on |fitted order - declared order| (issue 4 tightened it from 0.15).
ORDER_TOL = 0.1
# Fitted points must lie well above accumulated float64 round-off (~1e-16 per step, <= 2048 steps, solutions
# of size ~1), so a fit cannot flatten at the floor; points below are dropped.
ERROR_FLOOR = 1e-10
# The order is fitted on the FIT_POINTS finest steps above the floor: the asymptotic regime. Coarse steps
# still carry higher-order terms (momentum_exp on the nonlinear field has local slopes 1.6, 1.3, 1.2 between
# h = 1/4 and 1/32, then 1.06, 1.03, ...).
FIT_POINTS = 4
# Steps over HORIZON = 2: h from 1/8 (already resolves eps = 0.5 and the forcing period 2 pi / 3) to 1/1024.
# The finest step is there for `alf`: on x' = -k x its position error is the sum of two h^2 terms of
# opposite sign (the midpoint rule's and the lagging velocity's), so the leading constant is small and the
# h^3 terms dominate down to h ~ 1/256 (local slopes 1.6, 1.9, 2.0, 2.0 from h = 1/128).
STEP_COUNTS = (16, 32, 64, 128, 256, 512, 1024, 2048)
# The bound for inverse_step(step(s)) in float64, relative to the state's size. One step's inverse
# divides by the damping g >= e^-4 in the cases below (yoshida4's outer sub-steps by e^-5.4 at eps = 0.25,
# h = 1, which its expanding middle sub-step partly undoes), so rounding (1e-16) grows to ~2e-14 at most
# (measured: yoshida4 1.8e-14, momentum_exp 5.8e-15, alf 2.2e-16).
INVERSE_RTOL = 1e-12
# The bound for the damping law at h = 1: eps_for_gamma then damping is a few ulps of gamma < 1.
DAMPING_LAW_TOL = 1e-15
# solve_ivp (DOP853, rtol = atol = 1e-12) over a horizon of 2 is accurate to ~1e-11; the closed form must
# agree to this, and order fits against solve_ivp drop errors below REFERENCE_FLOOR (100x that).
REFERENCE_TOL = 1e-9
REFERENCE_FLOOR = 1e-8

# The test problem eps x'' + x' = -k x + a cos(w t) on [T0, T0 + HORIZON]; per feature k = 2 is
# under-damped (4 eps k = 4 > 1) and k = 0.3 over-damped (0.6 < 1).
EPS = 0.5
K = (2.0, 0.3)
T0, HORIZON = 0.25, 2.0
FORCE_A, FORCE_W = 1.5, 3.0


def accepts(cls, eps, h):
    """Whether ``cls`` runs at inertia ``eps`` and step ``h`` (``euler`` needs eps = 0, ``momentum`` h <= eps)."""
    try:
        cls(eps).damping(h)
    except ValueError:
        return False
    return True


def problem_eps(cls):
    """``EPS`` for the schemes of the momentum ODE, 0 for those of the first-order ODE only."""
    if accepts(cls, EPS, HORIZON / STEP_COUNTS[0]):
        return EPS
    if accepts(cls, 0.0, HORIZON / STEP_COUNTS[0]):
        return 0.0
    raise AssertionError(f"{cls.__name__} runs neither at eps = {EPS} nor at eps = 0")


ALL = sorted(INTEGRATORS)
REVERSIBLE = sorted(name for name, cls in INTEGRATORS.items() if cls.reversible)
# A one-evaluation scheme with zero damping at eps = 0 (v = F) can only be explicit Euler; composed schemes
# (several evaluations per step) are first order at eps = 0 but take other sub-steps, and `alf` keeps its
# velocity (damping 1: it reflects v about F).
EULER_AT_EPS_ZERO = sorted(
    name for name, cls in INTEGRATORS.items()
    if accepts(cls, 0.0, 0.1) and cls.n_evals == 1 and cls(0.0).damping(0.1) == 0.0
)


def initial_state(seed=0, shape=(3, 2)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=DTYPE), torch.randn(shape, generator=gen, dtype=DTYPE)


def linear_field(a=0.0, w=0.0):
    k = torch.tensor(K, dtype=DTYPE)
    return lambda t, x: -k * x + a * torch.cos(w * t)


class TanhField:
    """A fixed random tanh MLP conditioned on time, ``F(t, x) = tanh(x W1 + t b) W2``."""

    def __init__(self, d, width=16, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(d, width, generator=gen, dtype=DTYPE) / d**0.5
        self.b = torch.randn(width, generator=gen, dtype=DTYPE)
        self.w2 = torch.randn(width, d, generator=gen, dtype=DTYPE) / width**0.5

    def __call__(self, t, x):
        return torch.tanh(x @ self.w1 + t * self.b) @ self.w2


def integrate(integrator, func, x, v, t0, t1, n_steps):
    """``n_steps`` equal steps from ``t0`` to ``t1`` as a driver does them (shared time tensors, memoised
    ``func``); returns ``x, v`` and the number of actual evaluations of ``func``."""
    memo = LastCall(func)
    h = (t1 - t0) / n_steps
    ts = [torch.tensor(t0 + j * h, dtype=DTYPE) for j in range(n_steps)] + [torch.tensor(t1, dtype=DTYPE)]
    for n in range(n_steps):
        x, v = integrator.step(memo, x, v, Span(ts[n], ts[n + 1], h))
    return x, v, memo.n_calls


def fit_above(fit_order, hs, errors, floor):
    """Least-squares order of the ``FIT_POINTS`` smallest steps whose errors lie above ``floor``."""
    hs, errors = np.asarray(hs), np.asarray(errors)
    keep = np.flatnonzero(errors > floor)[-FIT_POINTS:]  # hs decrease along the arrays
    assert len(keep) == FIT_POINTS, f"too few errors above {floor:g} to fit an order: {errors}"
    return fit_order(hs[keep], errors[keep])


def convergence(fit_order, cls, func, x0, v0, reference, floor=ERROR_FLOOR):
    """Fitted orders of the errors in ``x(T0 + HORIZON)`` and ``v(T0 + HORIZON)``.

    At ``eps = 0`` the run starts from the consistent velocity ``v0 = F(T0, x0)`` of ``x' = F`` (Euler ignores
    ``v0``; ``alf`` carries it, and its velocity converges only from the consistent start).
    """
    eps = problem_eps(cls)
    x_ref, v_ref = reference
    if eps == 0.0:
        v0 = func(torch.tensor(T0, dtype=DTYPE), x0)
    hs, err_x, err_v = [], [], []
    for n in STEP_COUNTS:
        x, v, _ = integrate(cls(eps), func, x0, v0, T0, T0 + HORIZON, n)
        hs.append(HORIZON / n)
        err_x.append(np.abs(x.numpy() - x_ref).max())
        err_v.append(np.abs(v.numpy() - v_ref).max())
    return fit_above(fit_order, hs, err_x, floor), fit_above(fit_order, hs, err_v, floor)


# ---------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ALL)
def test_class_attributes(name):
    cls = INTEGRATORS[name]
    assert cls.name == name
    assert isinstance(cls.order, int) and cls.order >= 1
    assert isinstance(cls.n_evals, int) and cls.n_evals >= 1
    assert isinstance(cls.reversible, bool)


# ------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("forced", [False, True], ids=["free", "forced"])
@pytest.mark.parametrize("eps", [EPS, 0.0])
def test_closed_form_matches_solve_ivp(eps, forced, closed_form):
    """The closed form the order tests trust, against an independent high-accuracy solve."""
    a, w = (FORCE_A, FORCE_W) if forced else (0.0, 0.0)
    x0, v0 = (z.numpy() for z in initial_state())
    k = np.broadcast_to(np.asarray(K), x0.shape).ravel()
    t1 = T0 + HORIZON
    if eps == 0.0:
        sol = solve_ivp(lambda t, x: -k * x + a * np.cos(w * t), (T0, t1), x0.ravel(), method="DOP853",
                        rtol=1e-12, atol=1e-12)
        want_x = sol.y[:, -1].reshape(x0.shape)
    else:
        def rhs(t, y):
            x, v = y[: k.size], y[k.size:]
            return np.concatenate([v, (-k * x + a * np.cos(w * t) - v) / eps])

        sol = solve_ivp(rhs, (T0, t1), np.concatenate([x0.ravel(), v0.ravel()]), method="DOP853", rtol=1e-12,
                        atol=1e-12)
        want_x = sol.y[: k.size, -1].reshape(x0.shape)
        want_v = sol.y[k.size:, -1].reshape(x0.shape)
    got_x, got_v = closed_form(t1, x0, v0, eps=eps, k=K, a=a, w=w, t0=T0)
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=REFERENCE_TOL)
    if eps > 0:
        np.testing.assert_allclose(got_v, want_v, rtol=0, atol=REFERENCE_TOL)


# ----------------------------------------------------------------------------------------------- orders


@pytest.mark.parametrize("forced", [False, True], ids=["free", "forced"])
@pytest.mark.parametrize("name", ALL)
def test_order_on_linear_oscillator(name, forced, closed_form, fit_order):
    """Fitted slope of log(error) vs log(h) equals the declared order, for x(T) and v(T).

    The forced case ``F = -k x + a cos(w t)`` checks that a scheme evaluates ``F`` at the right times (a
    leapfrog whose second half-kick used ``t0`` instead of ``t1`` would drop to order 1).
    """
    cls = INTEGRATORS[name]
    a, w = (FORCE_A, FORCE_W) if forced else (0.0, 0.0)
    x0, v0 = initial_state()
    eps = problem_eps(cls)
    reference = closed_form(T0 + HORIZON, x0.numpy(), v0.numpy(), eps=eps, k=K, a=a, w=w, t0=T0)
    order_x, order_v = convergence(fit_order, cls, linear_field(a, w), x0, v0, reference)
    assert abs(order_x - cls.order) <= ORDER_TOL, f"x: fitted {order_x:.3f}, declared {cls.order}"
    assert abs(order_v - cls.order) <= ORDER_TOL, f"v: fitted {order_v:.3f}, declared {cls.order}"


@pytest.mark.parametrize("name", ALL)
def test_order_on_nonlinear_time_dependent_field(name, fit_order):
    """The forced damped pendulum ``eps x'' + x' = -2 sin(x) + cos(3 t)`` against scipy's DOP853 at
    rtol = atol = 1e-12 (``x' = -2 sin(x) + cos(3 t)`` for the first-order schemes)."""
    cls = INTEGRATORS[name]
    eps = problem_eps(cls)
    x0, v0 = initial_state(seed=1)

    def func(t, x):
        return -2.0 * torch.sin(x) + torch.cos(3.0 * t)

    size = x0.numel()
    if eps == 0.0:
        def rhs(t, y):
            return -2.0 * np.sin(y) + np.cos(3.0 * t)

        y0 = x0.numpy().ravel()
    else:
        def rhs(t, y):
            x, v = y[:size], y[size:]
            return np.concatenate([v, (-2.0 * np.sin(x) + np.cos(3.0 * t) - v) / eps])

        y0 = np.concatenate([x0.numpy().ravel(), v0.numpy().ravel()])
    sol = solve_ivp(rhs, (T0, T0 + HORIZON), y0, method="DOP853", rtol=1e-12, atol=1e-12)
    x_ref = sol.y[:size, -1].reshape(x0.shape)
    if eps == 0.0:
        v_ref = func(torch.tensor(T0 + HORIZON, dtype=DTYPE), torch.from_numpy(x_ref)).numpy()
    else:
        v_ref = sol.y[size:, -1].reshape(x0.shape)
    order_x, order_v = convergence(fit_order, cls, func, x0, v0, (x_ref, v_ref), floor=REFERENCE_FLOOR)
    assert abs(order_x - cls.order) <= ORDER_TOL, f"x: fitted {order_x:.3f}, declared {cls.order}"
    assert abs(order_v - cls.order) <= ORDER_TOL, f"v: fitted {order_v:.3f}, declared {cls.order}"


def test_forced_problem_detects_a_lagged_force_time(closed_form, fit_order):
    """The forced order test has the power it claims: a leapfrog kicking with ``F(t0, .)`` twice fails it."""
    leapfrog = INTEGRATORS["leapfrog"]

    class LaggedLeapfrog(leapfrog):  # a deliberate mutant (integrators are final classes otherwise)
        def step(self, func, x, v, span, **kwargs):
            return super().step(func, x, v, Span(span.t0, span.t0, span.h), **kwargs)

    x0, v0 = initial_state()
    reference = closed_form(T0 + HORIZON, x0.numpy(), v0.numpy(), eps=EPS, k=K, a=FORCE_A, w=FORCE_W, t0=T0)
    order_x, _ = convergence(fit_order, LaggedLeapfrog, linear_field(FORCE_A, FORCE_W), x0, v0, reference)
    assert order_x < leapfrog.order - ORDER_TOL


# ------------------------------------------------------------------------------------------- reversal


def reversible_at(cls, eps, h):
    """Whether ``cls`` accepts ``(eps, h)`` and the reversible mode can invert it there (no zero damping:
    ``momentum`` at ``h = eps``, the damped schemes at ``eps = 0``)."""
    if not accepts(cls, eps, h):
        return False
    try:
        check_reversible(cls(eps), [h], "reversible")
    except ValueError:
        return False
    return True


INVERSE_CASES = [
    (name, eps, h)
    for name in REVERSIBLE
    for eps in (0.0, 0.25, 1.0, 4.0)
    for h in (0.1, 0.5, 1.0)
    if reversible_at(INTEGRATORS[name], eps, h)
]


@pytest.mark.parametrize(("name", "eps", "h"), INVERSE_CASES)
def test_inverse_step_recovers_state(name, eps, h):
    cls = INTEGRATORS[name]
    func = TanhField(5)
    x, v = initial_state(seed=2, shape=(4, 5))
    span = Span(torch.tensor(0.3, dtype=DTYPE), torch.tensor(0.3 + h, dtype=DTYPE), h)
    integrator = cls(eps)
    x1, v1 = integrator.step(func, x, v, span)
    assert (x1 - x).abs().max() > 1e-3 * h  # the step did something
    x_rec, v_rec = integrator.inverse_step(func, x1, v1, span)
    assert float((x_rec - x).abs().max() / x.abs().max()) <= INVERSE_RTOL
    assert float((v_rec - v).abs().max() / v.abs().max()) <= INVERSE_RTOL


@pytest.mark.parametrize("name", REVERSIBLE)
def test_every_reversible_scheme_has_inverse_cases(name):
    assert sum(n == name for n, *_ in INVERSE_CASES) >= 3


@pytest.mark.parametrize("name", REVERSIBLE)
def test_reversal_includes_h_greater_than_eps_when_allowed(name):
    """Guard on the case list above: every scheme that accepts h > eps is reversed at such a step."""
    if accepts(INTEGRATORS[name], 0.25, 1.0):
        assert any(n == name and h > eps for n, eps, h in INVERSE_CASES)


@pytest.mark.parametrize("name", sorted(set(ALL) - set(REVERSIBLE)))
def test_irreversible_scheme_has_no_inverse(name):
    cls = INTEGRATORS[name]
    x, v = initial_state()
    span = Span(torch.tensor(0.0, dtype=DTYPE), torch.tensor(0.1, dtype=DTYPE), 0.1)
    with pytest.raises(NotImplementedError, match="not reversible"):
        cls(problem_eps(cls)).inverse_step(linear_field(), x, v, span)


# ------------------------------------------------------------------------------------ evaluation counts


@pytest.mark.parametrize("name", ALL)
def test_n_evals_is_the_counted_cost_per_step(name):
    """Evaluations of F grow by ``n_evals`` per step (first-same-as-last reuse included)."""
    cls = INTEGRATORS[name]
    x0, v0 = initial_state()
    counts = {}
    for n in (16, 32):
        *_, counts[n] = integrate(cls(problem_eps(cls)), TanhField(2), x0, v0, T0, T0 + HORIZON, n)
    assert counts[32] - counts[16] == cls.n_evals * 16
    assert counts[16] - cls.n_evals * 16 in (0, 1)  # at most one extra evaluation to prime FSAL


# ------------------------------------------------------------------------------------------- eps = 0


@pytest.mark.parametrize("name", EULER_AT_EPS_ZERO)
def test_eps_zero_reduces_to_euler(name):
    x0, v0 = initial_state()
    func = TanhField(2)
    x_euler, *_ = integrate(INTEGRATORS["euler"](0.0), func, x0, v0, T0, T0 + 1.0, 10)
    x, *_ = integrate(INTEGRATORS[name](0.0), func, x0, v0, T0, T0 + 1.0, 10)
    torch.testing.assert_close(x, x_euler, rtol=0, atol=0)  # the same floating-point operations


# ------------------------------------------------------------------------------------- unit-step damping


GAMMAS = (0.0, 0.05, 0.5, 0.9, 0.999, 1.0)


def _has_gamma(cls, gamma):
    try:
        cls.eps_for_gamma(gamma)
    except ValueError:
        return False
    return True


GAMMA_CASES = [(name, g) for name in ALL for g in GAMMAS if _has_gamma(INTEGRATORS[name], g)]


@pytest.mark.parametrize(("name", "gamma"), GAMMA_CASES)
def test_from_gamma_unit_step_damps_by_gamma_exactly(name, gamma):
    cls = INTEGRATORS[name]
    integrator = cls.from_gamma(gamma)
    assert integrator.damping(1.0) == gamma
    assert integrator.gamma(1.0) == gamma
    assert integrator.eps == cls.eps_for_gamma(gamma)
    # eps_for_gamma inverts the scheme's own damping law at h = 1 (up to rounding)
    assert abs(cls(cls.eps_for_gamma(gamma)).damping(1.0) - gamma) <= DAMPING_LAW_TOL


@pytest.mark.parametrize("name", sorted(n for n in REVERSIBLE if accepts(INTEGRATORS[n], EPS, 0.1)))
def test_from_gamma_cases_cover_the_open_interval(name):
    """Every reversible scheme of the momentum ODE (not ``alf``, which has no gamma) is built from gammas."""
    assert sum(0.0 < g < 1.0 for n, g in GAMMA_CASES if n == name) >= 3
