"""The exact mode's kernel implementations (eager, native C, torch.compile) return the same integers."""

import os

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum.gradients import fixed_point as fp
from ode_momentum.gradients import fixed_point_kernels as fpk
from ode_momentum.gradients import native

EAGER = fpk.EAGER
K = 30  # the default gamma_bits
HAS_COMPILER = native._compiler() is not None and os.environ.get("ODE_MOMENTUM_NATIVE", "1") != "0"


@pytest.fixture(scope="module")
def nat():
    if not HAS_COMPILER:
        pytest.skip("no C compiler (or ODE_MOMENTUM_NATIVE=0): the exact mode runs its eager kernels")
    return fpk.select("native", torch.device("cpu"))


def test_native_kernels_build_where_a_compiler_exists():
    if not HAS_COMPILER:
        pytest.skip("no C compiler (or ODE_MOMENTUM_NATIVE=0)")
    available, why = native.status()
    assert available, why
    assert fpk.select("auto", torch.device("cpu")).name == "native"


def _ints(gen, n, bits):
    return torch.randint(-(2**bits), 2**bits, (n,), generator=gen)


def _in_range(peak) -> bool:
    return float(peak) < fp.RANGE


# Magnitudes from small to the edge of the range (|X| < 2^62); factors across the fast path [1/2, 1).
@pytest.mark.parametrize("bits", [8, 30, 45, 61])
@pytest.mark.parametrize("gamma", [0.5, 0.6180339, 0.9, 0.999, 1 - 2**-20])
def test_damping_is_the_same_integers_and_inverts(nat, bits, gamma):
    gen = torch.Generator().manual_seed(bits)
    V = _ints(gen, 50_000, bits)
    word = torch.randint(0, 2**40, V.shape, generator=gen)
    n = fp.quantise(gamma, K)
    for index in range(3):
        s = fp.dither(index, K)
        W_e, word_e = EAGER.damp_push2(V, word, n, s, K)
        W_n, word_n = nat.damp_push2(V, word, n, s, K)
        assert torch.equal(W_e, W_n) and torch.equal(word_e, word_n)
        assert torch.equal(nat.damp_only(V, n, s, K), W_e)
        back_e, back_word_e = EAGER.undamp_pop2(W_n, word_n, n, s, K)
        back_n, back_word_n = nat.undamp_pop2(W_n, word_n, n, s, K)
        assert torch.equal(back_n, back_e) and torch.equal(back_word_n, back_word_e)
        assert torch.equal(back_n, V) and torch.equal(back_word_n, word)  # the exact inverse


@pytest.mark.parametrize("gamma", [0.5, 0.9, 1 - 2**-20])
def test_inverse_multiply_agrees_across_its_fast_and_split_paths(nat, gamma):
    """The native inverse multiply estimates in double where a block's |W| < 2^49 and splits W otherwise:
    blocks of 256 that mix both, values at the limit and a ragged tail give the eager kernel's integers."""
    gen = torch.Generator().manual_seed(5)
    V = _ints(gen, 256 * 9 + 37, 47)
    V[300] = 2**49  # block 1: one value just past the fast path's limit
    V[600] = -(2**49)  # block 2: its negative
    V[256 * 4 : 256 * 5] = _ints(gen, 256, 61)  # block 4: large values throughout
    V[-1] = 2**61 + 12345  # the ragged tail
    V[1000], V[1001] = 2**49 - 1, -(2**49) + 1  # block 3: the largest values the fast path takes
    word = torch.randint(0, 2**40, V.shape, generator=gen)
    f = torch.randn(V.shape, generator=gen, dtype=torch.float64)
    n, scale = fp.quantise(gamma, K), (1 - gamma) * 2.0**44
    for index in range(4):
        s = fp.dither(index, K)
        W, pushed = nat.damp_push2(V, word, n, s, K)
        assert all(torch.equal(a, b) for a, b in zip(nat.undamp_pop2(W, pushed, n, s, K),
                                                      EAGER.undamp_pop2(W, pushed, n, s, K)))
        assert torch.equal(nat.undamp_pop2(W, pushed, n, s, K)[0], V)
        W, pushed, *_ = nat.damp_kick2(V, word, n, s, K, f, scale)
        back, back_word, _ = nat.unkick_undamp2(W, pushed, n, s, K, f, scale)
        assert torch.equal(back, V) and torch.equal(back_word, word)
        assert torch.equal(back, EAGER.unkick_undamp2(W, pushed, n, s, K, f, scale)[0])


# (W, n, s) whose double estimate of floor((W 2^30 - s) / n) is off by +2, +1 and -1: the fast path's three
# corrections (found by searching with Python floats, which are IEEE doubles like the kernel's). An estimate off
# by +2 changes the result only through the block test, and only where 2^30 - n is small (gamma near 1).
_ESTIMATE_OFF = [(-538835561706437, 1073676288, 838311845), (-392273614590920, 1073676288, 435863815),
                 (-95983375708630, 663608847, 981310507), (-405611205982604, 966367642, 299088013),
                 (461335267443908, 536870912, 537958267), (453210966844944, 663608847, 1044313370)]


@pytest.mark.parametrize("W, n, s", _ESTIMATE_OFF)
def test_inverse_multiply_corrects_its_double_estimate(nat, W, n, s):
    assert K == 30
    W = W + torch.arange(-3, 4)
    word = torch.arange(7) * 5
    got, want = nat.undamp_pop2(W, word, n, s, K), EAGER.undamp_pop2(W, word, n, s, K)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 0.1 * 2.0**44, 2.0**30])
def test_kicks_round_half_to_even_like_torch(nat, dtype, scale):
    gen = torch.Generator().manual_seed(1)
    V = _ints(gen, 40_000, 50)
    f = (torch.randn(40_000, generator=gen, dtype=torch.float64) * 100).to(dtype)
    # exact ties at scale 1: both roundings must go to the even neighbour, on both signs
    f[:10] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.0, -0.0, 3.5, 1024.5], dtype=torch.float64).to(dtype)
    V_e, peak_inc, peak_v = EAGER.kick(V, f, scale)
    V_n, flag_inc, flag_v = nat.kick(V, f, scale)
    assert torch.equal(V_e, V_n)
    assert _in_range(peak_inc) == _in_range(flag_inc) and _in_range(peak_v) == _in_range(flag_v)
    assert torch.equal(EAGER.unkick(V_n, f, scale), nat.unkick(V_n, f, scale))
    assert torch.equal(nat.unkick(V_n, f, scale), V)


@pytest.mark.parametrize("h", [1.0, 0.37, 0.1, 2.5])
def test_drifts_and_decoding_agree(nat, h):
    gen = torch.Generator().manual_seed(2)
    X, V = _ints(gen, 40_000, 55), _ints(gen, 40_000, 55)
    X_e, *peaks_e = EAGER.drift(X, V, h)
    X_n, *flags_n = nat.drift(X, V, h)
    assert torch.equal(X_e, X_n)
    assert [_in_range(p) for p in peaks_e] == [_in_range(p) for p in flags_n]
    assert torch.equal(nat.undrift(X_n, V, h), X)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(EAGER.decode(X_n, 2.0**-44, dtype), nat.decode(X_n, 2.0**-44, dtype))
    assert int(EAGER.checksum(X, V)) == nat.checksum(X, V)  # both wrap modulo 2^64


def _wrapped(total):
    return (total + 2**63) % 2**64 - 2**63


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma, h", [(0.9, 1.0), (0.55, 0.3)])
def test_fused_kernels_equal_their_compositions(nat, dtype, gamma, h):
    """One pass instead of two or three: the same integers, decoded states and checksum sums."""
    gen = torch.Generator().manual_seed(4)
    X, V = _ints(gen, 30_000, 52), _ints(gen, 30_000, 52)
    word = torch.randint(0, 2**40, V.shape, generator=gen)
    f = torch.randn(30_000, generator=gen, dtype=torch.float64).to(dtype)
    n, s, scale = fp.quantise(gamma, K), fp.dither(7, K), (1 - gamma) * 2.0**44
    W_e, word_e, *flags_e, _ = EAGER.damp_kick2(V, word, n, s, K, f, scale)
    W_n, word_n, *flags_n, sum_w = nat.damp_kick2(V, word, n, s, K, f, scale)
    assert torch.equal(W_e, W_n) and torch.equal(word_e, word_n) and sum_w == _wrapped(int(W_e.sum()))
    assert [_in_range(p) for p in flags_e] == [_in_range(p) for p in flags_n]
    assert torch.equal(nat.damp_kick_only(V, n, s, K, f, scale)[0], W_e)
    V_n, back_word, sum_v = nat.unkick_undamp2(W_n, word_n, n, s, K, f, scale)
    assert torch.equal(V_n, V) and torch.equal(back_word, word) and sum_v == _wrapped(int(V.sum()))
    assert torch.equal(EAGER.unkick_undamp2(W_n, word_n, n, s, K, f, scale)[0], V)
    X_e, x_e, *_ = EAGER.drift_decode(X, V, h, dtype, 2.0**-44)
    X_n, x_n, *flags, sum_x, sum_v = nat.drift_decode(X, V, h, dtype, 2.0**-44)
    assert torch.equal(X_e, X_n) and torch.equal(x_e, x_n) and x_n.dtype == dtype
    assert (sum_x, sum_v) == (_wrapped(int(X_e.sum())), _wrapped(int(V.sum())))
    X_b, x_b, sum_xb, _ = nat.undrift_decode(X_n, V, h, dtype, 2.0**-44)
    assert torch.equal(X_b, X) and torch.equal(x_b, EAGER.decode(X, 2.0**-44, dtype))
    assert sum_xb == _wrapped(int(X.sum()))
    X_f, W_f, word_f, x_f, *flags_f, sum_xf, sum_wf = nat.damp_kick_drift2(
        X, V, word, n, s, K, f, scale, h, dtype, 2.0**-44)  # 30 000 elements: 29 blocks and a ragged one
    X_c, W_c, word_c, x_c, *flags_c, _, _ = EAGER.damp_kick_drift2(X, V, word, n, s, K, f, scale, h, dtype, 2.0**-44)
    assert all(torch.equal(a, b) for a, b in zip((X_f, W_f, word_f, x_f), (X_c, W_c, word_c, x_c)))
    assert [_in_range(p) for p in flags_f] == [_in_range(p) for p in flags_c]
    assert (sum_xf, sum_wf) == (_wrapped(int(X_c.sum())), _wrapped(int(W_c.sum())))


def test_fused_drift_flags_a_value_in_any_block(nat):
    """The range flags of the blocked kick-and-drift combine over blocks: a bad value in the last one counts."""
    X, V, word = (torch.zeros(2500, dtype=torch.int64) for _ in range(3))
    f = torch.zeros(2500, dtype=torch.float64)
    n = fp.quantise(0.9, K)
    assert all(_in_range(p) for p in nat.damp_kick_drift2(X, V, word, n, 0, K, f, 1.0, 1.0, torch.float64, 1.0)[4:8])
    X[-1] = 2**62 - 1  # in range itself; a kick of 1 moves the velocity to 1 and the drift takes X' past 2^62 - 1
    f[-1] = 1.0
    flags = nat.damp_kick_drift2(X, V, word, n, 0, K, f, 1.0, 1.0, torch.float64, 1.0)[4:8]
    assert [_in_range(p) for p in flags] == [True, True, True, False]
    f[-1] = float("nan")
    assert not _in_range(nat.damp_kick_drift2(X, V, word, n, 0, K, f, 1.0, 1.0, torch.float64, 1.0)[4])


def test_out_of_range_and_non_finite_values_are_flagged(nat):
    V = torch.tensor([5, -7, 2**61])
    ok = torch.tensor([0.25, -1.0, 0.0], dtype=torch.float64)
    assert all(_in_range(p) for p in nat.kick(V, ok, 2.0**20)[1:])
    for bad in (float("nan"), float("inf"), 2.0**62):  # an increment that is not a number or too large
        f = torch.tensor([bad, 0.0, 0.0], dtype=torch.float64)
        assert not _in_range(nat.kick(V, f, 1.0)[1]) and not _in_range(EAGER.kick(V, f, 1.0)[1])
    f = torch.tensor([0.0, 0.0, 2.0**61], dtype=torch.float64)  # V' = 2^62: one past the range
    assert not _in_range(nat.kick(V, f, 1.0)[2]) and not _in_range(EAGER.kick(V, f, 1.0)[2])
    assert not _in_range(nat.drift(V, V, 1.0)[2]) and not _in_range(EAGER.drift(V, V, 1.0)[2])
    assert not _in_range(nat.drift(V, V, 4.0)[1]) and not _in_range(EAGER.drift(V, V, 4.0)[1])


def test_non_contiguous_and_other_dtypes_are_handled(nat):
    gen = torch.Generator().manual_seed(3)
    V = _ints(gen, 64 * 32, 40).reshape(64, 32).t()  # a transposed view
    f = torch.randn(32, 64, generator=gen).to(torch.bfloat16)  # widened to float64 exactly
    assert torch.equal(nat.kick(V, f, 2.0**40)[0], EAGER.kick(V, f, 2.0**40)[0])
    n, s = fp.quantise(0.9, K), fp.dither(0, K)
    assert torch.equal(nat.damp_push2(V, torch.zeros_like(V), n, s, K)[0], EAGER.damp_push2(V, 0 * V, n, s, K)[0])
    assert torch.equal(nat.decode(V, 2.0**-44, torch.bfloat16), EAGER.decode(V, 2.0**-44, torch.bfloat16))


def test_the_build_is_cached_and_atomic(nat, tmp_path, monkeypatch):
    monkeypatch.setenv("ODE_MOMENTUM_CACHE", str(tmp_path))
    first = native._build(native._compiler())
    assert first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native._build(native._compiler()) == first and first.stat().st_mtime_ns == stamp  # reused
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_selection_falls_back_and_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="runs on CPU states only"):
        fpk.select("native", torch.device("cuda"))
    with pytest.raises(ValueError, match="`kernels` must be one of"):
        fpk.select("fast", torch.device("cpu"))
    with pytest.raises(ValueError, match="`kernels` must be one of"):
        om.MomentumResNet([nn.Linear(2, 2)], gamma=0.9, gradient="exact", gradient_options={"kernels": "c"})
    monkeypatch.setattr(native, "_load", lambda: (None, "no C compiler found (test)"))
    assert fpk.select("auto", torch.device("cpu")) is EAGER  # same bits, slower
    assert fpk.select("auto", torch.device("cuda")) is EAGER
    with pytest.raises(RuntimeError, match="no C compiler found \\(test\\).*'kernels': 'eager'"):
        native.library()


def _grads(model, x):
    x = x.clone().requires_grad_()
    torch.manual_seed(5)  # the same dropout masks for every kernel implementation
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    model.zero_grad()
    return out.detach(), grads


def _assert_same_bits(make, x, kernels=("eager", "native")):
    """``make(kernels)`` builds the model with each kernel implementation: outputs and gradients are equal."""
    (out_a, grads_a), (out_b, grads_b) = (_grads(make(k), x) for k in kernels)
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def _block(d):
    return nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.Tanh(), nn.Dropout(0.1), nn.Linear(d, d))


@pytest.mark.parametrize("gamma", [0.9, 0.3])  # 0.3: the general exact multiply (blocks of up to 4 inputs)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_mode_outputs_and_gradients_equal_across_kernels(nat, gamma, dtype):
    torch.manual_seed(0)
    blocks = [_block(16).to(dtype) for _ in range(12)]
    x = torch.randn(32, 16, dtype=dtype)
    _assert_same_bits(lambda kernels: om.MomentumResNet(blocks, gamma=gamma, gradient="exact",
                                                        gradient_options={"kernels": kernels}), x)


def test_inputs_in_other_layouts_give_the_same_bits_across_kernels(nat):
    """A channels_last or transposed input: the state is held row-major, so every kernel implementation hands
    the residuals the same layout and convolutions and matmuls round alike (they did not before)."""
    torch.manual_seed(1)
    conv = [nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()) for _ in range(4)]
    mlp = [nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256)).double() for _ in range(3)]
    inputs = [(conv, torch.randn(2, 3, 11, 13).to(memory_format=torch.channels_last) * 10),
              (mlp, torch.randn(256, 128, dtype=torch.float64).t())]
    for blocks, x in inputs:
        _assert_same_bits(lambda kernels: om.MomentumResNet(blocks, gamma=0.9, gradient="exact",
                                                            gradient_options={"kernels": kernels}), x)


class _Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8, dtype=torch.float64)

    def forward(self, t, x):
        return torch.tanh(self.lin(x)) * torch.cos(t)


def test_continuous_depth_leapfrog_agrees_across_kernels(nat):
    """Leapfrog with h != 1: scaled drifts and two damping factors per step."""
    torch.manual_seed(1)
    field, x = _Field(), torch.randn(4, 8, dtype=torch.float64)
    _assert_same_bits(lambda kernels: om.MomentumODE(field, eps=0.3, n_steps=15, gradient="exact",
                                                     gradient_options={"kernels": kernels}), x)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own
def test_compiled_kernels_agree_with_eager():
    """torch.compile'd kernels (the first call compiles for tens of seconds on a CPU): unit steps (a
    MomentumResNet) and scaled drifts (leapfrog with h != 1)."""
    torch.manual_seed(2)
    blocks = [_block(8).double() for _ in range(4)]
    x = torch.randn(16, 8, dtype=torch.float64)
    field = _Field()
    for make in (
        lambda kernels: om.MomentumResNet(blocks, gamma=0.9, gradient="exact", gradient_options={"kernels": kernels}),
        lambda kernels: om.MomentumODE(field, eps=0.3, n_steps=5, gradient="exact",
                                       gradient_options={"kernels": kernels}),
    ):
        _assert_same_bits(make, x, kernels=("eager", "compiled"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h", [1.0, 0.37, 2.5])
def test_native_adjoint_undrift_is_torchs_arithmetic(nat, dtype, h):
    """The reverse sweep's fused adjoint update rounds as the three torch operations it replaces."""
    gen = torch.Generator().manual_seed(6)
    ax, gx, av = (torch.randn(3000, generator=gen, dtype=torch.float64).mul(10.0**e).to(dtype) for e in (0, -2, 1))
    for g in (0.9, 0.5, 1 - 2**-30, 0.123456789):
        got_ax, got_av = native.adjoint_undrift(ax, gx, av, g, h)
        want_ax = ax + gx
        want_av = av * g + (want_ax if h == 1.0 else want_ax * h)
        assert torch.equal(got_ax, want_ax) and torch.equal(got_av, want_av)
    # not contiguous, or mixed dtypes: the caller's torch operations run instead
    assert native.adjoint_undrift(ax[::2], gx[::2], av[::2], 0.9, h) is None
    assert native.adjoint_undrift(ax, gx.to(torch.float16), av, 0.9, h) is None
