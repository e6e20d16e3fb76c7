"""The float-reversal gradient equals autograd, with every PyTorch feature the reference package breaks."""

import copy
import warnings

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum import INTEGRATORS

# Reversal at gamma = 0.9, depth 32 amplifies rounding by about 0.9^-32 = 29: in float64 (unit roundoff
# 1.1e-16) that leaves gradients good to ~1e-13, so 1e-10 has three digits of margin; in float32 (6e-8)
# ~2e-6, and the 1e-4 bound holds with margin.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
WIDTH, BATCH, DEPTH, GAMMA = 64, 256, 32, 0.9


def mlp(d=WIDTH):
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))


def mlp_bn_dropout(d=WIDTH):
    # no bias before BatchNorm: BN removes it, so its true gradient is 0 and only rounding would be compared
    return nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.Tanh(), nn.Dropout(0.2), nn.Linear(d, d))


def twin_nets(functions, dtype, **kwargs):
    """The same weights under backprop and under reversal."""
    back = om.MomentumResNet(copy.deepcopy(functions), GAMMA, gradient="backprop", **kwargs).to(dtype)
    rev = om.MomentumResNet(copy.deepcopy(functions), GAMMA, gradient="reversible", **kwargs).to(dtype)
    return back, rev


def grads_of(net, x, seed=1, loss=lambda y: (y * y).sum()):
    net.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)  # same dropout masks in both runs
    loss(net(x)).backward()
    return [x.grad] + [p.grad for p in net.parameters()]


def max_rel_err(got, want):
    """Max over tensors of max|got - want| / max|want| (each tensor on its own scale)."""
    errs = []
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
            continue
        errs.append(float((g - w).abs().max() / w.abs().max().clamp_min(1e-300)))
    return max(errs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block", [mlp, mlp_bn_dropout], ids=["mlp", "bn_dropout"])
def test_reversible_gradients_equal_backprop(dtype, block):
    torch.manual_seed(0)
    back, rev = twin_nets([block() for _ in range(DEPTH)], dtype)
    x = torch.randn(BATCH, WIDTH, dtype=dtype)
    want, got = grads_of(back, x), grads_of(rev, x)
    assert max_rel_err(got, want) < RTOL[dtype]
    # BatchNorm statistics were updated once per step, exactly as by the backprop forward
    for b_back, b_rev in zip(back.buffers(), rev.buffers(), strict=True):
        assert torch.equal(b_back, b_rev)


def test_dropout_masks_replayed_not_redrawn():
    # Regression for the reference package's dropout bug: without RNG replay the gradient is wrong by O(1).
    torch.manual_seed(0)
    back, rev = twin_nets([mlp_bn_dropout(16) for _ in range(8)], torch.float64)
    x = torch.randn(32, 16, dtype=torch.float64)
    assert max_rel_err(grads_of(rev, x, seed=5), grads_of(back, x, seed=5)) < RTOL[torch.float64]
    assert max_rel_err(grads_of(rev, x, seed=5), grads_of(back, x, seed=6)) > 1e-2  # masks matter


def test_caller_rng_state_untouched_by_backward():
    torch.manual_seed(0)
    _, rev = twin_nets([mlp_bn_dropout(16) for _ in range(4)], torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    y = rev(x).sum()
    state = torch.get_rng_state()
    y.backward()
    assert torch.equal(torch.get_rng_state(), state)


def test_frozen_parameters():
    torch.manual_seed(0)
    functions = [mlp(16) for _ in range(6)]
    for f in functions[::2]:
        f.requires_grad_(False)
    functions[1][0].bias.requires_grad_(False)
    back, rev = twin_nets(functions, torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64)
    want, got = grads_of(back, x), grads_of(rev, x)
    assert [g is None for g in got] == [w is None for w in want]
    assert max_rel_err(got, want) < RTOL[torch.float64]


class ScaledShifted(nn.Module):
    """A residual function with extra positional and keyword arguments."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, scale, *, shift):
        return torch.tanh(self.lin(x)) * scale + shift


def test_extra_arguments_reach_every_layer_and_get_gradients():
    torch.manual_seed(0)
    back, rev = twin_nets([ScaledShifted(16) for _ in range(5)], torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64)
    shift = torch.randn(16, dtype=torch.float64)
    results = []
    for net in (back, rev):
        s = shift.clone().requires_grad_()
        xi = x.clone().requires_grad_()
        net(xi, 0.5, shift=s).pow(2).sum().backward()
        results.append([xi.grad, s.grad] + [p.grad for p in net.parameters()])
    assert max_rel_err(results[1], results[0]) < RTOL[torch.float64]


def test_autograd_grad_with_inputs_and_hooks_fire_once():
    torch.manual_seed(0)
    back, rev = twin_nets([mlp(16) for _ in range(6)], torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    params = list(rev.parameters())
    calls = {"tensor": 0, "post": 0}
    for p in params:
        p.register_hook(lambda g: calls.__setitem__("tensor", calls["tensor"] + 1))
        p.register_post_accumulate_grad_hook(lambda p: calls.__setitem__("post", calls["post"] + 1))
    got = torch.autograd.grad(rev(x).pow(2).sum(), [x, params[0], params[-1]])
    want = torch.autograd.grad(back(x).pow(2).sum(), [x, list(back.parameters())[0], list(back.parameters())[-1]])
    assert max_rel_err(got, want) < RTOL[torch.float64]
    assert calls == {"tensor": 2, "post": 0}  # autograd.grad: only the two requested parameters, once each
    rev(x).pow(2).sum().backward()
    assert calls == {"tensor": 2 + len(params), "post": len(params)}  # once per parameter per backward


def test_tied_weights_and_init_function():
    torch.manual_seed(0)
    block = mlp(16)
    init = nn.Linear(16, 16)
    back, rev = twin_nets([block] * 10, torch.float64, init_function=init)
    assert len(list(rev.parameters())) == 6  # the tied block's 4 tensors once, plus the init function's 2
    x = torch.randn(8, 16, dtype=torch.float64)
    assert max_rel_err(grads_of(rev, x), grads_of(back, x)) < RTOL[torch.float64]


def test_backward_twice_on_one_graph():
    torch.manual_seed(0)
    _, rev = twin_nets([mlp_bn_dropout(16) for _ in range(6)], torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    loss = rev(x).pow(2).sum()
    first = torch.autograd.grad(loss, [x, *rev.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *rev.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_inference_without_grad_matches_backprop():
    torch.manual_seed(0)
    back, rev = twin_nets([mlp(16) for _ in range(6)], torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(rev(x), back(x))


def test_drift_warns_then_raises_when_asked():
    # gamma = 0.5, depth 60, float32: rounding grows like 2^60, the reconstruction is garbage.
    torch.manual_seed(0)
    functions = [mlp(16) for _ in range(60)]
    x = torch.randn(8, 16, requires_grad=True)
    warn = om.MomentumResNet(functions, 0.5)
    with pytest.warns(om.ReconstructionDriftWarning, match="float reversal drifted"):
        warn(x).sum().backward()
    strict = om.MomentumResNet(functions, 0.5, gradient_options={"on_drift": "raise"})
    with pytest.raises(om.ReconstructionDriftError, match="drift_tol"):
        strict(x).sum().backward()


def test_unregistered_tensor_is_refused_not_dropped():
    torch.manual_seed(0)
    hidden = torch.randn(16, requires_grad=True)

    class Leaky(nn.Module):
        def forward(self, x):
            return torch.tanh(x) * hidden  # `hidden` is not a parameter of the module

    net = om.MomentumResNet([Leaky() for _ in range(3)], GAMMA)
    x = torch.randn(4, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="not one of its module's registered parameters"):
        net(x).sum().backward()


class Forced(nn.Module):
    """A time-dependent field F(t, x) = tanh(W x + b) * cos(3 t)."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, t, x):
        return torch.tanh(self.lin(x)) * torch.cos(3 * t)


REVERSIBLE = sorted(name for name, cls in INTEGRATORS.items() if cls.reversible)


@pytest.mark.parametrize("method", REVERSIBLE)
def test_odeint_reversible_equals_backprop_at_every_output(method):
    try:
        eps = INTEGRATORS[method](0.7).eps
    except ValueError:  # a reversible scheme of the first-order ODE x' = F only (alf)
        eps = 0.0
    torch.manual_seed(0)
    func = Forced(4).double()
    x0 = torch.randn(6, 4, dtype=torch.float64)
    v0 = torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.5, 1.2], dtype=torch.float64)
    results = []
    for gradient in ("backprop", "reversible"):
        func.zero_grad()
        x, v = x0.clone().requires_grad_(), v0.clone().requires_grad_()
        xs, vs = om.odeint(func, (x, v), t, eps=eps, method=method, step_size=0.1, gradient=gradient)
        (xs.sin().sum() + (vs * vs).sum()).backward()
        results.append([x.grad, v.grad] + [p.grad for p in func.parameters()])
    assert max_rel_err(results[1], results[0]) < RTOL[torch.float64]


def test_odeint_closure_parameters_via_params():
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    results = []
    for gradient in ("backprop", "reversible"):
        w.grad = None
        xs, _ = om.odeint(lambda t, x: torch.tanh(x @ w), (x0, None), t, eps=0.5, n_steps=10,
                          gradient=gradient, params=[w])
        xs[-1].pow(2).sum().backward()
        results.append([w.grad])
    assert max_rel_err(results[1], results[0]) < RTOL[torch.float64]
    with pytest.raises(RuntimeError, match="registered parameters"):  # forgetting `params` is refused
        xs, _ = om.odeint(lambda t, x: torch.tanh(x @ w), (x0, None), t, eps=0.5, n_steps=10,
                          gradient="reversible")
        xs[-1].sum().backward()


def test_momentum_ode_reversible_equals_backprop():
    torch.manual_seed(0)
    func = Forced(4).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    results = []
    for gradient in ("backprop", "reversible"):
        layer = om.MomentumODE(func, 0.3, t1=2.0, n_steps=20, gradient=gradient)
        func.zero_grad()
        xi = x.clone().requires_grad_()
        layer(xi).pow(2).sum().backward()
        results.append([xi.grad] + [p.grad for p in func.parameters()])
    assert max_rel_err(results[1], results[0]) < RTOL[torch.float64]


class _DroppedForce(nn.Module):
    """F(t, x) = dropout(tanh(W x)) * cos(3 t): one shared field whose evaluations draw random masks."""

    def __init__(self, d):
        super().__init__()
        self.lin, self.drop = nn.Linear(d, d), nn.Dropout(0.3)

    def forward(self, t, x):
        return self.drop(torch.tanh(self.lin(x))) * torch.cos(3 * t)


@pytest.mark.parametrize("method, eps", [("leapfrog", 0.3), ("yoshida4", 2.0), ("momentum_exp", 0.3)])
@pytest.mark.parametrize("every", [1, 3])
def test_checkpoint_restarts_inside_first_same_as_last_schemes(method, eps, every):
    """A restart from a stored state between leapfrog steps: the step's reused end-of-step force is recomputed
    at the stored state under the forward's RNG state for that evaluation (the masks match backprop's), and
    the sweep still replays each forward evaluation once (it raised an internal error before)."""
    torch.manual_seed(0)
    func = _DroppedForce(4).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    results = []
    for gradient, options in (("backprop", None), ("checkpoint", {"every": every})):
        layer = om.MomentumODE(func, eps, t1=1.0, n_steps=7, method=method, gradient=gradient,
                               gradient_options=options)
        func.zero_grad()
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same masks in both runs
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no drift or branch-flip warning either
            layer(xi).pow(2).sum().backward()
        results.append([xi.grad] + [p.grad for p in func.parameters()])
    assert max_rel_err(results[1], results[0]) < RTOL[torch.float64]
