"""The benchmark harness (``ode_momentum.benchmarking``, ``ode-momentum bench``): a tiny run end to end.

The benchmark's figures are not asserted (they are measurements, DESIGN.md section 5); what is tested is the
harness: every planned cell yields a record, the JSON has its schema, the report and figures are written, and
a package that cannot be installed is reported, with its reason, in every cell that needs it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

import ode_momentum as om
import ode_momentum.benchmarking.runner as runner
from ode_momentum.benchmarking import BenchConfig, BenchPlan, StackSpec, add_bench_parser, all_methods, run_bench
from ode_momentum.benchmarking import measure, packages
from ode_momentum.benchmarking.methods import reference_model
from ode_momentum.benchmarking.packages import PackageStatus
from ode_momentum.benchmarking.report import FIGURES, REPORT_FILE, RESULTS_FILE, markdown
from ode_momentum.benchmarking.runner import rewrite_report
from ode_momentum.benchmarking.stacks import build_functions, converted, make_input
from ode_momentum.gradients import native

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOP_KEYS = {"schema", "command", "quick", "date_utc", "seconds", "machine", "threads", "plan", "packages", "methods",
            "records", "work_precision", "targets"}
RECORD_KEYS = {"kind", "stack", "depth", "gamma", "method", "dtype", "device", "status", "value", "reason", "warnings",
               "seconds"}
TARGET_KEYS = {"id", "target", "stack", "method", "measured", "threshold", "comparison", "met", "detail"}
MACHINE_KEYS = {"platform", "cpu", "python", "torch", "torchdiffeq", "numpy", "ode_momentum", "device"}
METHODS = tuple(all_methods())
MOMENTUMNET_METHODS = ("momentumnet_backprop", "momentumnet_free")
NOT_INSTALLABLE = "not installable: simulated for the test"
# float32 against float64 through three conv-BN-ReLU layers: backprop measures ~1e-6; float reversal of three
# layers stays within ~1e-5 unless a ReLU kink flips (not at this seed)
CONV_GRAD_TOL = 1e-3

# one stack as small as it comes (the conv stack is checked without the report, below: every figure panel
# costs about a second); every kind of cell; a fresh-process peak RSS for one method only
TINY = BenchPlan(
    stacks=(StackSpec("mlp64", "mlp", 8, 4),),
    memory_depths=(2, 4),
    memory_gammas=(0.9,),
    rss_stacks=("mlp64",),
    rss_depths=(2,),
    rss_methods=("backprop",),
    time_depths=(4,),
    time_repeats=2,
    time_repeats_other=1,
    time_warmup=1,
    grad_depths=(2, 4),
    grad_gammas=(0.5,),
    target_depth=4,
    grad_gamma_depth=4,
    wp_step_counts=(4, 8),
    wp_rtols=(1e-3,),
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark run in which momentumnet cannot be installed; returns (results, out, docs)."""
    out = tmp_path_factory.mktemp("bench")
    docs = out / "docs" / "benchmarks.md"
    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "ensure_momentumnet",
               lambda site_dir, install: PackageStatus("momentumnet", False, reason=NOT_INSTALLABLE))
    try:
        results = run_bench(BenchConfig(out=out, plan=TINY, methods=METHODS, install=False, progress=False,
                                        docs=docs, command="test"))
    finally:
        mp.undo()
    return results, out, docs


def expected_cells(plan: BenchPlan, n_methods: int) -> dict[str, int]:
    n_stacks = len(plan.stacks)
    grad_cells = len(plan.grad_depths) + len(plan.grad_gammas)
    return {
        "saved_bytes": n_stacks * len(plan.memory_depths) * len(plan.memory_gammas) * n_methods,
        "time_ratio": n_stacks * len(plan.time_depths) * (n_methods - 1),  # backprop is the reference
        "grad_error": n_stacks * grad_cells * n_methods,
        "peak_memory": len(plan.rss_stacks) * len(plan.rss_depths) * len(plan.rss_methods),
    }


def test_json_has_the_schema_and_a_record_for_every_planned_cell(tiny_run):
    results, out, _ = tiny_run
    on_disk = json.loads((out / RESULTS_FILE).read_text())
    assert on_disk == results
    assert TOP_KEYS <= results.keys()
    assert results["schema"] == runner.SCHEMA
    assert MACHINE_KEYS <= results["machine"].keys()
    assert all(RECORD_KEYS <= r.keys() for r in results["records"])
    assert {r["status"] for r in results["records"]} <= set(runner.STATUSES)
    counts = {kind: sum(r["kind"] == kind for r in results["records"]) for kind in runner.KINDS}
    assert counts == expected_cells(TINY, len(METHODS))
    assert set(results["methods"]) == set(METHODS)
    assert all(TARGET_KEYS <= t.keys() for t in results["targets"])


def test_available_methods_are_measured(tiny_run):
    results, _, _ = tiny_run
    ours = [r for r in results["records"] if r["method"] not in MOMENTUMNET_METHODS]
    failed = [(r["kind"], r["method"], r["reason"]) for r in ours if r["status"] != "ok"]
    assert not failed
    saved = {r["method"]: r["value"] for r in ours if r["kind"] == "saved_bytes" and r["stack"] == "mlp64"
             and r["depth"] == 4 and r["gamma"] == 0.9}
    assert saved["reversible"] < saved["backprop"]  # a property, not a figure: memory-free saves less
    breakdowns = [r for r in ours if r["kind"] == "saved_bytes" and "saved" in r]
    assert breakdowns and not [r["method"] for r in breakdowns if "saved_mismatch" in r]
    grad = {r["method"]: r["value"] for r in ours if r["kind"] == "grad_error" and r["depth"] == 2}
    assert grad["backprop"] < 1e-4  # float32 against float64 on a depth-2 stack of width 8


def test_a_package_that_cannot_be_installed_is_reported_not_dropped(tiny_run):
    results, out, docs = tiny_run
    assert results["packages"]["momentumnet"]["available"] is False
    assert results["packages"]["momentumnet"]["reason"] == NOT_INSTALLABLE
    for name in MOMENTUMNET_METHODS:
        assert results["methods"][name]["available"] is False
        rows = [r for r in results["records"] if r["method"] == name]
        assert rows, f"{name} was dropped from the records"
        assert all(r["status"] == "unavailable" and NOT_INSTALLABLE in r["reason"] for r in rows)
    reference_targets = [t for t in results["targets"] if "momentumnet" in t["target"]]
    assert reference_targets and all(t["met"] is None and NOT_INSTALLABLE in t["detail"] for t in reference_targets)
    for report in (out / REPORT_FILE, docs):
        text = report.read_text()
        assert "**unavailable**" in text and NOT_INSTALLABLE in text


def test_report_and_figures_are_written(tiny_run):
    _, out, docs = tiny_run
    for name in FIGURES.values():
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    text = docs.read_text()
    assert text.startswith("# Benchmarks")
    assert "(../memory_vs_depth.png)" in text  # links relative to the docs file
    assert "`test`" in text  # the command is recorded


def test_report_only_rewrites_from_the_json(tiny_run, tmp_path):
    results, out, _ = tiny_run
    assert markdown(results, "") == (out / REPORT_FILE).read_text()  # the report is a function of the JSON
    with pytest.raises(FileNotFoundError, match="run the benchmark first"):
        rewrite_report(tmp_path)


def test_every_available_method_runs_the_conv_stack():
    """BatchNorm in training mode (batch statistics, running statistics updated) through every method."""
    stack = StackSpec("conv16", "conv", 2, 2, 4)
    functions = build_functions(stack, 3)
    x = make_input(stack)
    f64 = converted(functions, torch.float64)
    for name in METHODS:
        method = all_methods()[name]
        if method.package == "momentumnet":
            continue  # not a dependency; covered by the benchmark run itself when installed
        want = measure.gradients(reference_model(method.reference, f64, 0.9), f64, x.double())
        assert measure.saved_bytes(method.build(functions, 0.9, None), x.clone().requires_grad_(True)) > 0
        got = measure.gradients(method.build(functions, 0.9, None), functions, x)
        error = measure.gradient_error(got, want)["value"]
        # depth 3 keeps every method on its forward's gradient (the adjoint's gap to it is O(1): excluded)
        assert name == "torchdiffeq_adjoint" or error < CONV_GRAD_TOL, (name, error)


def test_pip_failure_is_reported_as_not_installable(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "_environment_version", lambda: None)

    def failing_pip(cmd, **kwargs):
        assert "--no-deps" in cmd and "--target" in cmd  # never into the environment, never its dependencies
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(packages.subprocess, "run", failing_pip)
    status = packages.ensure_momentumnet(tmp_path / "site", install=True)
    assert not status.available
    assert status.reason.startswith("not installable") and "No matching distribution" in status.reason


def test_no_install_reports_the_switch(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "_environment_version", lambda: None)
    status = packages.ensure_momentumnet(tmp_path / "empty", install=False)
    assert not status.available and "--no-install" in status.reason


def test_bench_parser_defaults_and_errors(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--out", str(tmp_path)])
    assert args.quick and args.out == Path(tmp_path) and args.device == "cpu" and args.threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--out", str(tmp_path), "--methods", "not_a_method"])


def test_ode_momentum_cli_dispatches_bench(tmp_path):
    from ode_momentum.benchmarking.cli import run_bench_command
    from ode_momentum.cli import _parser

    args = _parser().parse_args(["bench", "--quick", "--out", str(tmp_path), "--no-install"])
    assert args.run is run_bench_command and args.quick and args.no_install


def test_config_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="`methods` must be among"):
        BenchConfig(out=tmp_path, methods=("nope",))
    with pytest.raises(ValueError, match="`device` must be 'cpu' or 'cuda'"):
        BenchConfig(out=tmp_path, device="tpu")
    with pytest.raises(TypeError, match="`out` must be a folder path"):
        BenchConfig(out=3)


def test_exact_floor_loop_computes_the_exact_modes_gradients():
    """`benchmarks/exact_floor.py` times the exact mode's arithmetic without the engine; its claim to be a
    floor holds only while its loop computes the same gradients, bit for bit."""
    if not native.status()[0]:
        pytest.skip(f"native kernels unavailable: {native.status()[1]}")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "exact_floor.py"
    spec = importlib.util.spec_from_file_location("exact_floor", path)
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
                                 for _ in range(floor.DEPTH))
    x = torch.randn(4, 8)
    xx = x.clone().requires_grad_()
    om.MomentumResNet(blocks, gamma=floor.GAMMA, gradient="exact")(xx).square().sum().backward()
    gx, grads = floor.stripped_exact(blocks, x)
    assert torch.equal(gx, xx.grad)
    assert all(torch.equal(g, p.grad) for block, gs in zip(blocks, grads) for g, p in zip(gs, block.parameters()))
