"""Reports of the numerical checks of the paper's claims (``theory/``, ``ode-momentum verify``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Check:
    """One measured quantity against its expectation.

    Attributes
    ----------
    name : str
        What was measured, with units where they apply (e.g. ``"fitted order, leapfrog"``).
    measured : float
        The measured value.
    expected : str
        The expectation in words or as a bound (e.g. ``"2 +- 0.1"``, ``"< 1e-10"``).
    passed : bool
        Whether ``measured`` meets ``expected``.
    """

    name: str
    measured: float
    expected: str
    passed: bool


@dataclass
class ClaimReport:
    """The checks of one claim of the paper.

    Attributes
    ----------
    claim : str
        Short paraphrase of the claim (e.g. ``"4. Linear representability"``).
    checks : list of Check
    seconds : float
        Wall time of the verification.
    """

    claim: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def add(self, name: str, measured: float, expected: str, passed: bool) -> None:
        self.checks.append(Check(name, float(measured), expected, bool(passed)))

    def to_dict(self) -> dict:
        return {"claim": self.claim, "passed": self.passed, "seconds": self.seconds,
                "checks": [asdict(c) for c in self.checks]}
