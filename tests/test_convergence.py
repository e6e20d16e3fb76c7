"""The step-limit study (``ode_momentum.analysis.convergence``), its references, work-precision and outputs.

The orders of the registry's integrators on their own are tested in ``test_integrators.py``; here the
three limits of the paper are measured on the damped linear oscillator (closed form) and the forced damped
pendulum (dopri5 reference) at the quick sizes, and the pieces they are built from are checked.
"""

import argparse
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ode_momentum import INTEGRATORS
from ode_momentum.analysis import (
    Table,
    damped_oscillator,
    depth_trajectories,
    empirical_order,
    forced_pendulum,
    step_limit_study,
    work_precision,
)
from ode_momentum.analysis.convergence import (
    QUICK_DEPTHS,
    RESNET,
    expected_net_order,
    fixed_gamma_limit,
    run_integrator,
    run_momentum_resnet,
)
from ode_momentum.reference import reference_solution, solve_first_order_form

DTYPE = torch.float64  # numerical truth

# The bound on |fitted order - expected order|.
ORDER_TOL = 0.1
# Limit (b) at gamma = 0.9 is pre-asymptotic at the quick depths (N <= 512: eps_N = 0.04 .. 0.6, slope 1.23 on
# the pendulum, 1.06 on the oscillator); the full depths reach 1.05. Quick runs check the trend only.
PREASYMPTOTIC_TOL = 0.3
# The library's closed form against the independent one in conftest: the same formula, different code.
CLOSED_FORM_TOL = 1e-13
# torchdiffeq dopri5 at rtol 1e-10, atol 1e-12 over T = 2 (measured: ~3e-11 against DOP853 at 1e-13);
# the studies' REFERENCE_FLOOR (1e-8) relies on this.
DOPRI5_REFERENCE_TOL = 1e-10
# Fixed-grid rk4 with 400 steps of 0.005 on the oscillator: C h^4 with C ~ 1 is ~1e-9.
RK4_TOL = 1e-8
# LSODA at rtol 1e-12 (what reference_solution uses when eps is small): ~1e-11 against the closed form.
LSODA_TOL = 1e-10
# MomentumResNet (layer units) against the momentum integrator (physical units): the same arithmetic up to
# association, a few ulps per layer.
NET_VS_INTEGRATOR = 1e-12
# Limit (b): the net's error to the problem's momentum ODE tends to |x_0(T) - x_eps(T)| ~ 0.4-0.5, not to 0.
PLATEAU = 0.1


@pytest.fixture(scope="module", params=["oscillator", "pendulum"])
def study(request):
    problem = damped_oscillator() if request.param == "oscillator" else forced_pendulum()
    return step_limit_study(problem, quick=True)


# ---------------------------------------------------------------------------------------- empirical_order


def test_empirical_order_recovers_a_power_law_and_cuts_the_floor():
    steps = 2.0 ** -np.arange(1, 9)
    errors = 3.0 * steps**2.5
    errors[-2:] = 1e-14  # round-off plateau
    fit = empirical_order(steps, errors, floor=1e-12)
    assert fit.order == pytest.approx(2.5, abs=1e-12)
    assert fit.n_dropped == 2 and len(fit.steps) == 6
    assert float(fit) == fit.order
    np.testing.assert_allclose(fit.predict(steps[:6]), errors[:6], rtol=1e-12)


def test_empirical_order_n_finest_fits_the_asymptotic_regime():
    steps = 2.0 ** -np.arange(1, 11)
    errors = steps + 5 * steps**2  # order 1, with a large second-order term at coarse steps
    assert empirical_order(steps, errors).order > 1.1
    assert abs(empirical_order(steps[::-1], errors[::-1], n_finest=3).order - 1.0) < 0.02  # any input order


@pytest.mark.parametrize(
    ("steps", "errors", "match"),
    [
        ([0.1, 0.2], [0.1], "1-D of one length"),
        ([0.1, -0.2], [0.1, 0.2], "`steps` must be positive"),
        ([0.1, 0.2], [0.1, math.nan], "`errors` must be non-negative and finite"),
        ([0.1, 0.2, 0.4], [1e-13, 1e-12, 0.1], "fewer than two errors lie above the floor 1e-10"),
    ],
)
def test_empirical_order_bad_input(steps, errors, match):
    with pytest.raises(ValueError, match=match):
        empirical_order(steps, errors)


# ------------------------------------------------------------------------------------------------ Table


def test_table_rows_columns_and_csv_round_trip(tmp_path):
    table = Table([{"net": "leapfrog", "depth": 8, "error": 0.1}, {"net": "momentum", "depth": 8, "error": 0.3}])
    table.append({"net": "leapfrog", "depth": 16, "error": 0.025})
    assert len(table.where(net="leapfrog")) == 2
    assert table.unique("net") == ["leapfrog", "momentum"]
    np.testing.assert_array_equal(table.where(depth=8).column("error"), [0.1, 0.3])
    back = Table.read_csv(table.to_csv(tmp_path / "t.csv"))
    assert back.rows == table.rows  # floats written with repr: exact


def test_table_refuses_ragged_rows_and_unknown_columns():
    table = Table([{"a": 1}])
    with pytest.raises(ValueError, match=r"every row of a Table has the columns \['a'\]; got a row with \['b'\]"):
        table.append({"b": 2})
    with pytest.raises(KeyError, match="no column 'b'"):
        table.column("b")


# --------------------------------------------------------------------------------------- references


def test_library_closed_form_matches_conftest(closed_form):
    problem = damped_oscillator(a=1.5, w=3.0)
    t = np.array([0.0, 0.7, 2.0])
    for eps in (0.5, 0.0, 0.01):
        got_x, got_v = problem.closed_form(t, eps)
        want_x, want_v = closed_form(t[:, None, None], problem.x0.numpy(), problem.v0.numpy(), eps=eps,
                                     k=(2.0, 0.3), a=1.5, w=3.0)
        np.testing.assert_allclose(got_x, want_x, rtol=0, atol=CLOSED_FORM_TOL)
        if eps > 0:
            np.testing.assert_allclose(got_v, want_v, rtol=0, atol=CLOSED_FORM_TOL)


@pytest.mark.parametrize("eps", [0.5, 0.0])
@pytest.mark.parametrize(("method", "kwargs", "tol"), [
    ("dopri5", {}, DOPRI5_REFERENCE_TOL),
    ("rk4", {"n_steps": 200}, RK4_TOL),
    ("lsoda", {"rtol": 1e-12, "atol": 1e-14}, LSODA_TOL),
])
def test_first_order_form_solvers_against_the_closed_form(eps, method, kwargs, tol):
    problem = damped_oscillator(a=1.5, w=3.0)
    t = problem.times(3)
    xs, vs = solve_first_order_form(problem.field, (problem.x0, problem.v0), t, eps=eps, method=method, **kwargs)
    want_x, want_v = problem.solution(eps, t)
    assert xs.shape == vs.shape == (3, *problem.x0.shape)
    torch.testing.assert_close(xs, want_x, rtol=0, atol=tol)
    torch.testing.assert_close(vs, want_v, rtol=0, atol=10 * tol)  # v = x' carries a factor ~ k, 1/eps


def test_reference_solution_switches_to_lsoda_when_stiff():
    problem = damped_oscillator(a=1.5, w=3.0)
    xs, _ = reference_solution(problem.field, (problem.x0, problem.v0), problem.times(), eps=0.01)
    torch.testing.assert_close(xs[-1], problem.solution(0.01)[0][-1], rtol=0, atol=LSODA_TOL)


def test_dopri5_reference_on_the_pendulum_against_dop853():
    """The accuracy the REFERENCE_FLOOR of the studies assumes, against scipy's DOP853 at rtol 1e-13."""
    problem = forced_pendulum()
    x_ref, v_ref = problem.final()
    size, eps = problem.x0.numel(), problem.eps

    def rhs(t, y):
        x, v = y[:size], y[size:]
        return np.concatenate([v, (-2.0 * np.sin(x) + np.cos(3.0 * t) - v) / eps])

    y0 = np.concatenate([problem.x0.numpy().ravel(), problem.v0.numpy().ravel()])
    sol = solve_ivp(rhs, (0.0, problem.t1), y0, method="DOP853", rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(x_ref.numpy().ravel(), sol.y[:size, -1], rtol=0, atol=DOPRI5_REFERENCE_TOL)
    np.testing.assert_allclose(v_ref.numpy().ravel(), sol.y[size:, -1], rtol=0, atol=DOPRI5_REFERENCE_TOL)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "rk5"}, "`method` must be one of"),
    ({"method": "rk4"}, "method 'rk4' runs on a fixed grid: give `n_steps`"),
    ({"method": "dopri5", "n_steps": 10}, "method 'dopri5' is adaptive and takes no `n_steps`"),
    ({"rtol": 0.0}, "`rtol` and `atol` must be > 0"),
    ({"eps": -1.0}, "`eps` must be >= 0"),
])
def test_first_order_form_bad_input(kwargs, match):
    problem = damped_oscillator()
    kwargs = {"eps": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        solve_first_order_form(problem.field, (problem.x0, None), problem.times(), **kwargs)


def test_problem_builders_bad_input():
    with pytest.raises(ValueError, match=r"`t1` must be > 0 \(the horizon starts at 0\); got -1.0"):
        forced_pendulum(t1=-1.0)
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        damped_oscillator(eps=-0.5)
    with pytest.raises(ValueError, match="critical damping"):
        damped_oscillator(eps=0.125, k=(2.0,)).solution()  # 4 eps k = 1


# ------------------------------------------------------------------------------------------ limit (a)


def test_momentum_resnet_is_the_momentum_integrator_in_layer_units():
    """``v_n = h x'(t_n)``: the net with ``f_n = h F`` and ``v_0 = h v0`` is the ``momentum`` step."""
    problem = forced_pendulum()
    x_net, v_net = run_momentum_resnet(problem, 24)
    x_int, v_int, nfev = run_integrator(problem, "momentum", 24)
    torch.testing.assert_close(x_net, x_int, rtol=0, atol=NET_VS_INTEGRATOR)
    torch.testing.assert_close(v_net, v_int, rtol=0, atol=NET_VS_INTEGRATOR)
    assert nfev == 24


def test_momentum_resnet_rule_needs_depth_at_least_t_over_eps():
    with pytest.raises(ValueError, match=r"gamma = 1 - T/\(N eps\) is negative at depth N = 3 .* use depth >= "
                                         r"T/eps = 4"):
        run_momentum_resnet(forced_pendulum(eps=0.5), 3)
    with pytest.raises(ValueError, match=r"gamma = 1 - T/\(N eps\) needs a problem with eps > 0"):
        run_momentum_resnet(forced_pendulum(eps=0.0), 8)


def test_limit_a_orders(study):
    """The paper's rule converges at order 1 to x(T) and x'(T); integrator nets at their declared orders."""
    nets = study.discrete.unique("net")
    assert nets[0] == RESNET and {"leapfrog", "yoshida4", "momentum", "momentum_exp"} <= set(nets)
    for net in nets:
        for quantity in ("error_x", "error_v"):
            order = study.order("a", net, quantity)
            assert abs(order - expected_net_order(net)) <= ORDER_TOL, f"{net} {quantity}: fitted {order:.3f}"


# ------------------------------------------------------------------------------------------ limit (b)


def test_limit_b_fixed_gamma_tends_to_the_first_order_ode(study):
    table = study.fixed_gamma
    for gamma in table.unique("gamma"):
        rows = table.where(gamma=gamma)
        np.testing.assert_allclose(rows.column("eps_effective"), rows.column("h") / (1 - gamma), rtol=1e-15)
        assert np.all(np.diff(rows.column("error_first_order")) < 0)  # to x' = F: falls at every depth
        assert rows.column("error_momentum_ode")[-1] > PLATEAU  # to the momentum ODE: does not vanish
        tol = ORDER_TOL if gamma <= 0.5 else PREASYMPTOTIC_TOL
        order = study.order("b", gamma)
        assert abs(order - 1.0) <= tol, f"gamma = {gamma}: fitted {order:.3f}"


def test_limit_b_bad_gamma():
    with pytest.raises(ValueError, match=r"`gammas` must lie in \[0, 1\)"):
        fixed_gamma_limit(damped_oscillator(), QUICK_DEPTHS, gammas=(1.0,))


# ------------------------------------------------------------------------------------------ limit (c)


def test_limit_c_eps_rate(study):
    for quantity in ("error_x", "error_v"):
        order = study.order("c", quantity=quantity)
        assert abs(order - 1.0) <= ORDER_TOL, f"{quantity}: fitted {order:.3f}"
    assert np.all(np.diff(study.eps.column("error_x")) < 0)  # eps decreases along the table


# -------------------------------------------------------------------------------------------- trajectories


def test_depth_trajectories_end_at_the_net_output_and_the_solution():
    problem = forced_pendulum()
    table = depth_trajectories(problem, (4, 16), n_reference=11)
    for depth in (4, 16):
        net = table.where(source="net", depth=depth)
        assert len(net) == (depth + 1) * problem.x0.numel()
        last = net.column("x")[-problem.x0.numel():].reshape(problem.x0.shape)
        np.testing.assert_allclose(last, run_momentum_resnet(problem, depth)[0].numpy(), rtol=0,
                                   atol=NET_VS_INTEGRATOR)
    ode = table.where(source="ode")
    np.testing.assert_allclose(ode.column("x")[-problem.x0.numel():], problem.final()[0].numpy().ravel(),
                               rtol=0, atol=DOPRI5_REFERENCE_TOL)


# ---------------------------------------------------------------------------------------- work-precision


def test_work_precision_covers_every_integrator_and_counts_evaluations():
    problem = damped_oscillator()
    steps = (8, 32)
    tables = [work_precision(problem, eps=eps, step_counts=steps, rtols=(1e-4, 1e-8)) for eps in (0.5, 0.0)]
    seen = set(tables[0].where(family="ode_momentum").unique("method"))
    seen |= set(tables[1].where(family="ode_momentum").unique("method"))
    assert seen == set(INTEGRATORS)  # each at eps = 0.5, or at eps = 0 if it solves x' = F only
    for table in tables:
        for method in table.where(family="ode_momentum").unique("method"):
            rows = table.where(method=method)
            extra = rows.column("nfev") - INTEGRATORS[method].n_evals * rows.column("n_steps")
            assert set(extra.tolist()) <= {0, 1}  # one evaluation to prime first-same-as-last reuse
            errors = rows.column("error_x")
            assert errors[-1] < errors[0]
        rk4 = table.where(method="rk4")
        np.testing.assert_array_equal(rk4.column("nfev"), 4 * rk4.column("n_steps"))
        dopri5 = table.where(method="dopri5")
        assert dopri5.column("error_x")[-1] < dopri5.column("error_x")[0]


def test_work_precision_unknown_method():
    with pytest.raises(ValueError, match=r"`methods` must be keys of ode_momentum.INTEGRATORS .*; got 'rk4'"):
        work_precision(damped_oscillator(), methods=["rk4"])
    with pytest.raises(ValueError, match=r"`baselines` must be torchdiffeq methods .*; got 'leapfrog'"):
        work_precision(damped_oscillator(), baselines=["leapfrog"])


def test_work_precision_alf_starts_from_the_consistent_velocity():
    """At eps = 0 the runs start from v0 = F(t0, x0): alf's velocity then converges (test_yoshida_alf)."""
    problem = forced_pendulum()
    table = work_precision(problem, eps=0.0, methods=["alf"], step_counts=(64, 256), baselines=())
    errors = table.column("error_v")
    assert errors[1] < errors[0] / 10  # order 2: a factor 16


# ---------------------------------------------------------------------------------------- theory, CLI


def test_theory_claim_verifies_quickly():
    from ode_momentum.theory import CLAIMS, continuous_limit

    assert "continuous_limit" in CLAIMS
    report = continuous_limit.verify(quick=True)
    assert report.passed, [c for c in report.checks if not c.passed]


@pytest.mark.slow
def test_study_command_writes_figures_and_data(tmp_path, capsys):
    from ode_momentum.cli import main

    assert main(["study", "step-limit", "--quick", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "leapfrog" in out and "wrote 11 files" in out
    for name in ("limit_a_discrete", "limit_b_fixed_gamma", "limit_c_eps", "trajectories", "work_precision"):
        png = tmp_path / "out" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    orders = Table.read_csv(tmp_path / "out" / "orders.csv")
    assert {"problem", "limit", "group", "quantity", "order", "expected"} <= set(orders.columns)
    work = Table.read_csv(tmp_path / "out" / "work_precision.csv")
    assert set(work.unique("problem")) == {"damped oscillator", "forced pendulum"}


def test_study_command_needs_out(capsys):
    from ode_momentum.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "step-limit", "--quick"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ode-momentum study step-limit") and "--out" in err


def test_study_parser_plugs_into_any_argparse_command_line():
    """``add_study_parser`` is the whole interface to ``cli.py``: ``run`` and ``parser`` defaults."""
    from ode_momentum.studies import add_study_parser, run_step_limit_command

    parser = argparse.ArgumentParser(prog="tool")
    add_study_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["study", "step-limit", "--out", "somewhere"])
    assert args.run is run_step_limit_command and args.quick is False and str(args.out) == "somewhere"
