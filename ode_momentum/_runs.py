"""What every long-running command shares: its output folder, its thread count and its progress display."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from ._checks import check_positive_int


def check_out(out) -> Path:
    """Validate an output folder (str or Path) and return it as a Path."""
    if not isinstance(out, (str, Path)):
        raise TypeError(f"`out` must be a path (str or pathlib.Path); got {type(out).__name__}.")
    return Path(out)


def check_threads_progress(threads, progress) -> None:
    """``threads``: None or an int >= 1; ``progress``: True, False or None (a bar only on a terminal)."""
    if threads is not None:
        check_positive_int("threads", threads)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True, False or None; got {type(progress).__name__}.")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads and restore the previous count (``None``: leave it)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def stderr_is_tty() -> bool:
    """Whether a progress bar on stderr would reach a person (False in CI and under redirection)."""
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
