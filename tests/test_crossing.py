"""Crossing trajectories: the 1-D cubic and nested rings experiments (small sizes; the claim's bounds are
checked at the verify sizes in tests/test_theory.py)."""

import numpy as np
import pytest
import torch
from torch import nn

from ode_momentum.analysis.crossing import (
    CubicConfig,
    RingsConfig,
    TanhMLP,
    fit_cubic,
    fit_rings,
    flow_step_lipschitz,
    plot_cubic,
    plot_rings,
)

# float32 outputs of order 1: a non-decreasing map may still show decrements of a few ulps.
MONOTONE_TOL = 1e-5

TINY_CUBIC = CubicConfig(n_train=20, n_eval=41, iters=30, n_traj=5, steps_per_layer=4)
TINY_RINGS = RingsConfig(n_train=60, n_eval=50, iters=20, n_traj=7, steps_per_layer=2, models=("momentum", "flow",
                                                                                              "resnet"))


@pytest.fixture(scope="module")
def cubic():
    return fit_cubic(TINY_CUBIC)


@pytest.fixture(scope="module")
def rings():
    return fit_rings(TINY_RINGS)


def test_fit_cubic_shapes_and_monotone_flow(cubic):
    c = TINY_CUBIC
    assert set(cubic.mse) == {"momentum", "flow", "resnet"}
    assert cubic.grid.shape == (c.n_eval,)
    for kind in cubic.mse:
        assert cubic.outputs[kind].shape == (c.n_eval,)
        assert cubic.trajectories[kind].shape == (c.depth + 1, c.n_traj)
        np.testing.assert_allclose(cubic.trajectories[kind][0], np.linspace(-1, 1, c.n_traj), atol=1e-7)
        assert cubic.mse[kind] == pytest.approx(float(np.mean((cubic.outputs[kind] + cubic.grid**3) ** 2)),
                                                rel=1e-5)
    # a first-order flow whose Euler steps are certified injective is an increasing map
    assert cubic.step_lipschitz < 1
    assert np.diff(cubic.outputs["flow"]).min() >= -MONOTONE_TOL
    assert cubic.mse["flow"] >= 1 / 7 - 0.01  # the best non-decreasing fit of -x^3 has MSE 1/7 (grid: ~)


def test_fit_cubic_is_deterministic_and_leaves_global_rng_alone(cubic):
    state = torch.random.get_rng_state()
    again = fit_cubic(TINY_CUBIC)
    assert torch.equal(state, torch.random.get_rng_state())
    for kind in cubic.mse:
        np.testing.assert_array_equal(again.outputs[kind], cubic.outputs[kind])


def test_fit_rings_shapes(rings):
    c = TINY_RINGS
    assert set(rings.accuracy) == {"momentum", "flow", "resnet"}
    assert rings.X_test.shape == (c.n_eval, 2) and rings.y_test.shape == (c.n_eval,)
    for kind in rings.accuracy:
        assert 0.0 <= rings.accuracy[kind] <= 1.0
        assert rings.final_states[kind].shape == (c.n_eval, 2)
        assert rings.trajectories[kind].shape == (c.depth + 1, c.n_traj, 2)
        np.testing.assert_allclose(rings.trajectories[kind][0], rings.X_test[: c.n_traj], atol=1e-6)
        acc = float(np.mean(rings.final_states[kind].argmax(axis=1) == rings.y_test))
        assert acc == pytest.approx(rings.accuracy[kind])
    assert np.isfinite(rings.step_lipschitz)


def test_flow_step_lipschitz_of_a_linear_field_is_h_times_its_norm():
    f = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[0.0, -3.0], [1.0, 0.5]]))
    states = np.random.default_rng(0).normal(size=(4, 10, 2))
    expected = 0.25 * float(torch.linalg.matrix_norm(f.weight.detach(), 2))
    assert flow_step_lipschitz(f, states, 0.25) == pytest.approx(expected, rel=1e-12)
    g = TanhMLP(1, 4)
    assert flow_step_lipschitz(g, np.linspace(-1, 1, 5)[:, None], 0.1) > 0


def test_figures_have_titles_labels_and_legends(cubic, rings):
    for fig in (plot_cubic(cubic), plot_rings(rings)):
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`models` entries must be in"):
        CubicConfig(models=("momentum", "lstm"))
    with pytest.raises(ValueError, match="`gamma` must lie in"):
        CubicConfig(gamma=2.0)
    with pytest.raises(ValueError, match="`gamma` = 0 cannot be reversed"):
        RingsConfig(gamma=0.0)
    with pytest.raises(ValueError, match="`v0` must be one of"):
        CubicConfig(v0="random")
    with pytest.raises(ValueError, match="`input_gain` must be > 0"):
        CubicConfig(input_gain=0.0)
    with pytest.raises(ValueError, match="`n_rings` must be >= 2"):
        RingsConfig(n_rings=1)
    with pytest.raises(ValueError, match="`iters` must be >= 1"):
        RingsConfig(iters=0)
    with pytest.raises(ValueError, match="`lr` must be > 0"):
        CubicConfig(lr=-1.0)
    with pytest.raises(TypeError, match="`config` must be a CubicConfig"):
        fit_cubic(RingsConfig())
    with pytest.raises(TypeError, match="`config` must be a RingsConfig"):
        fit_rings(CubicConfig())
