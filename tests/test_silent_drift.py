"""Float reversal must never return a badly wrong gradient silently.

The case that used to: the benchmark's conv stack (3x3 Conv2d-BatchNorm2d-ReLU residual functions on 16x16 maps,
depth 32, gamma 0.9) in float32. Float reversal reconstructs x_0 to ~3e-5 (below drift_tol = 1e-4, so the
x_0 check passed), but the recomputed pre-activations of a few ReLUs land on the other side of zero. Each
flipped branch changes the gradient at its element by O(1): input gradients came back 3% off float64
backprop, parameter gradients ~1%, while float32 backprop is within 3e-6.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum.analysis.reversal import branch_flips
from ode_momentum.benchmarking.stacks import STACKS, build_functions, make_input
from ode_momentum.gradients.reversible import ROUNDING_TIE_ULPS, _Probe, decisions_of, unit_roundoff

GAMMA, DEPTH = 0.9, 32
FLIP = "changed the derivative pattern"


def grads_of(net, x):
    net.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    net(x).square().mean().backward()
    return [x.grad] + [p.grad for p in net.parameters()]


def max_rel_err(got, want):
    return max(float((g.double() - w.double()).abs().max() / w.double().abs().max()) for g, w in zip(got, want))


def net(functions, gradient, dtype=torch.float32, **options):
    return om.MomentumResNet(copy.deepcopy(functions), GAMMA, gradient=gradient, gradient_options=options).to(dtype)


@pytest.fixture(scope="module")
def conv():
    """The benchmark's conv16 stack at depth 32: functions, float32 input, float64 backprop gradients."""
    spec = STACKS["conv16"]  # 16 channels, 16x16 maps, batch 32; the failure needs this many decisions
    functions = build_functions(spec, DEPTH)
    x = make_input(spec)
    return functions, x, grads_of(net(functions, "backprop", torch.float64), x.double())


@pytest.mark.slow
def test_conv_stack_warns_where_it_used_to_be_silently_wrong(conv):
    functions, x, want = conv
    with pytest.warns(om.ReconstructionDriftWarning, match=FLIP) as caught:
        got = grads_of(net(functions, "reversible"), x)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert 'gradient="exact"' in message
    # the warning is warranted: far worse than float32 backprop, which is exact to a few ulps here
    assert max_rel_err(got, want) > 1e-3
    assert max_rel_err(grads_of(net(functions, "backprop"), x), want) < 1e-4
    # ... and the old check alone passed: x_0 is reconstructed well inside drift_tol
    report = branch_flips(om.MomentumResNet(functions, GAMMA), x)
    assert report.relative_error[0] < om.gradients.ReversibleOptions().drift_tol
    # the detector names the last flipped step of the measured flips, and only steps that flipped
    named = int(message.split("first at step ")[1].split(" ")[0])
    assert named == max(report.beyond_rounding)
    assert report.total_flips > 0


@pytest.mark.slow
def test_conv_stack_raises_when_asked_and_ignore_is_silent(conv):
    functions, x, _ = conv
    with pytest.raises(om.ReconstructionDriftError, match=FLIP):
        grads_of(net(functions, "reversible", on_drift="raise"), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads_of(net(functions, "reversible", on_drift="ignore"), x)


@pytest.mark.slow
def test_checkpoint_warns_with_long_segments_and_short_ones_fix_it(conv):
    functions, x, want = conv
    with pytest.warns(om.ReconstructionDriftWarning, match=FLIP):
        grads_of(net(functions, "checkpoint"), x)  # auto segment: 26 steps at gamma 0.9 in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = grads_of(net(functions, "checkpoint", every=4), x)
    assert max_rel_err(got, want) < 1e-4


def small_conv(depth, act, dtype=torch.float32, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        functions = [nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), act())
                     for _ in range(depth)]
    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return functions, x.to(dtype)


@pytest.mark.parametrize("train", [True, False], ids=["bn-train", "bn-eval"])
def test_smooth_conv_stack_stays_silent_and_matches_backprop(train):
    # Tanh has no kinks: the reconstruction error (~1e-6 here) moves the gradients by as much, no more.
    functions, x = small_conv(DEPTH, nn.Tanh)
    nets = [net(functions, mode).train(train) for mode in ("backprop", "reversible", "checkpoint")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want, *got = [grads_of(n, x) for n in nets]
    for g in got:
        assert max_rel_err(g, want) < 1e-4  # the float32 tolerance of tests/test_reversible.py


def test_relu_conv_stack_in_float64_stays_silent_and_matches_backprop():
    functions, x = small_conv(DEPTH, nn.ReLU, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = grads_of(net(functions, "backprop", torch.float64), x)
        got = grads_of(net(functions, "reversible", torch.float64), x)
    assert max_rel_err(got, want) < 1e-10


class Shifted(nn.Module):
    def __init__(self, d, act):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.act = act()

    def forward(self, x):
        return self.act(self.lin(x))


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_corrupted_state_names_its_step(act):
    # A weight modified in place between forward and backward: the recomputation of step 5 differs, so the
    # reconstructed (x_5, v_5) does, and every state before it; the steps after it are reconstructed exactly.
    torch.manual_seed(0)
    layer = om.MomentumResNet([Shifted(16, act) for _ in range(12)], GAMMA, gradient_options={"on_drift": "raise"})
    layer.double()
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    loss = layer(x).square().sum()
    with torch.no_grad():
        layer.functions[5].lin.bias.add_(0.5)
    with pytest.raises(om.ReconstructionDriftError, match="first at step 5"):
        loss.backward()


def test_fingerprints_name_the_first_bad_step_of_a_directly_corrupted_state(monkeypatch):
    from ode_momentum.gradients import reversible

    original = reversible._FloatReverse.after_inverse

    def corrupt(self, n, x, v):
        return original(self, n, x + 1e-3 if n == 7 else x, v)

    monkeypatch.setattr(reversible._FloatReverse, "after_inverse", corrupt)
    torch.manual_seed(0)
    layer = om.MomentumResNet([Shifted(16, nn.Tanh) for _ in range(10)], GAMMA).double()
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    with pytest.warns(om.ReconstructionDriftWarning, match="first at step 7"):
        layer(x).sum().backward()


def test_flips_at_rounding_level_are_not_reported():
    # Depth 2 in float32: the reconstruction is within a few ulps, so any changed branch is a rounding tie.
    functions, x = small_conv(2, nn.ReLU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads_of(net(functions, "reversible"), x)
    report = branch_flips(om.MomentumResNet(functions, GAMMA), x)
    assert max(report.relative_error) < ROUNDING_TIE_ULPS * unit_roundoff(torch.float32)
    assert report.beyond_rounding == []


def test_decisions_are_found_in_the_graph():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    kinds = {
        "relu": torch.relu(x), "leaky": nn.functional.leaky_relu(x), "relu6": nn.functional.relu6(x),
        "clamp": x.clamp(-1, 1), "abs": x.abs(), "maximum": torch.maximum(x, x.flip(0)),
        "maxpool": nn.functional.max_pool2d(x, 2), "where": torch.where(x > 0, x, 2 * x),
        "hardswish": nn.functional.hardswish(x), "selu": nn.functional.selu(x),
    }
    for name, y in kinds.items():
        assert len(decisions_of(y.sin())) == 1, name
    for name, y in {"tanh": x.tanh(), "gelu": nn.functional.gelu(x), "elu": nn.functional.elu(x),
                    "softplus": nn.functional.softplus(x), "conv-bn": nn.BatchNorm2d(3)(x * 2)}.items():
        assert decisions_of(y) == [], name
    nested = torch.relu(nn.functional.max_pool2d(torch.relu(x), 2)) + x.abs().sum()
    assert len(decisions_of(nested)) == 4  # two ReLUs, the max-pool indices, abs


def test_pattern_hash_changes_with_any_one_or_two_flips():
    probe = _Probe.__new__(_Probe)
    probe._weights = {}
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 8, 8, generator=gen) > 0.5
    base = probe._pattern([mask])
    assert probe._pattern([mask.clone()]) == base
    flat = mask.reshape(-1)
    pairs = [(i, None) for i in range(flat.numel())]  # every single flip, at every byte of every word
    pairs += [tuple(torch.randperm(flat.numel(), generator=gen)[:2].tolist()) for _ in range(200)]
    pairs += [(3, 3 + 4 * k) for k in range(1, 8)]  # the same byte of different words
    for i, j in pairs:
        flipped = flat.clone()
        flipped[i] = ~flipped[i]
        if j is not None:
            flipped[j] = ~flipped[j]
        assert probe._pattern([flipped.view_as(mask)]) != base, (i, j)
    signs = torch.sign(torch.randn(3, 5, generator=gen))  # e.g. a clamp's sides
    moved = signs.clone()
    moved[1, 2] = -moved[1, 2]
    assert probe._pattern([signs]) != probe._pattern([moved])
    index = torch.randint(0, 9, (5, 7), generator=gen)  # e.g. max-pool indices
    moved = index.clone()
    moved[2, 3] += 1
    assert probe._pattern([index]) != probe._pattern([moved])
