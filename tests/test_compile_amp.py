"""Compiled residual functions and bf16 autocast in the memory-free gradient modes (issue 8, items 2 and 3).

torch.compile: the residual functions are compiled, the reversal's autograd Function is not. The exact mode
must stay bit-exact, which needs the backward to reconstruct each state from the same code path the forward
took; where the paths differ, the integrity checks must raise rather than return wrong gradients.

Autocast: the residual functions run in bf16, the state arithmetic never does (fixed point in the exact mode,
the state's float dtype in the float modes), and the gradients stay within bf16 rounding of autocast backprop.
"""

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import ode_momentum as om
from ode_momentum.analysis import exact_round_trip
from ode_momentum.gradients import ExactReversalError

GAMMA = 0.9

# Compiled residuals round differently from eager ones (inductor fuses and reorders float32 arithmetic), so
# gradients through them are not bit-equal to eager; issue 8 asks for 1e-6 relative (measured 2.6e-7 at
# depth 3, float32).
COMPILED_RTOL = 1e-6
# The same 1e-6 for a residual computed along two float32 paths that differ by rounding only.
TWO_PATHS_RTOL = 1e-6
# bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3). Two correct bf16 computations of one gradient
# round in different places (e.g. autocast backprop rounds the cotangent of F to bf16 before multiplying it
# by 1 - gamma, the memory-free modes after), so they differ by a few bf16 roundings even at depth 1. Issue 8:
# 1e-2 relative, taken on the whole gradient vector (measured at depth 8: at most 3.1e-3 over 10 seeds, as
# far as autocast backprop itself is from float32, 3.4e-3); per tensor the max-norm gap reaches 1e-2.
AMP_RTOL = 1e-2

# The first torch.compile imports inductor, which imports torch.utils.mkldnn, whose TorchScript classes trip
# torch's own deprecation of `torch.jit.script_method` (torch 2.13): not ours and unavoidable.
INDUCTOR_IMPORT_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def mlp(d):
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))


def conv_block(c):
    """Pre-activation residual of diffusion U-Nets: GroupNorm, SiLU, 3x3 convolution, ``(B, C, H, W)``."""
    return nn.Sequential(nn.GroupNorm(2, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))


def gradients(blocks, mode, x, **options):
    """Gradients of a mean-square loss w.r.t. ``x`` and every parameter, through a fresh stack on ``blocks``."""
    net = om.MomentumResNet(blocks, GAMMA, gradient=mode, gradient_options=options or None)
    net.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    net(x).square().mean().backward()
    return [x.grad] + [p.grad.clone() for p in net.parameters()]


def max_rel_err(got, want):
    return max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want, strict=True))


@pytest.fixture(autouse=True)
def _caller_rng_kept():
    """The tests seed the global generator; give the caller's state back afterwards."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches are process-wide: every compiled module runs through one wrapper frame and shares its
    recompile limit. Start from empty caches and leave them empty."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- torch.compile -----------------------------------------------------------------------------------------


@pytest.mark.slow  # two inductor compilations, about 10 s on a CPU
@pytest.mark.filterwarnings(INDUCTOR_IMPORT_WARNING)
def test_compiled_residual_functions_reversible_and_exact_regression(fresh_dynamo):
    """Compiled blocks: float reversal and bit-exact reversal, gradients equal to the eager blocks' to 1e-6.

    For this block inductor's no-grad graph (the forward's) and training graph (the recomputation's) differ
    by 2.4e-7 on a CPU (torch 2.13); the exact mode must reconstruct bit for bit all the same.
    """
    torch.manual_seed(0)
    eager = [conv_block(8) for _ in range(3)]
    counter = CompileCounterWithBackend("inductor")
    compiled = [torch.compile(block, backend=counter) for block in eager]  # parameters shared with `eager`
    x = torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(1))  # (B, C, H, W)

    want = gradients(eager, "reversible", x, on_drift="raise")
    assert max_rel_err(gradients(compiled, "reversible", x, on_drift="raise"), want) <= COMPILED_RTOL
    assert counter.frame_count >= 2  # really compiled: a no-grad graph and a grad graph

    trip = exact_round_trip(om.MomentumResNet(compiled, GAMMA, gradient="exact"), x)
    assert trip.all_equal, f"first unequal state at step {trip.first_unequal}"
    assert trip.buffer_empty

    want = gradients(eager, "exact", x)
    assert max_rel_err(gradients(compiled, "exact", x), want) <= COMPILED_RTOL


class TwoPaths(nn.Module):
    """``tanh(W x + b)``, computed as ``2 sigmoid(2 y) - 1`` when autograd does not record.

    The same function along two float32 paths that round differently, chosen by grad mode: what a compiled
    residual does (inductor's inference and training graphs) and what eager kernels chosen by
    ``requires_grad`` do (nn.MultiheadAttention's fast path, scaled-dot-product-attention backends).
    """

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        y = self.lin(x)
        return torch.tanh(y) if torch.is_grad_enabled() else 2 * torch.sigmoid(2 * y) - 1


def test_exact_reconstruction_follows_the_forward_path_when_the_residual_depends_on_grad_mode():
    torch.manual_seed(0)
    blocks = [TwoPaths(16) for _ in range(6)]
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    y = blocks[0].lin(x).detach()
    assert not torch.equal(torch.tanh(y), 2 * torch.sigmoid(2 * y) - 1)  # the two paths do round differently
    trip = exact_round_trip(om.MomentumResNet(blocks, GAMMA, gradient="exact"), x)
    assert trip.all_equal and trip.buffer_empty
    want = gradients(blocks, "backprop", x)  # autograd through the tanh path, with the float gamma
    # the exact mode's dyadic gamma and fixed point add 1e-7 relative at most (test_exact.RTOL_VS_BACKPROP)
    assert max_rel_err(gradients(blocks, "exact", x), want) <= TWO_PATHS_RTOL


@pytest.mark.slow  # one inductor compilation, a few seconds on a CPU
@pytest.mark.filterwarnings(INDUCTOR_IMPORT_WARNING)
def test_compiled_residual_falling_back_to_eager_in_the_backward_is_caught(fresh_dynamo):
    """The integrity checks catch a backward that does not evaluate the forward's function.

    The forward and the backward evaluate every residual the same way (autograd on, input requiring grad),
    so a compiled residual runs one graph in both. Forcing the backward to run it eagerly (as Dynamo does
    past its recompile limit, shared by every compiled module in a process) changes the rounding, and the
    per-step checksum must name the step.
    """
    torch.manual_seed(0)
    block = mlp(16)
    compiled = torch.compile(block)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    with torch.enable_grad():
        if torch.equal(compiled(x.clone().requires_grad_()), block(x.clone().requires_grad_())):
            pytest.skip("compiled and eager agree bit for bit here: no mismatch to catch")
    net = om.MomentumResNet([compiled], GAMMA, gradient="exact")
    loss = net(x.requires_grad_()).square().mean()
    with torch.compiler.set_stance("force_eager"):
        with pytest.raises(ExactReversalError, match="exact reversal mismatch at step 0"):
            loss.backward()


# --- bf16 autocast -----------------------------------------------------------------------------------------


class DtypeLog(nn.Module):
    """An MLP residual that logs the dtypes of its input and output at every call."""

    def __init__(self, d, log):
        super().__init__()
        self.net = mlp(d)
        self.log = log

    def forward(self, x):
        out = self.net(x)
        self.log.append((x.dtype, out.dtype))
        return out


def autocast_run(mode, depth=8):
    """Forward under bf16 autocast, backward outside it (the usual AMP loop); returns what the tests check."""
    torch.manual_seed(0)
    log = []
    net = om.MomentumResNet(
        [DtypeLog(16, log) for _ in range(depth)],
        GAMMA,
        gradient=mode,
        gradient_options={"on_drift": "raise"} if mode in ("reversible", "checkpoint") else None,
    )
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_n, v_n = net.forward_state(x)
        loss = x_n.square().mean() + v_n.square().mean()
    forward_log = list(log)
    log.clear()
    loss.backward()
    grads = [x.grad] + [p.grad for p in net.parameters()]
    return net, x.detach(), (x_n, v_n), grads, forward_log, list(log)


@pytest.mark.parametrize("mode", ["reversible", "exact", "checkpoint", "auto"])
def test_bf16_autocast_state_stays_float32_and_gradients_match_autocast_backprop(mode):
    *_, want, _, _ = autocast_run("backprop")
    net, x, (x_n, v_n), got, forward_log, backward_log = autocast_run(mode)
    depth = net.depth
    assert x_n.dtype == v_n.dtype == torch.float32
    assert len(forward_log) == depth and len(backward_log) >= depth  # the backward recomputes every layer
    # the residuals see the state in float32, never bf16, and run in bf16 in the forward and (autocast
    # re-entered) in the backward's recomputation
    assert set(forward_log) == set(backward_log) == {(torch.float32, torch.bfloat16)}
    assert all(g.dtype == torch.float32 for g in got)
    flat_got, flat_want = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    assert float((flat_got - flat_want).norm() / flat_want.norm()) <= AMP_RTOL


def test_bf16_autocast_exact_mode_reconstructs_bit_exactly():
    torch.manual_seed(0)
    net = om.MomentumResNet([mlp(16) for _ in range(8)], GAMMA, gradient="exact")
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trip = exact_round_trip(net, x)
        assert net.functions[0](x).dtype == torch.bfloat16  # the residuals did run in bf16
    assert trip.all_equal, f"first unequal state at step {trip.first_unequal}"
    assert trip.buffer_empty
