"""Every user-facing error: the exception type, and a message that names the argument and says what to do."""

import math

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum import INTEGRATORS, GRADIENTS, odeint

DTYPE = torch.float64
T = torch.tensor([0.0, 1.0], dtype=DTYPE)


def state(shape=(3, 2)):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=DTYPE), torch.randn(shape, generator=gen, dtype=DTYPE)


def field(t, x):
    return -x


def solve(**overrides):
    """``odeint`` with valid defaults, one argument overridden."""
    kwargs = dict(func=field, y0=state(), t=T, eps=0.5, method="leapfrog", n_steps=4)
    kwargs.update(overrides)
    func, y0, t = kwargs.pop("func"), kwargs.pop("y0"), kwargs.pop("t")
    return odeint(func, y0, t, **kwargs)


class Field(nn.Module):
    def __init__(self, d=2):
        super().__init__()
        self.lin = nn.Linear(d, d).to(DTYPE)

    def forward(self, t, x):
        return torch.tanh(self.lin(x))


def blocks(depth=3, d=2):
    return [nn.Linear(d, d).to(DTYPE) for _ in range(depth)]


# ---------------------------------------------------------------------------------------------- gamma


@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_momentum_resnet_gamma_outside_unit_interval(gamma):
    with pytest.raises(ValueError, match=r"`gamma` must lie in \[0, 1\]; got " + str(gamma)):
        om.MomentumResNet(blocks(), gamma)


@pytest.mark.parametrize("gamma", [math.nan, math.inf])
def test_momentum_resnet_gamma_not_finite(gamma):
    with pytest.raises(ValueError, match="`gamma` must be finite"):
        om.MomentumResNet(blocks(), gamma)


def test_momentum_resnet_gamma_not_a_number():
    with pytest.raises(TypeError, match="`gamma` must be a real number; got '0.9' \\(str\\)"):
        om.MomentumResNet(blocks(), "0.9")


@pytest.mark.parametrize("name", sorted(INTEGRATORS))
def test_from_gamma_outside_unit_interval(name):
    with pytest.raises(ValueError, match=r"`gamma` must lie in \[0, 1\]"):
        INTEGRATORS[name].from_gamma(1.5)


def test_euler_from_nonzero_gamma():
    with pytest.raises(ValueError, match="method 'euler' is the gamma = 0 limit; got gamma = 0.5"):
        om.Euler.from_gamma(0.5)


def test_momentum_resnet_gamma_zero_cannot_be_reversed():
    with pytest.raises(ValueError, match='cannot be reversed.*Use gradient="backprop" for gamma = 0'):
        om.MomentumResNet(blocks(), 0.0, gradient="reversible")


def test_momentum_resnet_inverse_at_gamma_zero():
    net = om.MomentumResNet(blocks(), 0.0, gradient="backprop")
    x, v = state()
    with pytest.raises(ValueError, match="`gamma` = 0 cannot be reversed"):
        net.inverse(x, v)


# ------------------------------------------------------------------------------------------------ eps


def test_odeint_negative_eps():
    with pytest.raises(ValueError, match=r"`eps` must be >= 0; got -0.5"):
        solve(eps=-0.5)


def test_momentum_ode_negative_eps():
    with pytest.raises(ValueError, match=r"`eps` must be >= 0; got -1.0"):
        om.MomentumODE(Field(), -1.0, n_steps=4)


@pytest.mark.parametrize("name", sorted(INTEGRATORS))
def test_integrator_negative_eps(name):
    with pytest.raises(ValueError, match=r"`eps` must be >= 0"):
        INTEGRATORS[name](-0.1)


def test_odeint_eps_not_finite():
    with pytest.raises(ValueError, match="`eps` must be finite; got nan"):
        solve(eps=math.nan)


def test_odeint_momentum_step_longer_than_eps():
    with pytest.raises(ValueError, match="needs a step h <= eps.*got h = 0.25, eps = 0.1.*momentum_exp"):
        solve(method="momentum", eps=0.1, n_steps=4)


def test_momentum_ode_momentum_step_longer_than_eps():
    with pytest.raises(ValueError, match="needs a step h <= eps.*got h = 0.5, eps = 0.2.*momentum_exp"):
        om.MomentumODE(Field(), 0.2, n_steps=2, method="momentum", gradient="backprop")


def test_odeint_euler_with_positive_eps():
    with pytest.raises(ValueError, match="method 'euler' .* needs eps = 0; got eps = 0.5.*'leapfrog'"):
        solve(method="euler", eps=0.5)


def test_momentum_ode_euler_with_positive_eps():
    with pytest.raises(ValueError, match="method 'euler' .* needs eps = 0; got eps = 0.5"):
        om.MomentumODE(Field(), 0.5, n_steps=4, method="euler", gradient="backprop")


# ----------------------------------------------------------------------------------------- x0 and v0


def test_v0_shape_differs_from_x0():
    x0, _ = state()
    with pytest.raises(ValueError, match=r"`v0` must have the shape of `x0`, \(3, 2\); got \(3, 1\)"):
        solve(y0=(x0, torch.zeros(3, 1, dtype=DTYPE)))


def test_v0_dtype_differs_from_x0():
    x0, v0 = state()
    with pytest.raises(TypeError, match="`v0` must have the dtype and device of `x0`"):
        solve(y0=(x0, v0.float()))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("which", ["x0", "v0"])
def test_non_finite_initial_state(which, bad):
    x0, v0 = state()
    y0 = {"x0": (x0.clone().index_fill_(0, torch.tensor([1]), bad), v0),
          "v0": (x0, v0.clone().index_fill_(0, torch.tensor([1]), bad))}[which]
    with pytest.raises(ValueError, match=f"`{which}` has 2 non-finite entries"):
        solve(y0=y0)


def test_integer_x0():
    with pytest.raises(TypeError, match="`x0` must be a floating-point tensor; got dtype torch.int64"):
        solve(y0=(torch.ones(3, 2, dtype=torch.int64), None))


@pytest.mark.parametrize("y0", [state()[0], (state()[0],), (*state(), None)], ids=["tensor", "single", "triple"])
def test_y0_not_a_pair(y0):
    with pytest.raises(TypeError, match=r"`y0` must be a pair \(x0, v0\) of tensors"):
        solve(y0=y0)


def test_x0_not_a_tensor():
    with pytest.raises(TypeError, match="`x0` must be a torch.Tensor; got"):
        solve(y0=([1.0, 2.0], None))


# ------------------------------------------------------------------------------------- method, gradient


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="`method` must be one of .*; got 'rk4'") as info:
        solve(method="rk4")
    for name in INTEGRATORS:
        assert repr(name) in str(info.value)


def test_momentum_ode_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="`method` must be one of .*; got 'rk4'") as info:
        om.MomentumODE(Field(), 0.5, n_steps=4, method="rk4")
    for name in INTEGRATORS:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: solve(gradient="adjoint-ish"),
        lambda: om.MomentumODE(Field(), 0.5, n_steps=4, gradient="adjoint-ish"),
        lambda: om.MomentumResNet(blocks(), 0.9, gradient="adjoint-ish"),
    ],
    ids=["odeint", "MomentumODE", "MomentumResNet"],
)
def test_unknown_gradient_lists_valid_ones(make):
    with pytest.raises(ValueError, match="`gradient` must be one of .*; got 'adjoint-ish'") as info:
        make()
    for mode in GRADIENTS:
        assert repr(mode) in str(info.value)


def test_unknown_gradient_option():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['drift_tolerance'\] for gradient='reversible'; valid options: \['drift_tol', 'on_drift', 'replay_rng'\]"):
        solve(gradient="reversible", gradient_options={"drift_tolerance": 1e-3})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_drift": "explode"}, r"`on_drift` must be one of \['warn', 'raise', 'ignore'\]; got 'explode'"),
        ({"drift_tol": 0.0}, "`drift_tol` must be > 0; got 0.0"),
    ],
)
def test_bad_reversible_gradient_options(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        solve(gradient="reversible", gradient_options=options)


def test_known_gradient_option_with_bad_type_is_not_called_unknown():
    with pytest.raises(TypeError, match="`drift_tol` must be a real number; got 'small'") as info:
        solve(gradient="reversible", gradient_options={"drift_tol": "small"})
    assert "unknown option" not in str(info.value)


def test_params_not_tensors():
    with pytest.raises(TypeError, match="`params` must be a torch.Tensor; got 1.0 \\(float\\)"):
        solve(params=[1.0])


def test_odeint_reversible_gradient_at_eps_zero():
    with pytest.raises(ValueError, match='damping factor is 0.*use gradient="backprop"'):
        solve(eps=0.0, method="momentum_exp", gradient="reversible")


def test_odeint_reversible_gradient_with_irreversible_method():
    with pytest.raises(ValueError, match="needs a reversible integrator; 'euler' is not"):
        solve(eps=0.0, method="euler", gradient="reversible")


@pytest.mark.parametrize("method", ["leapfrog", "momentum_exp", "euler"])
def test_momentum_ode_reversible_gradient_at_eps_zero(method):
    with pytest.raises(ValueError, match='gradient="reversible".*gradient="backprop"'):
        om.MomentumODE(Field(), 0.0, n_steps=4, method=method, gradient="reversible")


# ----------------------------------------------------------------------------------------------- time


def test_t_not_one_dimensional():
    with pytest.raises(ValueError, match=r"`t` must be 1-D; got shape \(2, 1\)"):
        solve(t=T[:, None])


def test_t_not_a_tensor():
    with pytest.raises(TypeError, match="`t` must be a 1-D torch.Tensor of output times; got \\[0.0, 1.0\\]"):
        solve(t=[0.0, 1.0])


def test_t_single_time():
    with pytest.raises(ValueError, match="`t` needs at least two times"):
        solve(t=T[:1])


@pytest.mark.parametrize("t", [[0.0, 1.0, 1.0], [1.0, 0.0]], ids=["repeated", "decreasing"])
def test_t_not_strictly_increasing(t):
    with pytest.raises(ValueError, match="`t` must be strictly increasing"):
        solve(t=torch.tensor(t, dtype=DTYPE))


def test_t_not_floating():
    with pytest.raises(TypeError, match="`t` must be a floating-point tensor"):
        solve(t=torch.tensor([0, 1]))


def test_missing_step_size():
    with pytest.raises(ValueError, match="give exactly one of `step_size`.*`n_steps`.*step_size=None, n_steps=None"):
        solve(n_steps=None)


def test_both_step_size_and_n_steps():
    with pytest.raises(ValueError, match="give exactly one of `step_size`.*step_size=0.1, n_steps=4"):
        solve(step_size=0.1, n_steps=4)


@pytest.mark.parametrize("step_size", [0.0, -0.1])
def test_step_size_not_positive(step_size):
    with pytest.raises(ValueError, match="`step_size` must be > 0"):
        solve(step_size=step_size, n_steps=None)


def test_n_steps_not_positive():
    with pytest.raises(ValueError, match="`n_steps` must be >= 1; got 0"):
        solve(n_steps=0)


def test_n_steps_not_an_int():
    with pytest.raises(TypeError, match="`n_steps` must be a positive int; got 2.5"):
        solve(n_steps=2.5)


@pytest.mark.parametrize("t1", [0.0, -1.0])
def test_momentum_ode_horizon_not_positive(t1):
    with pytest.raises(ValueError, match="`t1` must be > 0"):
        om.MomentumODE(Field(), 0.5, t1=t1, n_steps=4)


# ------------------------------------------------------------------------------------------ functions


def test_func_not_callable():
    with pytest.raises(TypeError, match=r"`func` must be callable as func\(t, x\); got int"):
        solve(func=3)


def test_momentum_ode_func_not_a_module():
    with pytest.raises(TypeError, match="`func` must be an nn.Module"):
        om.MomentumODE(field, 0.5, n_steps=4)


@pytest.mark.parametrize("gradient", sorted(GRADIENTS))
def test_func_returns_wrong_shape(gradient):
    x0, v0 = state()
    with pytest.raises(ValueError, match=r"must return a tensor of the state's shape \(3, 2\); got \(3,\)"):
        solve(func=lambda t, x: x.sum(-1), y0=(x0.requires_grad_(), v0), gradient=gradient)


def test_func_returns_non_tensor():
    with pytest.raises(ValueError, match="must return a tensor of the state's shape.*got float"):
        solve(func=lambda t, x: 1.0)


def test_momentum_resnet_function_returns_wrong_shape():
    net = om.MomentumResNet([nn.Linear(2, 3).to(DTYPE)], 0.9, gradient="backprop")
    with pytest.raises(ValueError, match=r"residual function of step 0 must return .* \(3, 2\); got \(3, 3\)"):
        net(state()[0])


def test_momentum_resnet_init_function_wrong_shape():
    net = om.MomentumResNet(blocks(), 0.9, init_function=nn.Linear(2, 3).to(DTYPE), gradient="backprop")
    with pytest.raises(ValueError, match=r"`init_function` must return the shape of x, \(3, 2\); got \(3, 3\)"):
        net(state()[0])


@pytest.mark.parametrize("functions", [[], nn.ModuleList()], ids=["list", "ModuleList"])
def test_momentum_resnet_empty_functions(functions):
    with pytest.raises(ValueError, match="`functions` is empty"):
        om.MomentumResNet(functions, 0.9)


def test_resnet_stack_empty_functions():
    with pytest.raises(ValueError, match="`functions` is empty"):
        om.ResNetStack([])


def test_momentum_resnet_single_module():
    with pytest.raises(TypeError, match="got a single Linear. Wrap it"):
        om.MomentumResNet(nn.Linear(2, 2), 0.9)


def test_momentum_resnet_function_not_a_module():
    with pytest.raises(TypeError, match=r"`functions\[1\]` must be an nn.Module; got function"):
        om.MomentumResNet([nn.Linear(2, 2), field], 0.9)


def test_momentum_resnet_init_function_not_a_module():
    with pytest.raises(TypeError, match="`init_function` must be an nn.Module or None; got function"):
        om.MomentumResNet(blocks(), 0.9, init_function=field)


def test_func_returns_wrong_dtype():
    x0 = torch.ones(3, 2, dtype=torch.float32)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        odeint(lambda t, x: -x.double(), (x0, None), T.float(), eps=0.5, n_steps=4)


def test_momentum_resnet_v_shape_differs_from_x():
    net = om.MomentumResNet(blocks(), 0.9, gradient="backprop")
    x, _ = state()
    with pytest.raises(ValueError, match=r"`v` must have the shape of `x`"):
        net.forward_state(x, torch.zeros(1, 2, dtype=DTYPE))


@pytest.mark.parametrize("gradient", ["reversible", "exact", "checkpoint", "auto"])
def test_double_backward_is_refused_not_silently_wrong(gradient):
    """create_graph=True (a gradient penalty) cannot be honoured by a recomputing backward: an error, not a
    gradient without a graph whose second-order term would silently vanish."""
    net = om.MomentumResNet([nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3)], 0.9, gradient=gradient)
    loss = net(torch.randn(2, 4)).square().sum()
    with pytest.raises(RuntimeError, match="cannot be differentiated twice.*gradient=\"backprop\""):
        torch.autograd.grad(loss, list(net.parameters()), create_graph=True)


def test_gradient_options_must_be_a_mapping():
    with pytest.raises(TypeError, match="`gradient_options` must be a dict of options of gradient='exact'.*got 'fast'"):
        om.MomentumResNet([nn.Linear(2, 2)], 0.9, gradient="exact", gradient_options="fast")
