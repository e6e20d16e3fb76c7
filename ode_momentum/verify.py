"""``ode-momentum verify [--quick] [--json FILE]``: run every claim's numerical check, print a PASS/FAIL table.

Each module of ``ode_momentum.theory`` (listed in ``ode_momentum.theory.CLAIMS``, in the paper's order)
exposes ``verify(quick) -> ClaimReport``. :func:`run_claims` runs them one after the other, each under a
forked random state, and turns a module that is missing or raises into a failed claim with its reason
instead of crashing; :func:`format_report` lays the checks out as ``claim | check | measured | expected |
result``. The command's exit status is 0 when every check passes and 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._checks import check_positive_int
from ._runs import torch_threads
from .analysis import ClaimReport

PASS, FAIL, MISSING, ERROR = "PASS", "FAIL", "MISSING", "ERROR"
# The checks train and integrate tiny tensors, for which one intra-op thread is fastest (and several
# threads can be many times slower on a busy machine). The previous count is restored afterwards.
DEFAULT_THREADS = 1


@dataclass
class ClaimOutcome:
    """The result of one claim's module.

    Attributes
    ----------
    module : str
        Name in ``ode_momentum.theory`` (e.g. ``"invertibility"``).
    status : {"PASS", "FAIL", "MISSING", "ERROR"}
        ``MISSING``: the module does not exist; ``ERROR``: importing it or its ``verify`` raised.
    report : ClaimReport
        Its checks (for ``MISSING`` / ``ERROR``, one failed check stating the reason).
    error : str or None
        The exception, for ``MISSING`` and ``ERROR``.
    """

    module: str
    status: str
    report: ClaimReport
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; a measured value that is not finite (``nan``, ``inf``) becomes ``None``."""
        data = {"module": self.module, "status": self.status, "error": self.error, **self.report.to_dict()}
        for check in data["checks"]:
            if not math.isfinite(check["measured"]):
                check["measured"] = None
        return data


def _claim_names() -> list[str]:
    from .theory import CLAIMS

    return list(CLAIMS)


def _run_one(name: str, quick: bool) -> ClaimOutcome:
    qualified = f"ode_momentum.theory.{name}"
    start = time.perf_counter()
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as err:
        if err.name != qualified:  # the module exists but one of its imports does not
            return _failed(name, ERROR, f"import failed: {err!r}", start)
        return _failed(name, MISSING, f"module {qualified} not found", start)
    except Exception as err:  # noqa: BLE001 - report any import-time failure as this claim's error
        return _failed(name, ERROR, f"import failed: {_describe(err)}", start)
    verify = getattr(module, "verify", None)
    if not callable(verify):
        return _failed(name, ERROR, f"{qualified} has no verify(quick) function", start)
    try:
        with torch.random.fork_rng(devices=[]):
            report = verify(quick=quick)
    except Exception as err:  # noqa: BLE001 - one claim's crash must not hide the others' results
        return _failed(name, ERROR, f"verify raised {_describe(err)}", start)
    if not isinstance(report, ClaimReport):
        return _failed(name, ERROR, f"verify returned {type(report).__name__}, not a ClaimReport", start)
    if not report.seconds:
        report.seconds = time.perf_counter() - start
    return ClaimOutcome(name, PASS if report.passed else FAIL, report)


def _describe(err: BaseException) -> str:
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(err).__name__}: {err}{where}"


def _failed(name: str, status: str, reason: str, start: float) -> ClaimOutcome:
    report = ClaimReport(getattr(_module_or_none(name), "CLAIM", name))
    report.add(reason, math.nan, "the claim's module runs", False)
    report.seconds = time.perf_counter() - start
    return ClaimOutcome(name, status, report, reason)


def _module_or_none(name: str):
    return sys.modules.get(f"ode_momentum.theory.{name}")




def run_claims(
    quick: bool = True,
    *,
    claims: Sequence[str] | None = None,
    progress: bool | None = None,
    threads: int | None = DEFAULT_THREADS,
) -> list[ClaimOutcome]:
    """Run the ``verify`` of every claim module and collect the outcomes, in order.

    Parameters
    ----------
    quick : bool
        Passed to every ``verify``: seconds per claim (default) or the full sizes (minutes).
    claims : sequence of str, optional
        Module names in ``ode_momentum.theory``; default ``ode_momentum.theory.CLAIMS``.
    progress : bool, optional
        tqdm bar over the claims on stderr; ``None``: only when stderr is a terminal.
    threads : int or None
        torch intra-op threads during the run, restored afterwards (default 1, see ``DEFAULT_THREADS``);
        ``None`` leaves torch's setting alone.

    Returns
    -------
    list of ClaimOutcome
        A missing module gives ``status="MISSING"``, a module that raises ``"ERROR"``; neither stops the run.

    Raises
    ------
    TypeError, ValueError
        If ``claims`` is not a sequence of names or ``threads < 1``.
    """
    names = _claim_names() if claims is None else list(claims)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"`claims` must hold module names of ode_momentum.theory; got {name!r}.")
    if threads is not None:
        check_positive_int("threads", threads)
    show = _stderr_is_tty() if progress is None else bool(progress)
    outcomes = []
    with torch_threads(threads):
        bar = tqdm(names, desc="verify", unit="claim", disable=not show, file=sys.stderr)
        with contextlib.closing(bar):
            for name in bar:
                bar.set_postfix_str(name)
                outcomes.append(_run_one(name, quick))
    return outcomes


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def format_report(outcomes: Sequence[ClaimOutcome], *, seconds: float | None = None) -> str:
    """Aligned text table ``claim | check | measured | expected | result`` and a summary line.

    Every check is a row; a missing or failing module is one row with status ``MISSING`` or ``ERROR``.
    """
    header = ("claim", "check", "measured", "expected", "result")
    rows = []
    for outcome in outcomes:
        for i, check in enumerate(outcome.report.checks):
            if outcome.status in (MISSING, ERROR):
                result = outcome.status
            else:
                result = PASS if check.passed else FAIL
            rows.append((outcome.module if i == 0 else "", check.name, _fmt(check.measured), check.expected, result))
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = []
    for r in [header, *rows]:
        parts = [c.rjust(w) if j == 2 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_checks = sum(len(o.report.checks) for o in outcomes)
    n_failed_checks = sum(not c.passed for o in outcomes for c in o.report.checks)
    bad = [f"{o.module} ({o.status})" for o in outcomes if not o.passed]
    summary = f"{len(outcomes)} claims, {n_checks} checks, {n_failed_checks} failed"
    if seconds is not None:
        summary += f", {seconds:.1f} s"
    summary += ": " + ("all claims pass" if not bad else "not passing: " + ", ".join(bad))
    return "\n".join(lines + ["", summary])


def verify_main(quick: bool = True, *, json_path=None, claims=None, progress=None,
                threads: int | None = DEFAULT_THREADS, stream=None) -> int:
    """Run the claims, print the table to ``stream`` (default stdout), optionally write JSON; return 0 or 1.

    The JSON file holds ``{"quick", "passed", "seconds", "claims": [ClaimOutcome.to_dict(), ...]}``.
    """
    stream = sys.stdout if stream is None else stream
    start = time.perf_counter()
    outcomes = run_claims(quick, claims=claims, progress=progress, threads=threads)
    seconds = time.perf_counter() - start
    passed = bool(outcomes) and all(o.passed for o in outcomes)
    print(format_report(outcomes, seconds=seconds), file=stream)
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"quick": quick, "passed": passed, "seconds": seconds, "claims": [o.to_dict() for o in outcomes]}
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}", file=stream)
    return 0 if passed else 1


def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``verify [--quick] [--json FILE] [--claims NAME ...] [--threads N] [--progress]``.

    Follows ``ode_momentum.cli``'s convention: the parser sets ``run`` (called as ``args.run(args,
    args.parser)``, returns the exit status) and ``parser``.
    """
    p = subparsers.add_parser(
        "verify",
        help="check the paper's claims numerically; print a PASS/FAIL table",
        description=(
            "Run the numerical check of every claim of Sander et al. (ICML 2021) in ode_momentum.theory, in "
            "the paper's order, and print one row per check: claim, check, measured value, expectation, "
            "PASS/FAIL. Exit status 1 if any check fails or a claim's module is missing or raises."
        ),
    )
    p.add_argument("--quick", action="store_true", help="small sizes: well under a minute instead of minutes")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--claims", nargs="+", default=None, metavar="NAME",
                   help="only these modules of ode_momentum.theory (default: all, see theory/README.md)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch intra-op threads during the run (0: torch's own count)")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")
    p.set_defaults(run=run_verify_command, parser=p)
    return p


def run_verify_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """``ode-momentum verify``: returns the exit status (0: every claim passes)."""
    if args.threads < 0:
        message = f"--threads must be >= 0 (0: torch's own count); got {args.threads}."
        if parser is not None:
            parser.error(message)
        raise ValueError(message)
    known = set(_claim_names())
    unknown = [c for c in args.claims or () if c not in known]
    if unknown:
        message = f"--claims: unknown claim module(s) {unknown}; choose from {sorted(known)}."
        if parser is not None:
            parser.error(message)
        raise ValueError(message)
    return verify_main(
        args.quick,
        json_path=args.json,
        claims=args.claims,
        progress=True if args.progress else None,
        threads=None if args.threads == 0 else args.threads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ode_momentum.verify [--quick] [--json FILE]`` (the same options as ``ode-momentum verify``)."""
    parser = argparse.ArgumentParser(prog="python -m ode_momentum.verify")
    sub = parser.add_subparsers(dest="command", required=True)
    add_verify_parser(sub)
    args = parser.parse_args(["verify", *(sys.argv[1:] if argv is None else argv)])
    return args.run(args, args.parser)


if __name__ == "__main__":
    sys.exit(main())
