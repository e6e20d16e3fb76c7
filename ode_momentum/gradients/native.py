"""The native CPU kernels of the exact mode: build ``fixed_point_native.c`` on first use, call it via ctypes.

The C source ships with the package. On first use it is compiled with the system C compiler (``$CC``, else
``cc`` / ``gcc`` / ``clang``) into a per-user cache, ``$ODE_MOMENTUM_CACHE`` or ``~/.cache/ode_momentum``
(a temporary directory when neither is writable), keyed by a hash of the source, the compiler and the
platform; the build takes about a second and is atomic (several processes may race). Where no compiler
works, :func:`status` says why and the exact mode uses its eager torch kernels, which give the same bits.

No ``-ffast-math`` and ``-ffp-contract=off``: the few float operations in the kernels (quotient estimates,
the rounding of kicks, decoding) must round exactly as torch's do. ``-fno-trapping-math`` and
``-fno-math-errno`` change no result (IEEE rounding stays; only exceptions and errno are not kept), and let
the branch-free loops vectorise. No ``-march=native``: a cache shared
by several machines must not hold code that one of them cannot run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .fixed_point import decode_scaled

SOURCE = Path(__file__).with_name("fixed_point_native.c")
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off", "-fno-math-errno",
         "-fno-trapping-math")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name
    return None


def _cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("ODE_MOMENTUM_CACHE"):
        dirs.append(Path(os.environ["ODE_MOMENTUM_CACHE"]))
    dirs.append(Path.home() / ".cache" / "ode_momentum")
    dirs.append(Path(tempfile.gettempdir()) / f"ode_momentum-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    return dirs


def _build(cc: str) -> Path:
    """Compile the source into the first writable cache directory (reused if already there)."""
    source = SOURCE.read_bytes()
    version = subprocess.run([cc.split()[0], "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        source + " ".join(FLAGS).encode() + version.encode() + platform.platform().encode() + sys.version.encode()
    ).hexdigest()[:16]
    errors = []
    for folder in _cache_dirs():
        target = folder / f"fixed_point_native-{key}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
        except OSError as err:
            errors.append(f"{folder}: {err}")
            continue
        try:
            done = subprocess.run(
                [*cc.split(), *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                raise RuntimeError(f"`{cc}` failed: {done.stderr.strip()[-2000:]}")
            os.replace(tmp, target)  # atomic: a racing process either sees no file or the whole library
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("no writable cache directory: " + "; ".join(errors))


_SIGNATURES = {
    # name: (argument types, return type); pointers are passed as integers (data_ptr)
    "damp_push2": ([ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int], None),
    "damp_only": ([ctypes.c_void_p] * 2 + [ctypes.c_int64] * 3 + [ctypes.c_int], None),
    "undamp_pop2": ([ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int], None),
    "kick": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_void_p, ctypes.c_int64,
              ctypes.c_void_p], None),
    "unkick": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_void_p, ctypes.c_int64],
               None),
    "drift": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p],
              None),
    "undrift": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_void_p, ctypes.c_int64], None),
    "decode": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_int64], None),
    "checksum": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], ctypes.c_int64),
    "damp_kick2": ([ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_double] + [ctypes.c_void_p] * 2
                   + [ctypes.c_int64] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 2, None),
    "damp_kick_only": ([ctypes.c_void_p] * 2 + [ctypes.c_int, ctypes.c_double, ctypes.c_void_p]
                       + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_void_p], None),
    "unkick_undamp2": ([ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_double] + [ctypes.c_void_p] * 2
                       + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_void_p], None),
    "drift_decode": ([ctypes.c_void_p] * 2 + [ctypes.c_double] + [ctypes.c_void_p] * 2
                     + [ctypes.c_int, ctypes.c_double, ctypes.c_int64] + [ctypes.c_void_p] * 2, None),
    "undrift_decode": ([ctypes.c_void_p] * 2 + [ctypes.c_double] + [ctypes.c_void_p] * 2
                       + [ctypes.c_int, ctypes.c_double, ctypes.c_int64, ctypes.c_void_p], None),
    "adjoint_undrift_f32": ([ctypes.c_void_p] * 3 + [ctypes.c_double] * 2 + [ctypes.c_int] + [ctypes.c_void_p] * 2
                            + [ctypes.c_int64], None),
    "adjoint_undrift_f64": ([ctypes.c_void_p] * 3 + [ctypes.c_double] * 2 + [ctypes.c_int] + [ctypes.c_void_p] * 2
                            + [ctypes.c_int64], None),
    "damp_kick_drift2": ([ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_double, ctypes.c_void_p, ctypes.c_double]
                         + [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_double] + [ctypes.c_int64] * 3
                         + [ctypes.c_int] + [ctypes.c_void_p] * 2, None),
}


@lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("ODE_MOMENTUM_NATIVE", "1") == "0":
        return None, "disabled by ODE_MOMENTUM_NATIVE=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc / clang)"
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return None, f"building the native kernels failed: {err}"
    for name, (args, ret) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ret
    return lib, "built with " + cc


def status() -> tuple[bool, str]:
    """``(available, why)``: whether the native kernels loaded, and how (or why not)."""
    lib, why = _load()
    return lib is not None, why


def library() -> ctypes.CDLL:
    """The loaded library. Raises ``RuntimeError`` (with the reason) where it cannot be built."""
    lib, why = _load()
    if lib is None:
        fix = "unset ODE_MOMENTUM_NATIVE" if why.startswith("disabled") else "install a C compiler (gcc or clang)"
        raise RuntimeError(
            f"the exact mode's native kernels are unavailable: {why}. Use gradient_options={{'kernels': "
            f"'eager'}} or 'auto' (same bits, slower), or {fix}."
        )
    return lib


def adjoint_undrift(ax: torch.Tensor, gx: torch.Tensor, av: torch.Tensor, g: float, h: float):
    """``(ax + gx, av * g + h (ax + gx))`` in one pass, bit for bit the torch operations (the float adjoint of an
    undone damped kick followed by an undone drift; see ``reversal._Adjoint``). ``None`` where the native
    library is unavailable or the tensors are not contiguous CPU float32 / float64 of one dtype and shape:
    the caller then runs the torch operations."""
    dtype = ax.dtype
    if (
        dtype not in (torch.float32, torch.float64)
        or gx.dtype != dtype or av.dtype != dtype
        or ax.device.type != "cpu" or gx.device.type != "cpu" or av.device.type != "cpu"
        or ax.shape != gx.shape or ax.shape != av.shape
        or not (ax.is_contiguous() and gx.is_contiguous() and av.is_contiguous())
        or type(ax) is not torch.Tensor or type(gx) is not torch.Tensor or type(av) is not torch.Tensor
    ):
        return None
    lib, _ = _load()
    if lib is None:
        return None
    ax_out, av_out = torch.empty_like(ax), torch.empty_like(av)
    kernel = lib.adjoint_undrift_f32 if dtype == torch.float32 else lib.adjoint_undrift_f64
    kernel(ax.data_ptr(), gx.data_ptr(), av.data_ptr(), g, h, int(h == 1.0), ax_out.data_ptr(), av_out.data_ptr(),
           ax.numel())
    return ax_out, av_out


# --- wrappers with the signatures of the eager kernels (fixed_point_kernels.py) ------------------------------


# Out-parameter array types, made once: ctypes caches array types only weakly, so `(c_double * 2)()` in a
# call would make a new type (a reference cycle) per call, left to the cyclic garbage collector.
_DOUBLES2 = ctypes.c_double * 2
_DOUBLES4 = ctypes.c_double * 4
_INTS1 = ctypes.c_int64 * 1
_INTS2 = ctypes.c_int64 * 2


def _state(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _floats(f: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``f`` as contiguous float32 or float64 (other dtypes widen to float64 exactly) and the float32 flag."""
    if f.dtype not in (torch.float32, torch.float64):
        f = f.double()
    f = _state(f)
    return f, int(f.dtype == torch.float32)


class NativeKernels:
    """The fixed-point sub-flows on contiguous CPU int64 tensors, one C loop each.

    Range flags are returned as Python floats (0.0 in range, inf not) and checksums and sums as Python ints
    (int64, wrapping), so nothing makes a tensor round trip. The fused kernels also return the sums the
    checksum needs, and the decoded state the next residual evaluation reads.
    """

    name = "native"

    def __init__(self):
        self.lib = library()

    def damp_push2(self, V, word, n, s, k):
        V, word = _state(V), _state(word)
        W, out = torch.empty_like(V), torch.empty_like(word)
        self.lib.damp_push2(V.data_ptr(), word.data_ptr(), W.data_ptr(), out.data_ptr(), V.numel(), n, s, k)
        return W, out

    def damp_only(self, V, n, s, k):
        V = _state(V)
        W = torch.empty_like(V)
        self.lib.damp_only(V.data_ptr(), W.data_ptr(), V.numel(), n, s, k)
        return W

    def undamp_pop2(self, W, word, n, s, k):
        W, word = _state(W), _state(word)
        V, out = torch.empty_like(W), torch.empty_like(word)
        self.lib.undamp_pop2(W.data_ptr(), word.data_ptr(), V.data_ptr(), out.data_ptr(), W.numel(), n, s, k)
        return V, out

    def kick(self, V, f, scale):
        V, (f, f32) = _state(V), _floats(f)
        out, peaks = torch.empty_like(V), _DOUBLES2()
        self.lib.kick(V.data_ptr(), f.data_ptr(), f32, scale, out.data_ptr(), V.numel(), peaks)
        return out, peaks[0], peaks[1]

    def unkick(self, V, f, scale):
        V, (f, f32) = _state(V), _floats(f)
        out = torch.empty_like(V)
        self.lib.unkick(V.data_ptr(), f.data_ptr(), f32, scale, out.data_ptr(), V.numel())
        return out

    def drift(self, X, V, h):
        X, V = _state(X), _state(V)
        out, peaks = torch.empty_like(X), _DOUBLES2()
        self.lib.drift(X.data_ptr(), V.data_ptr(), h, out.data_ptr(), X.numel(), peaks)
        return out, peaks[0], peaks[1]

    def undrift(self, X, V, h):
        X, V = _state(X), _state(V)
        out = torch.empty_like(X)
        self.lib.undrift(X.data_ptr(), V.data_ptr(), h, out.data_ptr(), X.numel())
        return out

    def decode(self, X, scale, dtype):
        if dtype not in (torch.float32, torch.float64):
            return decode_scaled(X, scale, dtype)
        X = _state(X)
        out = torch.empty_like(X, dtype=dtype)
        self.lib.decode(X.data_ptr(), out.data_ptr(), int(dtype == torch.float32), scale, X.numel())
        return out

    def checksum(self, X, V):
        X, V = _state(X), _state(V)
        return self.lib.checksum(X.data_ptr(), V.data_ptr(), X.numel())

    def damp_kick2(self, V, word, n, s, k, f, scale):
        V, word, (f, f32) = _state(V), _state(word), _floats(f)
        W, out = torch.empty_like(V), torch.empty_like(word)
        flags, sums = _DOUBLES2(), _INTS1()
        self.lib.damp_kick2(V.data_ptr(), word.data_ptr(), f.data_ptr(), f32, scale, W.data_ptr(), out.data_ptr(),
                            V.numel(), n, s, k, flags, sums)
        return W, out, flags[0], flags[1], sums[0]

    def damp_kick_only(self, V, n, s, k, f, scale):
        V, (f, f32) = _state(V), _floats(f)
        W, flags = torch.empty_like(V), _DOUBLES2()
        self.lib.damp_kick_only(V.data_ptr(), f.data_ptr(), f32, scale, W.data_ptr(), V.numel(), n, s, k, flags)
        return W, flags[0], flags[1]

    def unkick_undamp2(self, W, word, n, s, k, f, scale):
        W, word, (f, f32) = _state(W), _state(word), _floats(f)
        V, out, sums = torch.empty_like(W), torch.empty_like(word), _INTS1()
        self.lib.unkick_undamp2(W.data_ptr(), word.data_ptr(), f.data_ptr(), f32, scale, V.data_ptr(),
                                out.data_ptr(), W.numel(), n, s, k, sums)
        return V, out, sums[0]

    def drift_decode(self, X, V, h, dtype, scale):
        if dtype not in (torch.float32, torch.float64):
            X, flag_inc, flag_x = self.drift(X, V, h)
            return X, self.decode(X, scale, dtype), flag_inc, flag_x, None, None
        X, V = _state(X), _state(V)
        out, x = torch.empty_like(X), torch.empty_like(X, dtype=dtype)
        flags, sums = _DOUBLES2(), _INTS2()
        self.lib.drift_decode(X.data_ptr(), V.data_ptr(), h, out.data_ptr(), x.data_ptr(),
                              int(dtype == torch.float32), scale, X.numel(), flags, sums)
        return out, x, flags[0], flags[1], sums[0], sums[1]

    def undrift_decode(self, X, V, h, dtype, scale):
        if dtype not in (torch.float32, torch.float64):
            X = self.undrift(X, V, h)
            return X, self.decode(X, scale, dtype), None, None
        X, V = _state(X), _state(V)
        out, x, sums = torch.empty_like(X), torch.empty_like(X, dtype=dtype), _INTS2()
        self.lib.undrift_decode(X.data_ptr(), V.data_ptr(), h, out.data_ptr(), x.data_ptr(),
                                int(dtype == torch.float32), scale, X.numel(), sums)
        return out, x, sums[0], sums[1]

    def damp_kick_drift2(self, X, V, word, n, s, k, f, scale, h, dtype, dscale):
        """:meth:`damp_kick2` then :meth:`drift_decode` of the new velocity, in one pass of blocks:
        ``(X', W, word', x, flag_inc, flag_w, flag_drift, flag_x, sum_x, sum_w)``."""
        if dtype not in (torch.float32, torch.float64):
            from .fixed_point_kernels import _Composed  # imports this module

            return _Composed.damp_kick_drift2(self, X, V, word, n, s, k, f, scale, h, dtype, dscale)
        X, V, word, (f, f32) = _state(X), _state(V), _state(word), _floats(f)
        W, word_out, X_out = torch.empty_like(V), torch.empty_like(word), torch.empty_like(X)
        x = torch.empty_like(X, dtype=dtype)
        flags, sums = _DOUBLES4(), _INTS2()
        self.lib.damp_kick_drift2(V.data_ptr(), word.data_ptr(), f.data_ptr(), f32, scale, X.data_ptr(), h,
                                  W.data_ptr(), word_out.data_ptr(), X_out.data_ptr(), x.data_ptr(),
                                  int(dtype == torch.float32), dscale, X.numel(), n, s, k, flags, sums)
        return X_out, W, word_out, x, flags[0], flags[1], flags[2], flags[3], sums[0], sums[1]
