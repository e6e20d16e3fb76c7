"""Activation memory: flat in depth for memory-free modes, linear for backprop."""

import gc

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum.analysis import saved_tensor_bytes

WIDTH, BATCH = 64, 256
# Memory-free modes keep a constant set of tensors (x_0, x_N, v_N); "flat" allows 1% for bookkeeping.
FLAT_RTOL = 0.01
# Backprop saves a fixed set of tensors per layer, so bytes are proportional to depth; 5% for the tensors
# saved once (the input).
LINEAR_RTOL = 0.05


def stack(depth, gradient):
    torch.manual_seed(0)
    functions = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH)) for _ in range(depth)]
    return om.MomentumResNet(functions, 0.9, gradient=gradient)


def activation_bytes(depth, gradient):
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    return saved_tensor_bytes(stack(depth, gradient), x)


def test_reversible_memory_flat_backprop_linear():
    depths = (8, 64, 256)
    rev = [activation_bytes(d, "reversible") for d in depths]
    back = [activation_bytes(d, "backprop") for d in depths]
    assert max(rev) <= min(rev) * (1 + FLAT_RTOL)
    for d, b in zip(depths, back):
        assert b / back[0] == pytest.approx(d / depths[0], rel=LINEAR_RTOL)
    assert activation_bytes(128, "backprop") >= 50 * activation_bytes(128, "reversible")


def test_momentum_ode_memory_flat_in_steps():
    func = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    layer = lambda n: om.MomentumODE(lambda_module(func), 0.5, n_steps=n, method="leapfrog")  # noqa: E731
    x = torch.randn(32, 8, requires_grad=True)
    sizes = [saved_tensor_bytes(layer(n), x) for n in (4, 64)]
    assert sizes[1] <= sizes[0] * (1 + FLAT_RTOL)


class lambda_module(nn.Module):
    """Adapts a module of x to the field signature F(t, x)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, t, x):
        return self.module(x)


def test_saved_tensor_bytes_counts_storages_once_and_skips_parameters():
    lin = nn.Linear(10, 10)
    x = torch.randn(4, 10, requires_grad=True)
    # Linear saves its input (40 floats) and its weight (a parameter, excluded).
    assert saved_tensor_bytes(lin, x) == 4 * 10 * 4
    # x * x saves x twice: one storage
    assert saved_tensor_bytes(lambda a: a * a, x) == 4 * 10 * 4
    with torch.no_grad():
        assert saved_tensor_bytes(lin, x) == 0


@pytest.mark.parametrize("gradient", ["exact", "reversible", "checkpoint", "auto", "backprop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_leaves_no_reference_cycles(gradient, dtype):
    # Everything a solve builds (recorder, recorded graphs, state system, native-kernel out-parameters) must be
    # freed by reference counting when the backward returns. A cycle would keep the last recorded graph alive
    # until the cyclic collector runs, and its full passes over the process cost milliseconds per step.
    # Dropout and BatchNorm cover the RNG replay and buffer-restoring paths.
    torch.manual_seed(0)
    functions = [nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Dropout(0.1), nn.Tanh()) for _ in range(6)]
    net = om.MomentumResNet(functions, 0.9, gradient=gradient).to(dtype)
    x = torch.randn(32, 16, dtype=dtype)

    def step():
        net(x.clone().requires_grad_()).square().sum().backward()

    step()  # first call: one-time caches (kernel library, types)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        step()
        step()
        unreachable = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert unreachable == 0
