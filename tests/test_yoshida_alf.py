"""What the registry-wide tests cannot see about ``yoshida4`` and ``alf``.

Orders, evaluation counts and ``inverse_step(step(s)) = s`` for both run in ``test_integrators.py`` (over the
registry). Here: the triple-jump weights and the composition itself, ALF's midpoint form and its need for a
consistent initial velocity, the shared intermediate time tensors that first-same-as-last reuse and the
reversible backward rely on, every gradient mode, and the user-facing errors.
"""

import math

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum.integrators import AsynchronousLeapfrog, Leapfrog, Span, SubTimes, Yoshida4
from ode_momentum.integrators.yoshida import W0, W1

DTYPE = torch.float64  # numerical truth

# Yoshida's order conditions hold to a few ulps of the weights (|w0| ~ 1.7).
WEIGHT_TOL = 1e-15
# ALF and the explicit midpoint rule are the same step in exact arithmetic; in float64 they differ by the
# rounding of x + (h/2) v + (h/2) (2u - v) against x + h u: a few ulps of |x| ~ 1.
MIDPOINT_TOL = 1e-15
# Gradients of the float modes against backprop: the same float operations up to reconstruction rounding
# (a few ulps per step, 12 steps).
FLOAT_MODES_RTOL = 1e-12
# The exact mode runs damping factors rounded to dyadic rationals n / 2^30 (relative change ~1e-9 per
# factor) and a fixed-point state (2^-40): its gradients match float backprop to ~1e-8, not to rounding.
EXACT_MODE_RTOL = 1e-6
# Round trip of 200 ALF steps (T = 20) in float64, relative to the state. The step preserves phase-space
# volume, so nothing amplifies rounding like a damped scheme's 1/g per step (e^{T/eps} ~ 5e8 at eps = 1, i.e.
# ~1e-7 here); only F's Jacobian does: measured 3e-12.
ALF_ROUND_TRIP_RTOL = 1e-10


def state(seed=0, shape=(4, 3)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=DTYPE), torch.randn(shape, generator=gen, dtype=DTYPE)


def span(t0=0.3, h=0.2):
    return Span(torch.tensor(t0, dtype=DTYPE), torch.tensor(t0 + h, dtype=DTYPE), h)


class Field:
    """``F(t, x) = tanh(x W + t b)`` that records the ``(t, x)`` of every evaluation."""

    def __init__(self, d=3, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(d, d, generator=gen, dtype=DTYPE) / d**0.5
        self.b = torch.randn(d, generator=gen, dtype=DTYPE)
        self.calls = []

    def __call__(self, t, x):
        self.calls.append((t, x))
        return torch.tanh(x @ self.w + t * self.b)


# ------------------------------------------------------------------------------------------------- yoshida4


def test_triple_jump_weights_satisfy_the_order_conditions():
    """Consistency ``2 w1 + w0 = 1`` and the cancellation of the h^3 term ``2 w1^3 + w0^3 = 0``."""
    assert abs(2 * W1 + W0 - 1.0) <= WEIGHT_TOL
    assert abs(2 * W1**3 + W0**3) <= WEIGHT_TOL
    assert W0 < 0 < W1  # the middle sub-step runs backwards


def test_yoshida4_is_three_leapfrog_steps():
    """``L(w1 h) L(w0 h) L(w1 h)`` with the registry's leapfrog gives the same floats."""
    eps, sp = 0.4, span()
    x, v = state()
    func = Field()
    want_x, want_v = x, v
    t_a, t_b = sp.t0 + W1 * sp.h, sp.t0 + (1.0 - W1) * sp.h
    leapfrog = Leapfrog(eps)
    for t0, t1, s in ((sp.t0, t_a, W1 * sp.h), (t_a, t_b, W0 * sp.h), (t_b, sp.t1, W1 * sp.h)):
        want_x, want_v = leapfrog.step(func, want_x, want_v, Span(t0, t1, s))
    got_x, got_v = Yoshida4(eps).step(func, x, v, sp)
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=0)
    torch.testing.assert_close(got_v, want_v, rtol=0, atol=0)


def test_yoshida4_middle_substep_expands_the_velocity():
    """The negative middle sub-step damps by ``e^{-w0 h / (2 eps)} > 1``; the whole step by ``e^{-h/eps}``."""
    integrator = Yoshida4(0.5)
    assert integrator.damping(0.5 * W0 * 0.2) > 1.0
    assert integrator.gamma(0.2) == pytest.approx(math.exp(-0.2 / 0.5), rel=1e-15)


@pytest.mark.parametrize("cls", [Yoshida4, AsynchronousLeapfrog], ids=["yoshida4", "alf"])
def test_inverse_evaluates_f_at_the_same_time_objects_and_states(cls):
    """Contract item 3: ``inverse_step`` calls ``F`` at the forward's ``(t, x)``, and at the *same* time tensors
    (the reversible backward replays records keyed on their identity)."""
    integrator = cls(0.0 if cls is AsynchronousLeapfrog else 0.4)
    x, v = state()
    sp = span()
    forward = Field()
    x1, v1 = integrator.step(forward, x, v, sp)
    backward = Field()
    integrator.inverse_step(backward, x1, v1, sp)
    assert len(forward.calls) == len(backward.calls)
    for (t_f, x_f), (t_b, x_b) in zip(forward.calls, reversed(backward.calls)):
        assert t_f is t_b
        torch.testing.assert_close(x_b, x_f, rtol=0, atol=1e-14)


def test_sub_times_are_shared_per_span_and_renewed_for_the_next():
    times = SubTimes((W1, 1.0 - W1))
    first, second = span(0.3), span(0.5)
    a = times(first)
    assert times(first) is a and all(t.dtype == DTYPE for t in a)
    assert times(second)[0] is not a[0]
    assert float(a[0]) == pytest.approx(0.3 + W1 * 0.2, abs=1e-15)


# ------------------------------------------------------------------------------------------------------ alf


def test_alf_position_update_is_the_explicit_midpoint_rule():
    """``x <- x + h F(t + h/2, x + (h/2) v)``: with ``v = F(t, x)``, the explicit midpoint step."""
    func = Field()
    x, _ = state()
    sp = span()
    v = func(sp.t0, x)
    x1, v1 = AsynchronousLeapfrog().step(func, x, v, sp)
    u = func(sp.t0 + 0.5 * sp.h, x + 0.5 * sp.h * v)
    torch.testing.assert_close(x1, x + sp.h * u, rtol=0, atol=MIDPOINT_TOL)
    torch.testing.assert_close(v1, 2 * u - v, rtol=0, atol=MIDPOINT_TOL)


def _alf_final_errors(v0_kind, n_steps):
    k = torch.tensor([2.0, 0.3, 1.0], dtype=DTYPE)
    x0, v_random = state()
    v0 = {"consistent": -k * x0, "random": v_random}[v0_kind]
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    xs, vs = om.odeint(lambda t, x: -k * x, (x0, v0), t, eps=0.0, method="alf", n_steps=n_steps)
    x_exact = x0 * torch.exp(-2.0 * k)
    return float((xs[-1] - x_exact).abs().max()), float((vs[-1] + k * x_exact).abs().max())


def test_alf_velocity_converges_only_from_the_consistent_start():
    """Documented behaviour: from ``v0 = F(t0, x0)`` the velocity converges; from another ``v0`` the positions
    still converge but the velocity error flips sign each step and does not decay."""
    coarse, fine = _alf_final_errors("consistent", 256), _alf_final_errors("consistent", 1024)
    assert fine[1] < coarse[1] / 10  # order 2: a factor 16
    coarse, fine = _alf_final_errors("random", 256), _alf_final_errors("random", 1024)
    assert fine[0] < coarse[0] / 10
    assert fine[1] > 0.5 * coarse[1] and fine[1] > 0.1


def test_alf_many_steps_round_trip():
    func = Field()
    x, v = state()
    integrator = AsynchronousLeapfrog()
    spans = [span(0.1 * n, 0.1) for n in range(200)]
    x1, v1 = x, v
    for sp in spans:
        x1, v1 = integrator.step(func, x1, v1, sp)
    for sp in reversed(spans):
        x1, v1 = integrator.inverse_step(func, x1, v1, sp)
    assert float((x1 - x).abs().max() / x.abs().max()) <= ALF_ROUND_TRIP_RTOL
    assert float((v1 - v).abs().max() / v.abs().max()) <= ALF_ROUND_TRIP_RTOL


def test_alf_refuses_eps_above_zero():
    with pytest.raises(ValueError, match=r"method 'alf' solves the first-order ODE x' = F and needs eps = 0; "
                                         r"got eps = 0.5\. For eps > 0 use 'leapfrog'"):
        AsynchronousLeapfrog(0.5)
    with pytest.raises(ValueError, match="method 'alf' solves the first-order ODE"):
        om.odeint(lambda t, x: -x, state(), torch.tensor([0.0, 1.0], dtype=DTYPE), eps=0.5, method="alf",
                  n_steps=4)


def test_alf_has_no_momentum_coefficient():
    with pytest.raises(ValueError, match=r"method 'alf' solves x' = F \(eps = 0\) and has no momentum "
                                         r"coefficient; got gamma = 0.9"):
        AsynchronousLeapfrog.from_gamma(0.9)


# ------------------------------------------------------------------------------------------ gradient modes


class Forced(nn.Module):
    """``F(t, x) = tanh(W x + b) cos(3 t)``: parameters and time dependence."""

    def __init__(self, d=4):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, t, x):
        return torch.tanh(self.lin(x)) * torch.cos(3 * t)


@pytest.mark.parametrize("gradient", sorted(set(om.GRADIENTS) - {"backprop", "adjoint"}))
@pytest.mark.parametrize(("method", "eps"), [("yoshida4", 0.7), ("alf", 0.0)])
def test_every_gradient_mode_matches_backprop(method, eps, gradient):
    """The new schemes are written in the primitive sub-flows, so every memory-saving mode runs them."""
    torch.manual_seed(0)
    func = Forced().double()
    x0, v0 = torch.randn(5, 4, dtype=DTYPE), torch.randn(5, 4, dtype=DTYPE)
    t = torch.tensor([0.0, 0.5, 1.2], dtype=DTYPE)
    grads = {}
    for mode in ("backprop", gradient):
        func.zero_grad()
        x, v = x0.clone().requires_grad_(), v0.clone().requires_grad_()
        xs, vs = om.odeint(func, (x, v), t, eps=eps, method=method, step_size=0.1, gradient=mode)
        (xs.sin().sum() + (vs * vs).sum()).backward()
        grads[mode] = [x.grad, v.grad] + [p.grad for p in func.parameters()]
    rtol = EXACT_MODE_RTOL if gradient == "exact" else FLOAT_MODES_RTOL
    for got, want in zip(grads[gradient], grads["backprop"]):
        assert float((got - want).abs().max() / want.abs().max()) <= rtol
