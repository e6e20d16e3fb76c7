"""``ode-momentum verify --quick`` passes every claim, in-process; the runner reports missing, failing and
crashing claim modules instead of crashing."""

import contextlib
import importlib
import io
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from ode_momentum import cli
from ode_momentum.analysis import ClaimReport
from ode_momentum.theory import CLAIMS
from ode_momentum.verify import ERROR, FAIL, MISSING, PASS, format_report, run_claims, verify_main

ROOT = Path(__file__).resolve().parent.parent
PAPER_ORDER = [
    "invertibility",
    "finite_precision",
    "continuous_limit",
    "linear_representability",
    "first_order_embedding",
    "crossing",
    "fixed_points",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``ode-momentum verify --quick --json FILE`` through the command line's ``main``, once."""
    path = tmp_path_factory.mktemp("verify") / "quick.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["verify", "--quick", "--json", str(path)])
    return rc, out.getvalue(), json.loads(path.read_text())


@pytest.mark.slow
def test_verify_quick_exits_zero(quick_run):
    rc, table, data = quick_run
    assert rc == 0, table
    assert data["quick"] is True and data["passed"] is True
    assert [c["module"] for c in data["claims"]] == PAPER_ORDER
    assert "all claims pass" in table


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_ORDER)
def test_claim_passes_in_quick_mode(quick_run, name):
    _, table, data = quick_run
    (claim,) = [c for c in data["claims"] if c["module"] == name]
    failed = [c for c in claim["checks"] if not c["passed"]]
    assert claim["status"] == PASS, f"{name}: {claim['error'] or failed}"
    assert claim["checks"]
    assert re.search(rf"^{name}\s", table, flags=re.MULTILINE)


def test_claims_are_in_the_papers_order():
    assert CLAIMS == PAPER_ORDER


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_claim_module_states_its_claim(name):
    module = importlib.import_module(f"ode_momentum.theory.{name}")
    assert module.__doc__ and len(module.__doc__) > 200
    assert isinstance(module.CLAIM, str) and module.CLAIM[0].isdigit()
    assert callable(module.verify)


def test_readme_lists_every_claim_with_an_existing_test():
    readme = (ROOT / "theory" / "README.md").read_text()
    for name in PAPER_ORDER:
        row = [line for line in readme.splitlines() if f"`{name}`" in line]
        assert row, f"theory/README.md has no row for {name}"
        tests = re.findall(r"`(tests/test_\w+\.py)`", row[0])
        assert tests and all((ROOT / t).exists() for t in tests), row[0]


# ------------------------------------------------------------------------------------ runner behaviour


@pytest.fixture
def fake_claims(monkeypatch):
    """Three throwaway claim modules: one passing, one failing, one raising."""

    def module(name, verify):
        mod = types.ModuleType(f"ode_momentum.theory.{name}")
        mod.CLAIM = f"0. {name}"
        mod.verify = verify
        monkeypatch.setitem(sys.modules, mod.__name__, mod)

    def passing(quick=True):
        report = ClaimReport("0. passing")
        report.add("one", 1.0, "1", True)
        return report

    def failing(quick=True):
        report = ClaimReport("0. failing")
        report.add("two", 2.0, "< 1", False)
        return report

    def raising(quick=True):
        raise RuntimeError("boom")

    module("_test_passing", passing)
    module("_test_failing", failing)
    module("_test_raising", raising)


def test_missing_module_is_reported_not_raised():
    (outcome,) = run_claims(claims=["_no_such_claim"], progress=False)
    assert outcome.status == MISSING and not outcome.passed
    assert "not found" in outcome.error
    table = format_report([outcome])
    assert "MISSING" in table and "_no_such_claim" in table


def test_json_is_strict_and_names_the_failure(tmp_path):
    path = tmp_path / "out.json"
    assert verify_main(claims=["_no_such_claim"], json_path=path, progress=False, stream=io.StringIO()) == 1
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["passed"] is False
    (claim,) = data["claims"]
    assert claim["status"] == MISSING and claim["checks"][0]["measured"] is None


def test_fail_and_error_give_a_nonzero_exit(fake_claims):
    out = io.StringIO()
    rc = verify_main(claims=["_test_passing"], progress=False, stream=out)
    assert rc == 0
    outcomes = run_claims(claims=["_test_passing", "_test_failing", "_test_raising"], progress=False)
    assert [o.status for o in outcomes] == [PASS, FAIL, ERROR]
    assert "RuntimeError: boom" in outcomes[2].error
    out = io.StringIO()
    rc = verify_main(claims=["_test_passing", "_test_failing", "_test_raising"], progress=False, stream=out)
    assert rc == 1
    table = out.getvalue()
    assert re.search(r"two\s+2\s+< 1\s+FAIL", table)
    assert "ERROR" in table and "not passing: _test_failing (FAIL), _test_raising (ERROR)" in table


def test_threads_and_rng_are_restored(fake_claims):
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    run_claims(claims=["_test_passing"], progress=False, threads=1)
    assert torch.get_num_threads() == threads
    assert torch.equal(state, torch.random.get_rng_state())


def test_command_line_rejects_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["verify", "--claims", "not_a_claim"])
    assert exit_info.value.code == 2
    assert "--claims: unknown claim module(s) ['not_a_claim']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["verify", "--threads", "-1"])
    with pytest.raises(ValueError, match="`claims` must hold module names"):
        run_claims(claims=["bad name"])
    with pytest.raises(ValueError, match="`threads` must be >= 1"):
        run_claims(claims=[], threads=0)
