"""``ode-momentum reproduce`` (``ode_momentum.reproduce``): the one-command HTML report.

Most tests share one run at the test-only ``"tiny"`` size (every section, about 20-30 s on 2 cores); one slow
test runs the real ``--quick`` command, as the README tells users to.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import platform
import re
import sys
import time
import types

import numpy as np
import pytest
import torch

import ode_momentum
import ode_momentum.theory
from ode_momentum import reproduce
from ode_momentum.analysis import ClaimReport, Table
from ode_momentum.cli import main
from ode_momentum.reproduce import SECTIONS, ReproduceConfig, run_reproduce

# the PNGs each section must embed (file names in its folder)
FIGURES = {
    "claims": (),
    "step-limit": ("limit_a_discrete.png", "limit_b_fixed_gamma.png", "limit_c_eps.png", "trajectories.png",
                   "work_precision.png"),
    "memory": ("memory.png",),
    "crossing": ("cubic.png", "rings.png"),
    "fit": ("momentum/curves.png", "resnet/curves.png"),
    "robustness": ("robustness.png",),
}
EMBEDDED = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK_LIMIT_S = 600  # the issue: `reproduce --quick` finishes in under 10 minutes on 2 CPU cores


def assert_complete_report(out, result) -> str:
    """Every section ran, each section's figures are embedded byte for byte, every claim passes."""
    page = (out / "index.html").read_text(encoding="utf-8")
    assert [s.name for s in result.sections] == list(SECTIONS)
    assert all(s.status == "ok" for s in result.sections), [s.error for s in result.sections]
    embedded = [base64.b64decode(data) for data in EMBEDDED.findall(page)]
    assert all(png.startswith(PNG_SIGNATURE) for png in embedded)
    for section, names in FIGURES.items():
        for name in names:
            assert (out / section / name).read_bytes() in embedded, f"{section}/{name} is not embedded"
    assert len(embedded) == sum(len(names) for names in FIGURES.values())
    # self-contained: nothing is fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:|//)', page)
    assert "<script" not in page and "<link" not in page
    # the claims table: one header row per claim of the paper, every check PASS, none FAIL
    n_checks = sum(len(c.report.checks) for c in result.claims)
    assert [c.module for c in result.claims] == list(ode_momentum.theory.CLAIMS)
    assert n_checks > len(result.claims)
    for claim in result.claims:
        assert f"<code>{claim.module}</code>" in page
    assert page.count('<td class="PASS">PASS</td>') == n_checks + len(result.claims)
    assert not re.search(r'class="(FAIL|ERROR|MISSING)"', page)
    assert result.passed
    summary = json.loads((out / "report.json").read_text())
    assert summary["passed"] is True and summary["failed_claims"] == []
    return page


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One run of every section at the "tiny" size; returns (out, result, stderr text)."""
    out = tmp_path_factory.mktemp("report") / "report"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        result = run_reproduce(ReproduceConfig(out, size="tiny", progress=False))
    return out, result, stderr.getvalue()


def test_tiny_report_embeds_every_figure_and_an_all_pass_claims_table(tiny):
    out, result, _ = tiny
    page = assert_complete_report(out, result)
    for section in result.sections:
        assert f'<h2 id="{section.name}">' in page


def test_report_shows_versions_command_and_timings(tiny):
    out, result, _ = tiny
    page = (out / "index.html").read_text(encoding="utf-8")
    for value in (platform.python_version(), torch.__version__, np.__version__, ode_momentum.__version__,
                  platform.platform()):
        assert f"<td>{value}</td>" in page
    assert re.search(r"<th>cpu count</th><td>\d+</td>", page)
    assert "ode-momentum reproduce" in page and f"--out {out}" in page
    # one timing row per section, the sum below the total
    for section in result.sections:
        assert f'<td><a href="#{section.name}">{section.name}</a></td><td class="num">{section.seconds:.1f}</td>' \
            in page
        assert section.seconds > 0
    assert sum(s.seconds for s in result.sections) <= result.seconds
    summary = json.loads((out / "report.json").read_text())
    assert summary["environment"]["torch"] == torch.__version__
    assert [s["name"] for s in summary["sections"]] == list(SECTIONS)


def test_sections_write_their_raw_outputs(tiny):
    out, result, _ = tiny
    claims = json.loads((out / "claims" / "claims.json").read_text())
    assert claims["passed"] and len(claims["claims"]) == len(ode_momentum.theory.CLAIMS)
    assert "all claims pass" in (out / "claims" / "claims.txt").read_text()
    assert len(Table.read_csv(out / "step-limit" / "orders.csv")) > 0
    # saved bytes: backprop proportional to depth, reversible independent of it (the tiny depths are 2 and 8)
    memory = Table.read_csv(out / "memory" / "memory.csv")
    bytes_at = {(r["depth"], r["gradient"]): r["saved_bytes"] for r in memory}
    assert bytes_at[8, "backprop"] == 4 * bytes_at[2, "backprop"]
    assert bytes_at[8, "reversible"] == bytes_at[2, "reversible"] == 3 * 256 * 64 * 4  # x_0, x_N, v_N
    crossing = json.loads((out / "crossing" / "crossing.json").read_text())
    assert set(crossing["rings"]["test_accuracy"]) == {"momentum", "flow"}
    for model in ("momentum", "resnet"):
        metrics = json.loads((out / "fit" / model / "metrics.json").read_text())
        assert metrics["model"] == model and metrics["epochs"] == 2
    rows = Table.read_csv(out / "robustness" / "robustness.csv")
    assert set(rows.column("gamma_train")) == {0.0, 0.9}


def test_progress_is_one_start_and_one_timed_line_per_section(tiny):
    _, result, stderr = tiny
    for i, section in enumerate(result.sections, 1):
        assert f"[{i}/{len(SECTIONS)}] {section.name}: {section.title} ..." in stderr
        assert re.search(rf"\[{i}/{len(SECTIONS)}\] {section.name}: done in \d+\.\d s", stderr)
    assert "wrote" in stderr.splitlines()[-1]


def _fake_claim(monkeypatch, name: str, passed: bool) -> None:
    module = types.ModuleType(f"ode_momentum.theory.{name}")

    def verify(quick: bool = True) -> ClaimReport:
        report = ClaimReport(f"Fake claim {name}")
        report.add("a quantity that must be small", 0.5 if not passed else 1e-9, "< 1e-6", passed)
        return report

    module.verify = verify
    monkeypatch.setitem(sys.modules, module.__name__, module)


def test_a_failing_claim_exits_1_prints_it_and_shows_a_fail_row(tmp_path, monkeypatch, capsys):
    _fake_claim(monkeypatch, "fake_pass", True)
    _fake_claim(monkeypatch, "fake_fail", False)
    monkeypatch.setattr(ode_momentum.theory, "CLAIMS", ["fake_pass", "fake_fail"])
    out = tmp_path / "report"
    code = main(["reproduce", "--quick", "--sections", "claims", "--out", str(out)])
    assert code == 1
    stdout = capsys.readouterr().out
    assert "FAIL fake_fail (FAIL): a quantity that must be small: measured 0.5, expected < 1e-6" in stdout
    assert "fake_pass" not in stdout.split("claims:", 1)[1]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<td>a quantity that must be small</td><td class=\"num\">0.5</td><td>&lt; 1e-6</td>"
                     r"<td class=\"FAIL\">FAIL</td>", page)
    assert page.count('<td class="PASS">PASS</td>') == 2  # fake_pass: its header row and its check
    assert 'class="banner fail"' in page and "<title>ode-momentum reproduce: FAIL</title>" in page
    summary = json.loads((out / "report.json").read_text())
    assert summary["passed"] is False and summary["failed_claims"] == ["fake_fail"]


def test_a_section_that_raises_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "MEMORY_STACK", "no-such-stack")
    result = run_reproduce(ReproduceConfig(tmp_path, size="tiny", sections=("fit", "memory"), progress=False))
    assert not result.passed
    assert [(s.name, s.status) for s in result.sections] == [("memory", "error"), ("fit", "ok")]
    assert "KeyError: 'no-such-stack'" in result.sections[0].error
    assert "[1/2] memory: ERROR after" in capsys.readouterr().err
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "This section raised an error" in page and "no-such-stack" in page
    assert (tmp_path / "fit" / "resnet" / "curves.png").read_bytes() in [
        base64.b64decode(d) for d in EMBEDDED.findall(page)]
    assert "ERROR in section memory: KeyError" in reproduce.format_outcome(result)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "--quick"], "the following arguments are required: --out"),
        (["reproduce", "--out", "{tmp}", "--sections", "claims", "bogus"], "--sections: invalid choice: 'bogus'"),
        (["reproduce", "--out", "{tmp}", "--threads", "-1"], "--threads must be >= 0"),
        (["reproduce", "--out", "{file}"], "--out must be a folder"),
        (["reproduce", "--out", "{tmp}", "--quick", "--sections"], "--sections: expected at least one argument"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, argv, message):
    (tmp_path / "a-file").write_text("")
    argv = [a.format(tmp=tmp_path / "out", file=tmp_path / "a-file") for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(size="huge"), ValueError, "`size` must be one of ['full', 'quick', 'tiny']"),
        (dict(sections=()), ValueError, "`sections` is empty"),
        (dict(sections=("claims", "plots")), ValueError, "unknown section(s) ['plots']"),
        (dict(threads=0), ValueError, "threads"),
        (dict(progress="yes"), TypeError, "`progress` must be True, False or None"),
        (dict(out=3), TypeError, "`out` must be a folder path"),
    ],
)
def test_bad_settings_raise_clear_errors(tmp_path, settings, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ReproduceConfig(**{"out": tmp_path, **settings})


def test_config_orders_sections_and_names_its_command(tmp_path):
    config = ReproduceConfig(tmp_path / "r", sections=("fit", "claims", "fit"))
    assert config.sections == ("claims", "fit")
    assert config.command == f"ode-momentum reproduce --quick --out {tmp_path / 'r'} --sections claims fit"
    assert ReproduceConfig(tmp_path, size="full").command == f"ode-momentum reproduce --out {tmp_path}"
    with pytest.raises(TypeError, match="ReproduceConfig"):
        run_reproduce({"out": tmp_path})


@pytest.mark.slow
def test_quick_command_produces_the_full_report_in_time(tmp_path, capsys):
    """The README's main command, as is: every figure, all claims PASS, under 10 minutes."""
    out = tmp_path / "report"
    start = time.perf_counter()
    code = main(["reproduce", "--quick", "--out", str(out)])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "all PASS" in captured.out
    result_sections = json.loads((out / "report.json").read_text())["sections"]
    assert [s["status"] for s in result_sections] == ["ok"] * len(SECTIONS)
    assert seconds < QUICK_LIMIT_S
    # rebuild the result object's view from the files: the same checks as the tiny run
    page = (out / "index.html").read_text(encoding="utf-8")
    embedded = [base64.b64decode(d) for d in EMBEDDED.findall(page)]
    for section, names in FIGURES.items():
        for name in names:
            assert (out / section / name).read_bytes() in embedded
    claims = json.loads((out / "claims" / "claims.json").read_text())
    n_checks = sum(len(c["checks"]) for c in claims["claims"])
    assert claims["passed"] and page.count('<td class="PASS">PASS</td>') == n_checks + len(claims["claims"])
    assert not re.search(r'class="(FAIL|ERROR|MISSING)"', page)
    # at quick size the studies show their effects
    fit = json.loads((out / "fit" / "momentum" / "metrics.json").read_text())
    assert fit["test_accuracy"] > 0.95
    crossing = json.loads((out / "crossing" / "crossing.json").read_text())
    assert crossing["rings"]["test_accuracy"]["momentum"] > crossing["rings"]["test_accuracy"]["flow"]
