"""First-order embedding: the momentum ODE with force f + eps J_f f and v0 = f(x0) follows x' = f."""

import pytest
import torch
from torch import nn

from ode_momentum.analysis.embedding import EmbeddedForce, first_order_embedding

ROUND_TOL = 1e-12  # one float64 evaluation computed two ways
ORDER_TOL = 0.1  # fitted order of the leapfrog (2) or momentum_exp (1) against the exact flow


class Field(nn.Module):
    """f(t, x) = W2 tanh(W1 x + b) + 0.3 cos(t) x, float64."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.W1 = nn.Parameter(torch.randn(8, 2, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(8, generator=gen, dtype=torch.float64))
        self.W2 = nn.Parameter(torch.randn(2, 8, generator=gen, dtype=torch.float64) / 4)

    def forward(self, t, x):
        return torch.tanh(x @ self.W1.T + self.b) @ self.W2.T + 0.3 * torch.cos(t) * x


def x0():
    return torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_embedded_force_is_f_plus_eps_total_derivative():
    f, x, t, eps = Field(), x0(), torch.tensor(0.7, dtype=torch.float64), 0.3
    with torch.no_grad():
        force = EmbeddedForce(f, eps)(t, x)
    fx = f(t, x).detach()
    # d/dt f(t, x(t)) = f_t + J_x f f, row by row with an explicit Jacobian
    expected = []
    for i in range(x.shape[0]):
        jx = torch.autograd.functional.jacobian(lambda z: f(t, z[None])[0], x[i])
        jt = torch.autograd.functional.jacobian(lambda s: f(s, x[i:i + 1])[0], t)
        expected.append(fx[i] + eps * (jx @ fx[i] + jt))
    torch.testing.assert_close(force, torch.stack(expected), rtol=0, atol=ROUND_TOL)
    assert isinstance(EmbeddedForce(f, eps).f, nn.Module)  # parameters are found by the solvers


@pytest.mark.parametrize("eps", [0.2, 2.0])
def test_leapfrog_converges_to_the_first_order_flow_at_order_two(eps):
    res = first_order_embedding(Field(), x0(), eps=eps, t1=1.5, n_steps=(16, 32, 64, 128))
    assert res.fitted_order == pytest.approx(2.0, abs=ORDER_TOL)
    assert all(res.error[1:] < res.error[:-1])
    assert res.error[-1] < 1e-4 and res.velocity_error[-1] < 1e-4
    assert res.uncorrected_error > 100 * res.error[-1]  # without the correction the flow is off by O(eps)


def test_momentum_exp_converges_at_order_one():
    res = first_order_embedding(Field(), x0(), eps=0.5, n_steps=(32, 64, 128, 256), method="momentum_exp")
    assert res.fitted_order == pytest.approx(1.0, abs=ORDER_TOL)


def test_linear_field_embeds_exactly_in_the_limit():
    # f(x) = A x: the force is (A + eps A^2) x and the velocity stays A x
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    res = first_order_embedding(lambda t, x: x @ A.T, x0(), eps=1.0, n_steps=(64, 128, 256, 512))
    assert res.error[-1] < 1e-6 and res.velocity_error[-1] < 1e-6
    assert res.fitted_order == pytest.approx(2.0, abs=ORDER_TOL)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="`f` must be callable"):
        EmbeddedForce(3, 0.5)
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        EmbeddedForce(Field(), -1.0)
    with pytest.raises(ValueError, match="`eps` must be > 0"):
        first_order_embedding(Field(), x0(), eps=0.0)
    with pytest.raises(ValueError, match="`t1` must be > 0"):
        first_order_embedding(Field(), x0(), eps=0.5, t1=0.0)
    with pytest.raises(ValueError, match="at least two step counts"):
        first_order_embedding(Field(), x0(), eps=0.5, n_steps=(16,))
    with pytest.raises(ValueError, match="`n_steps` must be >= 1"):
        first_order_embedding(Field(), x0(), eps=0.5, n_steps=(16, 0))
    with pytest.raises(ValueError, match="`method` must be one of"):
        first_order_embedding(Field(), x0(), eps=0.5, method="rk4")
    with pytest.raises(ValueError, match="`rtol` must be > 0"):
        first_order_embedding(Field(), x0(), eps=0.5, rtol=0.0)
    with pytest.raises(TypeError, match="`x0` must be a torch.Tensor"):
        first_order_embedding(Field(), [1.0, 2.0], eps=0.5)
