"""Packages the benchmark compares against: find them, install the reference package if missing, report.

``momentumnet`` 0.10 (the paper's reference code) is not a dependency of this project. Its wheel declares
torchvision, imageio and vit-pytorch, but the module we call (``momentum_net.py``) imports only torch and
numpy, so the runner installs it with ``pip install --no-deps --target DIR`` into a private folder (default
``~/.cache/ode-momentum/bench-packages``), never into the environment. A package that cannot be found or
installed is *reported* with the reason, and every method that needs it appears in the results as
``unavailable``; nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

MOMENTUMNET = "momentumnet"
MOMENTUMNET_VERSION = "0.10"
PIP_TIMEOUT_S = 300  # a 19 kB wheel: seconds when PyPI answers; the limit only bounds a hanging network


@dataclass
class PackageStatus:
    """Whether a compared package can be imported, which version, from where, and why not.

    Attributes
    ----------
    name : str
    available : bool
    version : str or None
    location : str or None
        Folder the package was imported from.
    how : str
        ``"environment"`` (already importable), ``"private folder"`` (installed earlier by the runner),
        ``"installed now"`` (pip ran in this run) or ``"missing"``.
    reason : str or None
        Why it is unavailable (pip's error, an import error, ``--no-install``).
    site_dir : str or None
        Folder to put on ``sys.path`` to import it (private installs only); passed to the subprocess workers.
    """

    name: str
    available: bool
    version: str | None = None
    location: str | None = None
    how: str = "missing"
    reason: str | None = None
    site_dir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def default_site_dir() -> Path:
    """``$XDG_CACHE_HOME/ode-momentum/bench-packages`` (``~/.cache/...`` by default)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ode-momentum" / "bench-packages"


@contextlib.contextmanager
def on_path(site_dir: str | Path | None):
    """Put ``site_dir`` first on ``sys.path`` for the duration of an import (no-op for ``None``)."""
    if site_dir is None:
        yield
        return
    entry = str(site_dir)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def import_momentumnet(site_dir: str | Path | None = None):
    """Import ``momentumnet`` (from ``site_dir`` first when given) and return the module."""
    with on_path(site_dir):
        return importlib.import_module(MOMENTUMNET)


def _version_in(site_dir: Path) -> str | None:
    for dist in importlib.metadata.distributions(path=[str(site_dir)]):
        if dist.metadata["Name"] == MOMENTUMNET:
            return dist.version
    return None


def _environment_version() -> str | None:
    try:
        return importlib.metadata.version(MOMENTUMNET)
    except importlib.metadata.PackageNotFoundError:
        return None


def _try_import(site_dir: Path | None, how: str) -> PackageStatus:
    try:
        module = import_momentumnet(site_dir)
        module.MomentumNet  # noqa: B018 -- the one API we call
    except Exception as err:  # any import failure is a reason to report, not to crash
        return PackageStatus(MOMENTUMNET, False, how="missing", reason=f"import failed: {type(err).__name__}: {err}")
    version = _version_in(site_dir) if site_dir is not None else _environment_version()
    return PackageStatus(MOMENTUMNET, True, version, str(Path(module.__file__).parent), how,
                         site_dir=str(site_dir) if site_dir is not None else None)


def ensure_momentumnet(site_dir: str | Path | None = None, *, install: bool = True) -> PackageStatus:
    """Find ``momentumnet`` 0.10, installing it into ``site_dir`` without its dependencies if missing.

    Order: the environment (if it holds version 0.10), then ``site_dir``, then ``pip install --no-deps
    --target site_dir momentumnet==0.10`` (when ``install``). Never raises for a missing package.

    Parameters
    ----------
    site_dir : path, optional
        Private install folder (default :func:`default_site_dir`).
    install : bool
        Run pip when the package is not found (``False``: report it missing).

    Returns
    -------
    PackageStatus
    """
    site_dir = Path(site_dir) if site_dir is not None else default_site_dir()
    if _environment_version() == MOMENTUMNET_VERSION:
        return _try_import(None, "environment")
    if _version_in(site_dir) == MOMENTUMNET_VERSION:
        return _try_import(site_dir, "private folder")
    if not install:
        return PackageStatus(MOMENTUMNET, False, reason=(
            f"momentumnet=={MOMENTUMNET_VERSION} is not installed and installing was switched off (--no-install)"))
    site_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
           "--timeout", "15", "--retries", "1",  # an offline machine fails in seconds, not minutes
           "--upgrade", "--target", str(site_dir), f"{MOMENTUMNET}=={MOMENTUMNET_VERSION}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return PackageStatus(MOMENTUMNET, False, reason=f"not installable: {' '.join(cmd[2:])} failed: {err}")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return PackageStatus(MOMENTUMNET, False, reason=(
            f"not installable: `pip {' '.join(cmd[3:])}` exited with status {done.returncode}: {' | '.join(tail)}"))
    return _try_import(site_dir, "installed now")


def torchdiffeq_status() -> PackageStatus:
    """torchdiffeq is a dependency of this project; report its version, or why it cannot be imported."""
    try:
        module = importlib.import_module("torchdiffeq")
    except Exception as err:
        return PackageStatus("torchdiffeq", False, reason=f"import failed: {type(err).__name__}: {err}")
    return PackageStatus("torchdiffeq", True, getattr(module, "__version__", None),
                         str(Path(module.__file__).parent), "environment")
