"""What every long-running command shares: its output folder, its thread count and its progress display; and
what a resumable or multi-process run needs: atomic file writes, forked host random generators, and the
process group ``torchrun`` describes in the environment."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------------------ atomic writes


def atomic_write(path, write: Callable, *, mode: str = "wb") -> None:
    """Replace ``path`` by what ``write(file)`` writes, atomically: readers see the old file or the new one.

    ``write`` receives a file opened with ``mode`` in ``path``'s folder (a hidden ``.NAME.*.tmp``). It is
    flushed and fsynced, then renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows
    within one file system), and on POSIX the folder is fsynced so the rename survives a power loss. If
    ``write`` raises, or the process is interrupted by an exception, the temporary file is removed and
    ``path`` is untouched. A process killed outright (SIGKILL) may leave the temporary file behind, never a
    half-written ``path``; :func:`remove_stale_temporaries` cleans up after it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 -> what open() would have given the file
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` of ``path`` left behind; return them."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


# ------------------------------------------------------------------------------------------ random states


@contextlib.contextmanager
def forked_host_rngs(seed: int):
    """Seed numpy's and Python's global generators with ``seed`` inside, restore the caller's on exit.

    The host-side counterpart of ``torch.random.fork_rng``: a run may then checkpoint and restore these
    states (:func:`rng_states`, :func:`set_rng_states`) without touching the caller's.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def rng_states(device: torch.device | None = None) -> dict:
    """Every global random state a run can draw from, in a form ``torch.load(weights_only=True)`` accepts.

    Keys: ``torch`` (the CPU generator, a uint8 tensor), ``cuda`` (a list holding the generator state of
    ``device`` when it is a CUDA device, else empty: a CPU run never touches CUDA), ``numpy`` (the legacy
    global ``RandomState``: name, 624 keys, position, cached Gaussian) and ``python`` (``random.getstate()``
    as nested lists).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    on_cuda = device is not None and torch.device(device).type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if on_cuda else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss_next],
    }


def set_rng_states(states: dict, device: torch.device | None = None) -> None:
    """Restore the global random states saved by :func:`rng_states` (the CUDA one into ``device``).

    Raises
    ------
    ValueError
        If the states hold a CUDA generator but ``device`` is not a CUDA device: the run would not continue
        the same random streams.
    """
    if states["cuda"]:
        if device is None or torch.device(device).type != "cuda":
            raise ValueError(
                "the checkpoint holds the random state of a CUDA device, but this process trains on "
                f"{device or 'the CPU'}. Resume it on a machine where CUDA is available."
            )
        torch.cuda.set_rng_state(states["cuda"][0], device)
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------------------ processes

#: what ``torchrun`` (``python -m torch.distributed.run``) sets in each process it starts
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedEnvironmentError(RuntimeError):
    """A multi-process run was asked for, but the process was not started by ``torchrun``."""


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one run.

    ``rank`` in ``[0, world_size)``; ``local_rank`` on this machine; ``device`` the one it trains on
    (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU); ``distributed`` whether a process group is
    used (False for an ordinary single-process run, whose world is rank 0 of 1).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """``nccl`` for CUDA devices, ``gloo`` on the CPU."""
        return "nccl" if self.device.type == "cuda" else "gloo"


def torchrun_world(option: str = "--distributed", environ=None) -> World:
    """The :class:`World` that ``torchrun`` describes in the environment variables of this process.

    Parameters
    ----------
    option : str
        How the caller names the multi-process switch, for the error message.
    environ : mapping, optional
        The environment to read (default ``os.environ``).

    Raises
    ------
    DistributedEnvironmentError
        If a variable of :data:`TORCHRUN_VARIABLES` is missing or not a valid value, or ``torch.distributed``
        is unavailable; the message says how to launch the run.
    """
    env = os.environ if environ is None else environ
    launch = ("Start the run with torchrun, which sets them, e.g. `torchrun --nproc_per_node 2 -m ode_momentum.cli "
              f"fit --distributed ...` (or `python -m torch.distributed.run ...`), or drop {option} to train in "
              "one process.")
    if not torch.distributed.is_available():
        raise DistributedEnvironmentError(f"{option} needs torch.distributed, which this torch build lacks.")
    missing = [name for name in TORCHRUN_VARIABLES if not env.get(name)]
    if missing:
        raise DistributedEnvironmentError(
            f"{option} needs the environment torchrun gives each process it starts; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. {launch}"
        )
    try:
        rank, world_size, local_rank = (int(env[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        shown = ", ".join(f"{n}={env[n]!r}" for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        raise DistributedEnvironmentError(f"{option}: RANK, WORLD_SIZE and LOCAL_RANK must be integers; got "
                                          f"{shown}. {launch}") from None
    if not (world_size >= 1 and 0 <= rank < world_size and local_rank >= 0):
        raise DistributedEnvironmentError(
            f"{option}: need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; got RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}. {launch}"
        )
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return World(rank, world_size, local_rank, device, distributed=True)


@contextlib.contextmanager
def process_group(world: World, timeout_s: float = 600.0):
    """Join the default process group of ``world`` for the duration (nothing for a single-process world).

    An already initialised group is reused and left open (a caller running several fits in one group); one
    opened here is destroyed on exit. The backend is ``world.backend``; rendezvous through ``env://``
    (``MASTER_ADDR``/``MASTER_PORT``). On CUDA the process's device is set to ``cuda:LOCAL_RANK`` first.
    """
    dist = torch.distributed
    if not world.distributed or dist.is_initialized():
        yield
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(world.backend, init_method="env://", rank=world.rank, world_size=world.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()
