"""The exact gradient mode: bit-exact reconstruction, gradients identical to autograd, loud failures."""

import copy
import math

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum import INTEGRATORS
from ode_momentum.analysis import buffer_bound, exact_round_trip, saved_tensor_bytes
from ode_momentum.gradients import fixed_point as fp
from ode_momentum.gradients.fixed_point_kernels import EAGER
from ode_momentum.gradients.exact import (
    ExactOptions,
    ExactReversalError,
    FixedPointArithmetic,
    FixedPointRangeError,
    _RangeGuard,
    effective_gamma,
)

# The exact mode integrates with the dyadic gamma' (|gamma' - gamma| <= 2^-31); against float backprop with
# gamma this changes gradients by about 2^-31 / (1 - gamma) relative: 5e-9 at gamma = 0.9, so 1e-7 leaves a
# factor 20. Fixed point with 44 fractional bits adds ~N * 2^-44 = 6e-11 at depth 1000.
RTOL_VS_BACKPROP = 1e-7
# Issue 3: the exact-mode forward stays within 1e-9 (relative) of the real recurrence with gamma'.
FIDELITY_RTOL = 1e-9
# Issue 3: float32 exact-mode gradients at depth 128 within 1e-5 of float64 backprop.
FP32_VS_FP64_RTOL = 1e-5


def mlp(d):
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))


def mlp_bn_dropout(d):
    return nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.Tanh(), nn.Dropout(0.2), nn.Linear(d, d))


def max_rel_err(got, want):
    return max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-300)) for g, w in zip(got, want, strict=True))


def grads(net, x, seed=1):
    net.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    net(x).square().mean().backward()
    return [x.grad] + [p.grad for p in net.parameters()]


# --- bit-exact reconstruction and the buffer ---------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("depth", [1, 10, 100, pytest.param(1000, marks=pytest.mark.slow)])
def test_every_state_reconstructed_bit_exactly(gamma, depth):
    torch.manual_seed(depth)
    net = om.MomentumResNet([mlp(16) for _ in range(depth)], gamma, gradient="exact")
    trip = exact_round_trip(net, torch.randn(32, 16))
    assert trip.all_equal, f"first unequal state at step {trip.first_unequal}"
    assert trip.buffer_empty


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [0.5, 0.7, 0.9, 0.99, 0.999])
def test_buffer_cost_within_two_log2_inverse_gamma_per_layer_plus_one_word(gamma):
    torch.manual_seed(0)
    depth = 400
    net = om.MomentumResNet([mlp(16) for _ in range(depth)], gamma, gradient="exact")
    trip = exact_round_trip(net, torch.randn(32, 16))
    assert trip.all_equal and trip.buffer_empty
    assert trip.bits_allocated <= buffer_bound(effective_gamma(gamma), depth)


def test_exact_multiply_round_trip_with_negative_values_and_expanding_factors():
    gen = torch.Generator().manual_seed(0)
    V = torch.randint(-(2**60), 2**60, (5000,), generator=gen)
    V[:7] = torch.arange(-3, 4)
    # 1.7: yoshida4's middle sub-step expands; 20 of them grow |V| by 2^15.3, which stays inside int64
    for g, steps in ((0.3, 50), (0.5, 50), (0.9, 50), (0.999, 50), (1.7, 20)):
        n, k = fp.quantise(g, 30), 30
        buf = fp.BitBuffer(V)
        W = V if g < 1 else V >> 20
        start = W
        for i in range(steps):
            W, j, m = fp.exact_mul(W, n, k, fp.dither(i, k))
            assert bool(((0 <= j) & (j < m)).all())
            buf.push(j, m, fp.max_block(n, k))
        for i in reversed(range(steps)):
            W = fp.exact_div(W, n, k, fp.dither(i, k), buf.pop)
        assert torch.equal(W, start) and buf.is_empty()


def test_floor_semantics_match_the_rational_product():
    # W = floor((V n + s) / 2^k) for small V, where the product can be checked in exact integers
    n, k, s = fp.quantise(0.9, 30), 30, fp.dither(3, 30)
    V = torch.arange(-2000, 2000)
    W, _, _ = fp.exact_mul(V, n, k, s)
    assert torch.equal(W, torch.div(V * n + s, 2**k, rounding_mode="floor"))


# --- gradients --------------------------------------------------------------------------------------------


class _StraightThrough(torch.autograd.Function):
    """Value of `value`, gradient of `t` (the identity): the fixed-point forward, differentiated as real."""

    @staticmethod
    def forward(ctx, t, value):
        return value

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through_forward(net, x, options=ExactOptions()):
    """Autograd through the exact mode's fixed-point forward, written out by hand for a MomentumResNet."""
    R, k = options.frac_bits, options.gamma_bits
    g = effective_gamma(net.gamma, k)
    ops = FixedPointArithmetic(R, k, None, _RangeGuard(), EAGER)  # independent of the mode's kernels
    X, V = fp.encode(x, R), torch.zeros_like(x, dtype=torch.int64)
    xt, vt = _StraightThrough.apply(x, fp.decode(X, R, x.dtype)), torch.zeros_like(x)  # the input on the grid
    for f in net.functions:
        fo = f(xt)  # one call per layer: same dropout masks and BatchNorm updates as the exact forward
        with torch.no_grad():
            V = ops.kick(ops.damp(V, g), 1.0 - g, fo)
            X = ops.drift(X, 1.0, V)
        vt = _StraightThrough.apply(vt * g + (1.0 - g) * fo, fp.decode(V, R, x.dtype))
        xt = _StraightThrough.apply(xt + vt, fp.decode(X, R, x.dtype))
    return xt


def straight_through_grads(net, x, seed=1):
    """``grads``' loss through ``straight_through_forward``: returns the output and the input and parameter
    gradients, the reference the exact mode's gradients must equal bit for bit."""
    net.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = straight_through_forward(net, x)
    out.square().mean().backward()
    return out, [x.grad] + [p.grad for p in net.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block", [mlp, mlp_bn_dropout], ids=["mlp", "bn_dropout"])
def test_gradients_identical_to_autograd_through_the_fixed_point_forward(dtype, block):
    torch.manual_seed(0)
    functions = [block(32) for _ in range(40)]
    exact = om.MomentumResNet(copy.deepcopy(functions), 0.9, gradient="exact").to(dtype)
    reference = copy.deepcopy(exact)
    x = torch.randn(64, 32, dtype=dtype)
    got = grads(exact, x)
    out, want = straight_through_grads(reference, x)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    for b_exact, b_ref in zip(exact.buffers(), reference.buffers(), strict=True):
        assert torch.equal(b_exact, b_ref)  # BatchNorm statistics updated once per layer, in the forward
    torch.manual_seed(1)
    assert torch.equal(exact(x), out.detach())  # the same forward (inference path, same masks)


def test_fidelity_to_the_real_recurrence_at_depth_1000():
    torch.manual_seed(0)
    depth = 1000
    net = om.MomentumResNet([mlp(8) for _ in range(depth)], 0.9, gradient="exact").double()
    x = torch.randn(16, 8, dtype=torch.float64)
    g = net.effective_gamma
    with torch.no_grad():
        got = net(x)
        xr, vr = x, torch.zeros_like(x)
        for f in net.functions:
            vr = g * vr + (1 - g) * f(xr)
            xr = xr + vr
    assert float((got - xr).abs().max() / xr.abs().max()) <= FIDELITY_RTOL


def test_gradcheck_float64():
    torch.manual_seed(0)
    net = om.MomentumResNet([mlp(4) for _ in range(6)], 0.8, gradient="exact").double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = net.functions[2][0].weight
    assert torch.autograd.gradcheck(lambda x, w: net(x), (x, w), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.slow
def test_float32_depth_128_matches_float64_backprop_where_float_reversal_fails():
    torch.manual_seed(0)
    functions = [mlp(64) for _ in range(128)]
    x = torch.randn(256, 64)
    want = grads(om.MomentumResNet(copy.deepcopy(functions), 0.9, gradient="backprop").double(), x.double())
    exact = om.MomentumResNet(copy.deepcopy(functions), 0.9, gradient="exact")
    assert max_rel_err([g.double() for g in grads(exact, x)[1:]], want[1:]) < FP32_VS_FP64_RTOL
    reversible = om.MomentumResNet(copy.deepcopy(functions), 0.9, gradient="reversible")
    with pytest.warns(om.ReconstructionDriftWarning):
        grads(reversible, x)


def test_frozen_parameters_extra_arguments_and_init_function():
    torch.manual_seed(0)

    class Scaled(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = nn.Linear(d, d)

        def forward(self, x, scale, *, shift):
            return torch.tanh(self.lin(x)) * scale + shift

    functions = [Scaled(8) for _ in range(12)]
    functions[3].requires_grad_(False)
    init = nn.Linear(8, 8)
    nets = {g: om.MomentumResNet(copy.deepcopy(functions), 0.9, init_function=copy.deepcopy(init), gradient=g)
            for g in ("backprop", "exact")}
    results = {}
    for gradient, net in nets.items():
        net.double()
        x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        shift = torch.full((8,), 0.1, dtype=torch.float64, requires_grad=True)
        net(x, 0.5, shift=shift).square().sum().backward()
        results[gradient] = [x.grad, shift.grad] + [p.grad for p in net.parameters() if p.requires_grad]
    assert max_rel_err(results["exact"], results["backprop"]) < RTOL_VS_BACKPROP


def test_backward_twice_on_one_graph():
    torch.manual_seed(0)
    net = om.MomentumResNet([mlp_bn_dropout(8) for _ in range(20)], 0.9, gradient="exact").double()
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    loss = net(x).square().sum()
    first = torch.autograd.grad(loss, [x, *net.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


REVERSIBLE = sorted(name for name, cls in INTEGRATORS.items() if cls.reversible)


class Forced(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, t, x):
        return torch.tanh(self.lin(x)) * torch.cos(3 * t)


@pytest.mark.parametrize("method", REVERSIBLE)
def test_odeint_exact_matches_backprop_for_every_reversible_integrator(method):
    try:
        eps = INTEGRATORS[method](0.7).eps
    except ValueError:  # a reversible scheme of the first-order ODE only
        eps = 0.0
    torch.manual_seed(0)
    func = Forced(4).double()
    x0 = torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    results = []
    for gradient in ("backprop", "exact"):
        func.zero_grad()
        x = x0.clone().requires_grad_()
        xs, vs = om.odeint(func, (x, None), t, eps=eps, method=method, step_size=0.05, gradient=gradient)
        (xs.sin().sum() + vs.square().sum()).backward()
        results.append([x.grad] + [p.grad for p in func.parameters()])
    # the exact mode uses dyadic damping factors (relative change <= 2^-31 / (1 - g), g = exp(-0.05/0.7)).
    assert max_rel_err(results[1], results[0]) < 1e-6


# --- failures are loud ------------------------------------------------------------------------------------


def test_unreplayed_dropout_is_caught_and_the_layer_named():
    torch.manual_seed(0)
    net = om.MomentumResNet([mlp_bn_dropout(8) for _ in range(20)], 0.9, gradient="exact",
                            gradient_options={"replay_rng": False})
    x = torch.randn(6, 8, requires_grad=True)
    with pytest.raises(ExactReversalError, match="mismatch at step 19 \\(layer 19"):
        net(x).sum().backward()


def test_parameter_changed_between_forward_and_backward_is_caught():
    torch.manual_seed(0)
    net = om.MomentumResNet([mlp(8) for _ in range(12)], 0.9, gradient="exact")
    x = torch.randn(6, 8, requires_grad=True)
    loss = net(x).sum()
    with torch.no_grad():
        net.functions[5][0].weight.add_(1e-3)
    with pytest.raises(ExactReversalError, match="layer 5"):
        loss.backward()


def test_residual_too_large_for_the_fixed_point_range_raises_with_its_step():
    class Blowup(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) * self.scale

    net = om.MomentumResNet([Blowup(1.0)] * 3 + [Blowup(1e9)] + [Blowup(1.0)] * 2, 0.9, gradient="exact")
    with pytest.raises(FixedPointRangeError, match="step 3 left the exact mode's fixed-point range"):
        net(torch.randn(2, 4, requires_grad=True))
    with pytest.raises(FixedPointRangeError, match="`x0` has entries of magnitude"):
        net(torch.full((2, 4), 1e6, requires_grad=True))


def test_bad_exact_options():
    with pytest.raises(ValueError, match="`gamma_bits` must lie in \\[8, 30\\]"):
        om.MomentumResNet([mlp(4)], 0.9, gradient="exact", gradient_options={"gamma_bits": 40})
    with pytest.raises(ValueError, match="damping factor 1e-12 rounds to 0"):
        fp.quantise(1e-12, 30)


# --- checkpoint and auto ----------------------------------------------------------------------------------


def test_checkpoint_and_auto_accurate_where_float_reversal_fails():
    torch.manual_seed(0)
    functions = [mlp(32) for _ in range(128)]
    x = torch.randn(64, 32)
    want = grads(om.MomentumResNet(copy.deepcopy(functions), 0.9, gradient="backprop").double(), x.double())
    for gradient in ("checkpoint", "auto"):
        net = om.MomentumResNet(copy.deepcopy(functions), 0.9, gradient=gradient)
        assert max_rel_err([g.double() for g in grads(net, x)], want) < 1e-4


def test_checkpoint_memory_grows_with_segments_and_exact_barely_grows():
    def saved(gradient, depth, **options):
        torch.manual_seed(0)
        net = om.MomentumResNet([mlp(16) for _ in range(depth)], 0.9, gradient=gradient, gradient_options=options)
        return saved_tensor_bytes(net, torch.randn(64, 16, requires_grad=True))

    state = 64 * 16 * 4  # one float32 state tensor
    assert saved("checkpoint", 64, every=8) - saved("checkpoint", 8, every=8) == 2 * 7 * state
    # exact: X_N, V_N (int64) + buffer words: one int64 word per element per ~200 layers
    grow = saved("exact", 256) - saved("exact", 8)
    assert 0 <= grow <= 2 * 2 * state
    assert saved("backprop", 256) >= 50 * saved("exact", 256)


def test_auto_reverses_in_float_only_within_float64_rounding():
    """float64 at gamma 0.9: u 0.9^-N stays within 32 unit roundoffs up to N = 32 (0.9^-32 = 29.1, 0.9^-33 =
    32.3); float32 always takes the exact mode (a reconstruction error far below drift_tol still flips ReLU
    branches), whatever the residual."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, dtype=torch.float64)
    at_32 = om.MomentumResNet([mlp(8).double() for _ in range(32)], 0.9, gradient="auto")
    at_33 = om.MomentumResNet([mlp(8).double() for _ in range(33)], 0.9, gradient="auto")
    # float reversal keeps x0, x_N, v_N (float64); exact keeps X_N, V_N (int64) and one buffer word
    assert saved_tensor_bytes(at_32, x.clone().requires_grad_()) == x.numel() * (3 * 8)
    assert saved_tensor_bytes(at_33, x.clone().requires_grad_()) in [x.numel() * (2 * 8 + w) for w in (1, 2, 4, 8)]
    assert at_32.effective_gamma == at_33.effective_gamma == effective_gamma(0.9)
    assert math.isclose(at_32.effective_gamma, 0.9, rel_tol=0, abs_tol=2**-31)
    for block in (mlp, lambda d: nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))):
        blocks = [block(8) for _ in range(4)]
        x32 = torch.randn(4, 8)
        net = om.MomentumResNet(blocks, 0.9, gradient="auto")
        assert saved_tensor_bytes(net, x32.clone().requires_grad_()) == x32.numel() * (2 * 8 + 1)  # int8 word
        xa, xe = x32.clone().requires_grad_(), x32.clone().requires_grad_()
        net(xa).sum().backward()
        om.MomentumResNet(blocks, 0.9, gradient="exact")(xe).sum().backward()
        assert torch.equal(xa.grad, xe.grad)


@pytest.mark.parametrize("depth, gamma, word_bytes", [(4, 0.9, 1), (7, 0.5, 1), (40, 0.5, 8), (200, 0.999, 1)])
def test_the_buffer_word_is_saved_in_the_narrowest_type_that_holds_it(depth, gamma, word_bytes):
    """At most one bit per layer at gamma >= 1/2, so a stack of up to 7 layers needs an int8 word whatever its
    values; at gamma 0.5 every multiply stores a bit (blocks of exactly two inputs), so 40 layers need int64;
    at gamma 0.999 a bit is stored with probability about 2 (1 - gamma) = 0.002 per layer, so 200 layers fill
    a few bits and the largest entry fits int8."""
    torch.manual_seed(1)
    net = om.MomentumResNet([mlp(8) for _ in range(depth)], gamma, gradient="exact")
    x = torch.randn(4, 8)
    assert saved_tensor_bytes(net, x.clone().requires_grad_()) == x.numel() * (2 * 8 + word_bytes)
    xr = x.clone().requires_grad_()
    net(xr).sum().backward()  # the narrowed word reconstructs exactly (checksums, empty buffer)
    ref = om.MomentumResNet(net.functions, gamma, gradient="backprop")
    xb = x.clone().requires_grad_()
    ref(xb).sum().backward()
    assert torch.allclose(xr.grad, xb.grad, rtol=1e-4, atol=1e-6)  # float32: fixed point vs float rounding


def test_float16_states_decode_without_overflow():
    """The fixed-point state is about |x| 2^44: decoding it straight to float16 (max 65504) overflowed to inf.
    Now float16 outputs and gradients match float64 backprop to float16 rounding (2^-11 = 4.9e-4 per
    operation; 1e-2 leaves room for a few layers), and inference equals the training forward."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3)]
    x = torch.randn(2, 4) * 0.5
    net16 = om.MomentumResNet(copy.deepcopy(blocks), 0.9, gradient="exact").half()
    x16 = x.half().requires_grad_()
    y16 = net16(x16)
    y16.float().square().sum().backward()
    ref = om.MomentumResNet(copy.deepcopy(blocks), effective_gamma(0.9), gradient="backprop").double()
    x64 = x.double().requires_grad_()
    y64 = ref(x64)
    y64.square().sum().backward()
    assert torch.allclose(y16.double(), y64, rtol=1e-2, atol=1e-2)
    assert torch.allclose(x16.grad.double(), x64.grad, rtol=1e-2, atol=1e-2)
    with torch.no_grad():
        assert torch.equal(net16(x16), y16.detach())


def test_non_finite_input_is_named_in_exact_mode():
    net = om.MomentumResNet([mlp(4)], 0.9, gradient="exact")
    with pytest.raises(ValueError, match="`x0` contains nan or inf"):
        net(torch.tensor([[float("nan"), 0.0, 1.0, 2.0]]))
