"""``odeint`` and the layers built on it (``MomentumODE``, ``MomentumResNet``), in float64.

``odeint`` is checked against the closed-form damped, forced linear oscillator at every output time, with
the order fitted by least squares; then the grid (``step_size``), the evaluation counts (first same as
last), the ``eps = 0`` limit, and the front ends against the hand-written recurrence and ``odeint``.
"""

import numpy as np
import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum import INTEGRATORS, odeint
from ode_momentum.gradients import make_grid

DTYPE = torch.float64  # numerical truth

# The bound on |fitted order - declared order| (issue 4 tightened it from 0.15).
ORDER_TOL = 0.1
# Fitted errors must lie well above float64 round-off (<= 1024 steps of ~1e-16 each on solutions of size
# ~1), so a fit cannot flatten at the floor; points below are dropped.
ERROR_FLOOR = 1e-10
# The order is fitted on the FIT_POINTS finest steps above the floor (the asymptotic regime; coarse steps
# still carry higher-order terms).
FIT_POINTS = 4
# Steps per output interval (4 intervals of 0.5): h from 1/8 to 1/512, as in test_integrators.
STEPS_PER_INTERVAL = (4, 8, 16, 32, 64, 128, 256)
# The bound for MomentumResNet against the recurrence written out by hand in float64: the same
# operations, so the only slack is association order (a few ulps over a depth of 8).
RECURRENCE_TOL = 1e-14
# MomentumResNet.inverse in float64: reversal divides by gamma = 0.9 per layer, so rounding grows by
# 0.9^-8 ~ 2.3 over the depth; 1e-12 leaves three digits of margin.
INVERSE_RTOL = 1e-12

# eps x'' + x' = -k x + a cos(w t) from T0; k = 2 under-damped (4 eps k = 4 > 1), k = 0.3 over-damped.
EPS = 0.5
K = (2.0, 0.3)
T0, HORIZON = 0.25, 2.0
FORCE_A, FORCE_W = 1.5, 3.0
GAMMA, DEPTH, WIDTH = 0.9, 8, 6


def accepts(cls, eps, h):
    """Whether ``cls`` runs at inertia ``eps`` and step ``h`` (``euler`` needs eps = 0, ``momentum`` h <= eps)."""
    try:
        cls(eps).damping(h)
    except ValueError:
        return False
    return True


def problem_eps(name):
    """``EPS`` for the schemes of the momentum ODE, 0 for those of the first-order ODE only (``euler``)."""
    return EPS if accepts(INTEGRATORS[name], EPS, 0.5 / STEPS_PER_INTERVAL[0]) else 0.0


ALL = sorted(INTEGRATORS)
ACCEPT_EPS_ZERO = sorted(name for name, cls in INTEGRATORS.items() if accepts(cls, 0.0, 0.1))
# A one-evaluation scheme with zero damping at eps = 0 (v = F) can only be explicit Euler; composed schemes
# (several evaluations per step) are first order at eps = 0 but take other sub-steps, and `alf` keeps its
# velocity (damping 1: it reflects v about F).
EULER_AT_EPS_ZERO = sorted(
    name for name in ACCEPT_EPS_ZERO
    if INTEGRATORS[name].n_evals == 1 and INTEGRATORS[name](0.0).damping(0.1) == 0.0
)


def initial_state(seed=0, shape=(3, 2)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=DTYPE), torch.randn(shape, generator=gen, dtype=DTYPE)


def linear_field(a=0.0, w=0.0):
    k = torch.tensor(K, dtype=DTYPE)
    return lambda t, x: -k * x + a * torch.cos(w * t)


def output_times(n=5):
    return T0 + torch.linspace(0.0, HORIZON, n, dtype=DTYPE)


class CountingField:
    """``F(t, x) = tanh(x W + t b)`` that counts its evaluations and records the times it was called at."""

    def __init__(self, d, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(d, d, generator=gen, dtype=DTYPE) / d**0.5
        self.b = torch.randn(d, generator=gen, dtype=DTYPE)
        self.n_calls = 0
        self.times = []

    def __call__(self, t, x):
        self.n_calls += 1
        self.times.append(float(t))
        return torch.tanh(x @ self.w + t * self.b)


def evaluates_at_step_start(name):
    """Whether method ``name`` evaluates ``F`` at the start time of a step (probed on one step)."""
    func = CountingField(2)
    x0, v0 = initial_state()
    odeint(func, (x0, v0), torch.tensor([0.0, 0.1], dtype=DTYPE), eps=problem_eps(name), method=name, n_steps=1)
    return 0.0 in func.times


def fit_finest(fit_order, hs, errors):
    """Least-squares order of the ``FIT_POINTS`` smallest steps whose errors lie above ``ERROR_FLOOR``."""
    hs, errors = np.asarray(hs), np.asarray(errors)
    keep = np.flatnonzero(errors > ERROR_FLOOR)[-FIT_POINTS:]  # hs decrease along the arrays
    assert len(keep) == FIT_POINTS, f"too few errors above {ERROR_FLOOR:g} to fit an order: {errors}"
    return fit_order(hs[keep], errors[keep])


def mlp(d=WIDTH):
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d)).to(DTYPE)


# ----------------------------------------------------------------------------------- closed-form orders


@pytest.mark.parametrize("name", ALL)
def test_order_at_every_output_time(name, closed_form, fit_order):
    """Errors over all output times of the forced oscillator converge at the declared order (x and v)."""
    cls = INTEGRATORS[name]
    eps = problem_eps(name)
    x0, v0 = initial_state()
    t = output_times()
    if eps == 0.0:  # the consistent velocity of x' = F (Euler ignores v0; alf converges only from it)
        v0 = linear_field(FORCE_A, FORCE_W)(t[0], x0)
    want_x, want_v = closed_form(t.numpy()[:, None, None], x0.numpy(), v0.numpy(), eps=eps, k=K, a=FORCE_A,
                                 w=FORCE_W, t0=T0)
    hs, err_x, err_v = [], [], []
    for m in STEPS_PER_INTERVAL:
        xs, vs = odeint(linear_field(FORCE_A, FORCE_W), (x0, v0), t, eps=eps, method=name, n_steps=m)
        hs.append(HORIZON / (len(t) - 1) / m)
        err_x.append(np.abs(xs.numpy() - want_x).max())
        err_v.append(np.abs(vs[1:].numpy() - want_v[1:]).max())  # vs[0] is v0, exact by construction
    order_x, order_v = fit_finest(fit_order, hs, err_x), fit_finest(fit_order, hs, err_v)
    assert abs(order_x - cls.order) <= ORDER_TOL, f"x: fitted {order_x:.3f}, declared {cls.order}"
    assert abs(order_v - cls.order) <= ORDER_TOL, f"v: fitted {order_v:.3f}, declared {cls.order}"


@pytest.mark.parametrize("name", ACCEPT_EPS_ZERO)
def test_eps_zero_is_first_order_neural_ode(name, fit_order):
    """At eps = 0 every scheme that accepts it solves ``x' = -k x``, ``x0 exp(-k (t - t0))``: the schemes of the
    momentum ODE to first order (their damping-kicks become Euler sub-steps), those written for ``x' = F``
    (``euler``, ``alf``) at their declared order. The run starts from the consistent velocity ``-k x0``."""
    x0, _ = initial_state()
    t = output_times()
    k = torch.tensor(K, dtype=DTYPE)
    want = x0 * torch.exp(-k * (t - T0)[:, None, None])
    hs, errors = [], []
    for m in STEPS_PER_INTERVAL:
        xs, _ = odeint(lambda t, x: -k * x, (x0, -k * x0), t, eps=0.0, method=name, n_steps=m)
        hs.append(HORIZON / (len(t) - 1) / m)
        errors.append(float((xs - want).abs().max()))
    order = fit_finest(fit_order, hs, errors)
    expected = INTEGRATORS[name].order if problem_eps(name) == 0.0 else 1
    assert abs(order - expected) <= ORDER_TOL, f"fitted {order:.3f}, expected {expected}"


@pytest.mark.parametrize("name", EULER_AT_EPS_ZERO)
def test_eps_zero_positions_equal_euler(name):
    func = CountingField(2)
    x0, v0 = initial_state()
    want, _ = odeint(func, (x0, v0), output_times(), eps=0.0, method="euler", n_steps=3)
    got, _ = odeint(func, (x0, v0), output_times(), eps=0.0, method=name, n_steps=3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same floating-point operations


# ------------------------------------------------------------------------------------ outputs and grid


@pytest.mark.parametrize("name", ALL)
def test_output_shapes_and_initial_state(name):
    x0, v0 = initial_state(shape=(2, 3, 4))
    t = output_times(4)
    xs, vs = odeint(lambda t, x: -x, (x0, v0), t, eps=problem_eps(name), method=name, step_size=0.1)
    assert xs.shape == vs.shape == (len(t), *x0.shape)
    assert xs.dtype == vs.dtype == DTYPE
    assert torch.equal(xs[0], x0)
    assert torch.equal(vs[0], v0)
    eps = problem_eps(name)
    _, vs_rest = odeint(lambda t, x: -x, (x0, None), t, eps=eps, method=name, step_size=0.1)
    # v0 = None: rest for eps > 0; for x' = F (eps = 0) the consistent velocity F(t0, x0) (euler ignores it)
    want = torch.zeros_like(x0) if eps > 0 or name == "euler" else -x0
    assert torch.equal(vs_rest[0], want)


@pytest.mark.parametrize("name", ALL)
def test_step_size_uses_fewest_equal_steps_and_hits_output_times(name):
    """``step_size`` that does not divide the intervals: ceil(length / step_size) equal steps per interval."""
    eps = problem_eps(name)
    x0, v0 = initial_state()
    t = torch.tensor([0.0, 0.5, 1.7, 1.8], dtype=DTYPE)
    step_size = 0.3
    counts = (2, 4, 1)  # ceil(0.5 / 0.3), ceil(1.2 / 0.3), ceil(0.1 / 0.3)
    func = CountingField(2)
    xs, vs = odeint(func, (x0, v0), t, eps=eps, method=name, step_size=step_size)

    # each interval's first step starts at its output time, bitwise (the step counts and lengths are
    # checked on the grid itself in test_grid_hits_output_times_exactly); seen through F's evaluation times,
    # so only for the schemes that evaluate F at the start of a step (not alf: it evaluates at midpoints)
    if evaluates_at_step_start(name):
        for tk in t[:-1].tolist():
            assert tk in func.times

    # the same as n_steps = m on each interval, chained
    x, v = x0, v0
    for k, m in enumerate(counts):
        pair = t[k:k + 2]
        xk, vk = odeint(func, (x, v), pair, eps=eps, method=name, n_steps=m)
        x, v = xk[-1], vk[-1]
        torch.testing.assert_close(xs[k + 1], x, rtol=0, atol=0)
        torch.testing.assert_close(vs[k + 1], v, rtol=0, atol=0)


def test_grid_hits_output_times_exactly():
    """The step grid behind ``odeint``: output times are step boundaries bitwise, steps <= step_size."""
    t = torch.tensor([0.1, 0.5, 1.7, 1.8], dtype=DTYPE)
    spans, save_at = make_grid(t.tolist(), 0.3, None, t)
    assert save_at == [0, 2, 6, 7]
    for k, n in enumerate(save_at[:-1]):
        assert torch.equal(spans[n].t0, t[k])
    assert torch.equal(spans[-1].t1, t[-1])
    for before, after in zip(spans[:-1], spans[1:]):
        assert before.t1 is after.t0  # shared time tensors: first-same-as-last reuse keys on identity
    assert all(0 < span.h <= 0.3 for span in spans)


@pytest.mark.parametrize("name", ALL)
def test_step_size_equals_n_steps_equivalent(name):
    x0, v0 = initial_state()
    t = torch.tensor([0.0, 1.0, 2.0], dtype=DTYPE)
    func = CountingField(2)
    by_size = odeint(func, (x0, v0), t, eps=problem_eps(name), method=name, step_size=0.3)
    by_count = odeint(func, (x0, v0), t, eps=problem_eps(name), method=name, n_steps=4)  # ceil(1 / 0.3)
    for got, want in zip(by_size, by_count):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("grid", [{"step_size": 0.1}, {"n_steps": 1}], ids=["step_size", "n_steps"])
def test_momentum_step_equal_to_eps_up_to_rounding_is_accepted(grid):
    """Output times every eps = 0.1 (``linspace(0, 1, 11)``) with the largest step ``momentum`` allows, h = eps.

    Mathematically every step is h = eps (g = 0); in float some intervals are 0.1 + 9e-17.
    """
    x0, v0 = initial_state()
    t = torch.linspace(0.0, 1.0, 11, dtype=DTYPE)
    xs, vs = odeint(linear_field(), (x0, v0), t, eps=0.1, method="momentum", **grid)
    assert xs.shape == (len(t), *x0.shape)
    assert bool(torch.isfinite(xs).all() and torch.isfinite(vs).all())


# ----------------------------------------------------------------------------------- evaluation counts


def count_evals(name, n_steps_per_interval, t):
    func = CountingField(2)
    x0, v0 = initial_state()
    odeint(func, (x0, v0), t, eps=problem_eps(name), method=name, n_steps=n_steps_per_interval)
    return func.n_calls


def test_leapfrog_reuses_last_evaluation():
    """First same as last, across output times too: N steps cost N + 1 evaluations."""
    t = output_times(4)
    assert count_evals("leapfrog", 5, t) == 3 * 5 + 1


def test_momentum_makes_one_evaluation_per_step():
    t = output_times(4)
    assert count_evals("momentum", 5, t) == 3 * 5


@pytest.mark.parametrize("name", ALL)
def test_counted_evaluations_match_n_evals(name):
    t = output_times(4)
    n_evals = INTEGRATORS[name].n_evals
    coarse, fine = count_evals(name, 5, t), count_evals(name, 10, t)  # 15 and 30 steps in all
    assert fine - coarse == n_evals * 15
    assert coarse - n_evals * 15 in (0, 1)  # at most one evaluation to prime first-same-as-last reuse


# ----------------------------------------------------------------------------------------- MomentumODE


class TimeField(nn.Module):
    """``F(t, x) = W2 tanh(W1 x + t b)``, a time-conditioned field as an ``nn.Module``."""

    def __init__(self, d=WIDTH):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(d, d), nn.Linear(d, d)
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, t, x):
        return self.lin2(torch.tanh(self.lin1(x) + t * self.b))


@pytest.mark.parametrize("name", ALL)
def test_momentum_ode_equals_odeint(name):
    torch.manual_seed(0)
    func = TimeField().to(DTYPE)
    eps = problem_eps(name)
    x0, v0 = initial_state(shape=(4, WIDTH))
    layer = om.MomentumODE(func, eps, t1=1.5, n_steps=12, method=name, gradient="backprop")
    xs, vs = odeint(func, (x0, v0), torch.tensor([0.0, 1.5], dtype=DTYPE), eps=eps, method=name, n_steps=12)
    x1, v1 = layer.forward_state(x0, v0)
    torch.testing.assert_close(x1, xs[-1], rtol=0, atol=0)  # the same call underneath
    torch.testing.assert_close(v1, vs[-1], rtol=0, atol=0)
    torch.testing.assert_close(layer(x0), odeint(func, (x0, None), torch.tensor([0.0, 1.5], dtype=DTYPE),
                                                 eps=eps, method=name, n_steps=12)[0][-1], rtol=0, atol=0)


def test_neural_ode_is_euler_at_eps_zero():
    torch.manual_seed(0)
    func = TimeField().to(DTYPE)
    x0, _ = initial_state(shape=(4, WIDTH))
    xs, _ = odeint(func, (x0, None), torch.tensor([0.0, 1.0], dtype=DTYPE), eps=0.0, method="euler", n_steps=7)
    torch.testing.assert_close(om.NeuralODE(func, n_steps=7)(x0), xs[-1], rtol=0, atol=0)


# -------------------------------------------------------------------------------------- MomentumResNet


def recurrence(functions, x, v, gamma, *args, **kwargs):
    """The paper's layer rule written out: v <- gamma v + (1 - gamma) f_n(x), x <- x + v."""
    for f in functions:
        v = gamma * v + (1 - gamma) * f(x, *args, **kwargs)
        x = x + v
    return x, v


class Residual(nn.Module):
    """``block(x) - x``: the residual of a block that adds its own skip."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x) - x


@pytest.mark.parametrize("gradient", ["backprop", "reversible"])
def test_momentum_resnet_equals_recurrence(gradient):
    torch.manual_seed(0)
    blocks = [mlp() for _ in range(DEPTH)]
    net = om.MomentumResNet(blocks, GAMMA, gradient=gradient)
    x0, v0 = initial_state(shape=(5, WIDTH))
    with torch.no_grad():
        want_x, want_v = recurrence(blocks, x0, torch.zeros_like(x0), GAMMA)
        got = net(x0)
        got_x, got_v = net.forward_state(x0, v0)
        want_xv = recurrence(blocks, x0, v0, GAMMA)
    torch.testing.assert_close(got, want_x, rtol=0, atol=RECURRENCE_TOL)
    torch.testing.assert_close(got_x, want_xv[0], rtol=0, atol=RECURRENCE_TOL)
    torch.testing.assert_close(got_v, want_xv[1], rtol=0, atol=RECURRENCE_TOL)


def test_momentum_resnet_non_residual_blocks_subtract_the_skip():
    torch.manual_seed(0)
    blocks = [mlp() for _ in range(DEPTH)]
    x0, v0 = initial_state(shape=(5, WIDTH))
    whole = om.MomentumResNet(blocks, GAMMA, residual=False, gradient="backprop")
    residuals = om.MomentumResNet([Residual(b) for b in blocks], GAMMA, residual=True, gradient="backprop")
    with torch.no_grad():
        for got, want in zip(whole.forward_state(x0, v0), residuals.forward_state(x0, v0)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_momentum_resnet_init_function_sets_v0():
    torch.manual_seed(0)
    blocks = [mlp() for _ in range(DEPTH)]
    phi = mlp()
    net = om.MomentumResNet(blocks, GAMMA, init_function=phi, gradient="backprop")
    x0, _ = initial_state(shape=(5, WIDTH))
    with torch.no_grad():
        want_x, want_v = recurrence(blocks, x0, phi(x0), GAMMA)
        got_x, got_v = net.forward_state(x0)
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=RECURRENCE_TOL)
    torch.testing.assert_close(got_v, want_v, rtol=0, atol=RECURRENCE_TOL)


def test_momentum_resnet_inverse_recovers_input():
    torch.manual_seed(0)
    net = om.MomentumResNet([mlp() for _ in range(DEPTH)], GAMMA, init_function=mlp())
    x0, v0 = initial_state(shape=(5, WIDTH))
    with torch.no_grad():
        x_rec, v_rec = net.inverse(*net.forward_state(x0, v0))
    assert float((x_rec - x0).abs().max() / x0.abs().max()) <= INVERSE_RTOL
    assert float((v_rec - v0).abs().max() / v0.abs().max()) <= INVERSE_RTOL


def test_momentum_resnet_gamma_zero_is_resnet():
    """gamma = 0 with backprop: the same outputs and gradients as ``ResNetStack`` (x + f(x))."""
    torch.manual_seed(0)
    blocks = nn.ModuleList([mlp() for _ in range(DEPTH)])
    net = om.MomentumResNet(blocks, 0.0, gradient="backprop")
    resnet = om.ResNetStack(blocks)
    x0, _ = initial_state(shape=(5, WIDTH))
    grads = []
    for model in (net, resnet):
        model.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        y = model(x)
        (y.sin().sum()).backward()
        grads.append([y.detach(), x.grad] + [p.grad for p in blocks.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # v = 0 v + 1 f: the same floats


class Scaled(nn.Module):
    """A residual function with extra arguments, ``f(x, scale, *, shift) = tanh(lin(x)) * scale + shift``."""

    def __init__(self, d=WIDTH):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.n_calls = 0

    def forward(self, x, scale, *, shift=0.0):
        self.n_calls += 1
        return torch.tanh(self.lin(x)) * scale + shift


@pytest.mark.parametrize("gradient", ["backprop", "reversible"])
def test_momentum_resnet_passes_extra_arguments_to_every_function(gradient):
    torch.manual_seed(0)
    blocks = [Scaled().to(DTYPE) for _ in range(DEPTH)]
    net = om.MomentumResNet(blocks, GAMMA, gradient=gradient)
    x0, _ = initial_state(shape=(5, WIDTH))
    scale = torch.linspace(0.5, 1.5, WIDTH, dtype=DTYPE)
    shift = torch.full((WIDTH,), -0.2, dtype=DTYPE)
    with torch.no_grad():
        want, _ = recurrence(blocks, x0, torch.zeros_like(x0), GAMMA, scale, shift=shift)
        for b in blocks:
            b.n_calls = 0
        got = net(x0, scale, shift=shift)
    torch.testing.assert_close(got, want, rtol=0, atol=RECURRENCE_TOL)
    assert [b.n_calls for b in blocks] == [1] * DEPTH


def test_momentum_resnet_extra_tensor_arguments_get_gradients_under_reversal():
    """Extra arguments reach every function in the reversible backward too: their gradients match autograd."""
    torch.manual_seed(0)
    blocks = [Scaled().to(DTYPE) for _ in range(DEPTH)]
    x0, _ = initial_state(shape=(5, WIDTH))
    grads = []
    for gradient in ("backprop", "reversible"):
        net = om.MomentumResNet(blocks, GAMMA, gradient=gradient)
        scale = torch.linspace(0.5, 1.5, WIDTH, dtype=DTYPE).requires_grad_()
        shift = torch.full((WIDTH,), -0.2, dtype=DTYPE, requires_grad=True)
        net(x0, scale, shift=shift).square().sum().backward()
        grads.append((scale.grad, shift.grad))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=INVERSE_RTOL, atol=0)
