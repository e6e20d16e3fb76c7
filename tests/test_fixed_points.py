"""Fixed points: layer determinants, the RevNet baseline, heavy ball, learning to optimise."""

import numpy as np
import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum.analysis.fixed_points import (
    GradientMLP,
    L2OConfig,
    QuadraticGradient,
    heavy_ball,
    learning_to_optimise,
    momentum_iterates,
    momentum_layer_det,
    plot_heavy_ball,
    plot_learning_to_optimise,
    random_quadratics,
    revnet_iterates,
    revnet_layer_det,
)
from ode_momentum.nn import AdditiveCoupling, RevNetStack

# float64 autograd Jacobians of 2d x 2d maps with O(1) entries: determinants to a few ulps times d.
DET_TOL = 1e-12
# The same arithmetic in two orders (the library's step vs a hand-written recurrence): rounding only.
ROUND_TOL = 1e-12
# Fitted asymptotic heavy-ball rate vs the spectral radius of its iteration matrix (measured within 0.01).
RATE_TOL = 0.02


def mlp(d, width=16, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d)).double()


def state(d, seed):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("d", [1, 5])
def test_momentum_layer_det_is_gamma_to_the_d(gamma, d):
    f = mlp(d)
    det = momentum_layer_det(f, gamma, state(d, 1), state(d, 2))
    assert det.expected == gamma**d
    assert det.error < DET_TOL
    assert det.jacobian.shape == (2 * d, 2 * d)


def test_momentum_layer_jacobian_has_the_block_form():
    d, gamma = 4, 0.7
    f, x = mlp(d), state(d, 3)
    jac = momentum_layer_det(f, gamma, x).jacobian
    jf = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], x)
    eye = torch.eye(d, dtype=torch.float64)
    expected = torch.cat([
        torch.cat([eye + (1 - gamma) * jf, gamma * eye], dim=1),
        torch.cat([(1 - gamma) * jf, gamma * eye], dim=1),
    ])
    torch.testing.assert_close(jac, expected, rtol=0, atol=ROUND_TOL)


def test_revnet_layer_det_is_one():
    d = 6
    block = AdditiveCoupling(mlp(d, seed=1), mlp(d, seed=2))
    det = revnet_layer_det(block, state(d, 4), state(d, 5))
    assert det.expected == 1.0
    assert det.error < DET_TOL


def test_additive_coupling_and_stack_invert():
    d = 5
    blocks = [AdditiveCoupling(mlp(d, seed=i), mlp(d, seed=10 + i)) for i in range(4)]
    stack = RevNetStack(blocks)
    x = torch.randn(7, 2 * d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = stack(x)
    x1, x2 = x.chunk(2, dim=1)
    y1, y2 = stack.forward_state(x1, x2)
    torch.testing.assert_close(y, torch.cat([y1, y2], dim=1))
    r1, r2 = stack.inverse_state(y1, y2)
    torch.testing.assert_close(torch.cat([r1, r2], dim=1), x, rtol=0, atol=ROUND_TOL)
    r1, r2 = blocks[0].inverse(*blocks[0](x1, x2))
    torch.testing.assert_close(r1, x1, rtol=0, atol=ROUND_TOL)


def test_identity_coupling_is_the_undamped_momentum_rule():
    # v <- v + F(x), x <- x + v: the gamma -> 1 limit with the force rescaled by 1 / (1 - gamma)
    d = 3
    F = mlp(d)
    x, v = torch.randn(4, d, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64)
    v1, x1 = AdditiveCoupling(F, nn.Identity())(v, x)
    torch.testing.assert_close(v1, v + F(x))
    torch.testing.assert_close(x1, x + v + F(x))


def test_iterates_match_the_stacks_and_run_deeper():
    d, depth = 3, 4
    f = mlp(d)
    net = om.MomentumResNet([f] * depth, 0.8, gradient="backprop")
    x = torch.randn(5, d, dtype=torch.float64)
    with torch.no_grad():
        xs, vs = momentum_iterates(net, x, n_layers=3 * depth)
        assert xs.shape == (3 * depth + 1, 5, d)
        torch.testing.assert_close(xs[depth], net(x), rtol=0, atol=ROUND_TOL)
        deep = om.MomentumResNet([f] * (3 * depth), 0.8, gradient="backprop")
        torch.testing.assert_close(xs[-1], deep(x), rtol=0, atol=ROUND_TOL)
        block = AdditiveCoupling(mlp(d, seed=1), mlp(d, seed=2))
        stack = RevNetStack([block] * depth)
        z = torch.zeros_like(x)
        zs, ys = revnet_iterates(stack, z, x)
        y1, y2 = stack.forward_state(z, x)
        torch.testing.assert_close(zs[-1], y1)
        torch.testing.assert_close(ys[-1], y2)


def test_random_quadratics_are_spd_with_given_minimisers_and_leave_global_rng_alone():
    state_before = torch.random.get_rng_state()
    p = random_quadratics(6, 4, cond=20.0, seed=3)
    assert torch.equal(state_before, torch.random.get_rng_state())
    torch.testing.assert_close(p.A, p.A.transpose(1, 2))
    eig = torch.linalg.eigvalsh(p.A)
    assert float(eig.min()) >= 1 / 20 * (1 - 1e-9) and float(eig.max()) <= 1 + 1e-9
    torch.testing.assert_close(p.gradient(p.x_star), torch.zeros_like(p.b), rtol=0, atol=ROUND_TOL)
    q = random_quadratics(6, 4, cond=20.0, seed=3)
    assert torch.equal(p.A, q.A) and torch.equal(p.x_star, q.x_star)


def test_heavy_ball_is_polyak_and_converges_at_the_predicted_rate():
    p = random_quadratics(3, 5, cond=10.0, seed=0)
    gamma, eta = 0.5, 2.0
    hb = heavy_ball(p, gamma=gamma, eta=eta, n_steps=80)
    # Polyak: x_{k+1} = x_k - alpha grad F(x_k) + beta (x_k - x_{k-1}), alpha = (1 - gamma) eta, beta = gamma
    alpha, x_prev, x = (1 - gamma) * eta, torch.zeros_like(p.x_star), torch.zeros_like(p.x_star)
    for k in range(1, 6):
        x, x_prev = x - alpha * p.gradient(x) + gamma * (x - x_prev), x
        dist = ((x - p.x_star).norm(dim=1) / p.x_star.norm(dim=1)).numpy()
        np.testing.assert_allclose(hb.distance_momentum[k], dist, rtol=1e-10)
    np.testing.assert_allclose(hb.fitted_rate, hb.predicted_rate, atol=RATE_TOL)
    assert hb.distance_momentum[-1].max() < 1e-10
    assert hb.distance_revnet[40:].mean(axis=0).min() > 0.1  # the volume-preserving twin oscillates


def test_learning_to_optimise_momentum_keeps_converging_revnet_does_not():
    config = L2OConfig(n_train=32, n_test=32, iters=60)  # the verify sizes are checked in test_theory.py
    result = learning_to_optimise(config)
    n = config.depth
    assert result.n_params_momentum == result.n_params_revnet == 2 * config.d * config.width
    assert result.error_momentum.shape == result.error_revnet.shape == (config.deeper * n + 1,)
    assert result.error_momentum[0] == pytest.approx(1.0) and result.error_revnet[0] == pytest.approx(1.0)
    m_n, r_n = result.at(n)
    m_k, r_k = result.at(config.deeper * n)
    assert m_k < m_n
    assert r_k > 0.1
    again = learning_to_optimise(config)
    np.testing.assert_array_equal(again.error_momentum, result.error_momentum)  # deterministic given the seed


def test_gradient_mlp_vanishes_at_the_minimiser():
    p = random_quadratics(4, 3, seed=1, dtype=torch.float32)
    f = GradientMLP(3, 8)
    with torch.no_grad():
        assert float(f(p.x_star, p.A, p.b).abs().max()) < 1e-6
    assert sum(q.numel() for q in f.parameters()) == 2 * 3 * 8


def test_figures_have_titles_labels_and_legends():
    hb = heavy_ball(random_quadratics(2, 3, seed=0), gamma=0.5, eta=2.0, n_steps=20)
    l2o = learning_to_optimise(L2OConfig(d=2, width=4, depth=3, n_train=8, n_test=8, iters=2))
    for fig in (plot_heavy_ball(hb), plot_learning_to_optimise(l2o)):
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None


# ------------------------------------------------------------------------------------------------ errors


def test_errors_name_the_argument():
    f = mlp(2)
    with pytest.raises(ValueError, match="`gamma` must lie in"):
        momentum_layer_det(f, 1.5, state(2, 0))
    with pytest.raises(TypeError, match="`x` must be a non-empty floating-point tensor"):
        momentum_layer_det(f, 0.5, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="`v` must have the shape of `x`"):
        momentum_layer_det(f, 0.5, state(2, 0), state(3, 0))
    with pytest.raises(TypeError, match="`block` must be an AdditiveCoupling"):
        revnet_layer_det(f, state(2, 0), state(2, 1))
    with pytest.raises(ValueError, match="`x2` must have the shape of `x1`"):
        revnet_layer_det(AdditiveCoupling(f, f), state(2, 0), state(3, 1))
    with pytest.raises(TypeError, match="`F` must be an nn.Module"):
        AdditiveCoupling(lambda x: x, nn.Identity())
    with pytest.raises(ValueError, match="`blocks` is empty"):
        RevNetStack([])
    with pytest.raises(TypeError, match=r"`blocks\[0\]` must be an AdditiveCoupling"):
        RevNetStack([f])
    with pytest.raises(ValueError, match="even number of channels"):
        RevNetStack([AdditiveCoupling(f, f)])(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="one batch size"):
        RevNetStack([AdditiveCoupling(f, f)]).forward_state(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="`model` must be a MomentumResNet"):
        momentum_iterates(f, state(2, 0)[None])
    with pytest.raises(ValueError, match="`n_layers` must be >= 1"):
        momentum_iterates(om.MomentumResNet([f], 0.5), state(2, 0)[None], n_layers=0)
    with pytest.raises(TypeError, match="`model` must be a RevNetStack"):
        revnet_iterates(f, state(2, 0)[None], state(2, 0)[None])
    with pytest.raises(ValueError, match="`cond` must be >= 1"):
        random_quadratics(2, 2, cond=0.5)
    with pytest.raises(TypeError, match="`dtype` must be a floating torch.dtype"):
        random_quadratics(2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="`eta` must be > 0"):
        QuadraticGradient(0.0)
    with pytest.raises(ValueError, match="`x0` must have shape"):
        heavy_ball(random_quadratics(2, 2), gamma=0.5, eta=1.0, n_steps=3, x0=torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="`problems` must be QuadraticProblems"):
        heavy_ball(None, gamma=0.5, eta=1.0, n_steps=3)
    with pytest.raises(ValueError, match="`width` must be even"):
        L2OConfig(width=5)
    with pytest.raises(ValueError, match="`gamma` = 0 cannot be reversed"):
        L2OConfig(gamma=0.0)
    with pytest.raises(TypeError, match="`config` must be an L2OConfig"):
        learning_to_optimise({"d": 2})
