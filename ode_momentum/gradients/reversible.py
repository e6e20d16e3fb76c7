"""Float reversal (``gradient="reversible"``) and its checkpointed form (``gradient="checkpoint"``).

``reversible`` saves ``x_0``, ``x_N`` and ``v_N`` whatever the depth and reconstructs every step with the
algebraic inverse in floating point. The inverse divides by the damping ``g < 1``, so rounding grows by
about ``1/g`` per step (``gamma^{-N}``, ``e^{T/eps}``): the reconstructed ``x_0`` is compared with the saved
one, and a relative error above ``drift_tol`` warns (``on_drift="warn"``) or raises (``"raise"``).

``checkpoint`` also stores the state every ``every`` steps and reverses in float inside each segment,
restarting from the stored state at every segment boundary: the drift is bounded by about
``u gamma^{-every}`` (``u`` the unit roundoff) at any depth, for ``2 / every`` extra states per step, and it
is measured at every boundary.

Two further checks run in both modes, on the device, and are compared once at the end of the backward (one
host synchronisation per backward, none in the forward):

- every state ``(x_n, v_n)`` is fingerprinted in the forward (two random projections and the squared norm:
  ``O(N)`` scalars) and again when the backward reconstructs it; a relative difference above ``drift_tol``
  names the last step (in forward order) whose reconstruction is off;
- every residual evaluation's *derivative pattern* is fingerprinted: the branch each piecewise operation in
  its autograd graph took (ReLU and its relatives, clamps, ``abs``, ``maximum``, max-pool and other index
  selections, ``where`` and ``masked_fill`` conditions), hashed on the device. A reconstruction error far
  below ``drift_tol`` still flips the branch of every pre-activation closer to a kink than the error, and
  each flip changes the gradient at that element by O(1): float32 reversal of a 32-layer Conv-BN-ReLU stack
  reconstructs ``x_0`` to 3e-5 yet returns input gradients 3% off. A changed pattern is reported at steps
  whose reconstruction error exceeds ``ROUNDING_TIE_ULPS`` unit roundoffs; below that the forward's own
  rounding flips branches about as often (float32 backprop meets those ties too), and they are not reported.

All findings warn (``on_drift="warn"``) or raise (``"raise"``); ``"ignore"`` switches the checks off.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_positive_int, check_real
from ..integrators import FLOAT
from .reversal import check_reversible, solve_with_reversal
from .trajectory import Trajectory

ON_DRIFT = ("warn", "raise", "ignore")
DEFAULT_DRIFT_TOL = 1e-4
# A changed branch is reported only at a step whose reconstruction error exceeds this many unit roundoffs.
# The forward's own rounding of a residual's pre-activations is 4-9 u (rms, measured on Conv-BN and MLP
# residuals), so below ~32 u a flipped branch is as likely a float rounding tie, which float32 backprop meets
# too, as an error of the reversal; above it the reversal flips branches several times more often.
ROUNDING_TIE_ULPS = 32


class ReconstructionDriftWarning(UserWarning):
    """The float reversal did not recover the forward's states to the requested tolerance."""


class ReconstructionDriftError(RuntimeError):
    """Raised instead of :class:`ReconstructionDriftWarning` with ``on_drift="raise"``."""


@dataclass
class ReversibleOptions:
    """Options of ``gradient="reversible"``.

    drift_tol : float
        Largest accepted relative error ``max|x0_rec - x0| / max|x0|`` of the reconstructed input (default
        1e-4: above it float32 gradients are no longer trustworthy to 4 digits), and of every reconstructed
        state ``(x_n, v_n)`` as estimated from its fingerprint.
    on_drift : {"warn", "raise", "ignore"}
        What to do when ``drift_tol`` is exceeded or when a recomputed residual took another branch of a
        piecewise operation than the forward (see the module doc). ``"ignore"`` also skips the per-step
        fingerprints.
    replay_rng : bool
        Replay each residual evaluation's random number generator state in the backward (default True).
    """

    drift_tol: float = DEFAULT_DRIFT_TOL
    on_drift: str = "warn"
    replay_rng: bool = True

    def __post_init__(self):
        self.drift_tol = check_real("drift_tol", self.drift_tol)
        if self.drift_tol <= 0:
            raise ValueError(f"`drift_tol` must be > 0; got {self.drift_tol!r}.")
        check_choice("on_drift", self.on_drift, ON_DRIFT)


@dataclass
class CheckpointOptions(ReversibleOptions):
    """Options of ``gradient="checkpoint"``: those of ``"reversible"`` plus the segment length.

    every : int or None
        Store the state every ``every`` steps (memory ``2 N / every`` states). ``None`` picks the largest
        segment whose predicted drift ``u prod(1/g)`` stays below ``drift_tol / 100`` (``u`` the unit
        roundoff of the state's dtype), at least 1.
    """

    every: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.every is not None:
            check_positive_int("every", self.every)


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def predicted_drift(traj: Trajectory, dtype: torch.dtype, steps: range | None = None) -> float:
    """Predicted relative reconstruction error of float reversal: ``u * prod_n 1 / gamma_n``.

    The growth factor of one inverse step is ``1 / gamma_n`` (the net velocity damping of step ``n``), the
    rounding of one step is about the unit roundoff ``u``. A Lipschitz constant of ``F`` adds to this, so it
    is a lower estimate, used with a safety factor.
    """
    steps = range(traj.n_steps) if steps is None else steps
    log_growth = sum(-math.log(traj.integrator.gamma(traj.spans[n].h)) for n in steps)
    return unit_roundoff(dtype) * math.exp(min(log_growth, 700.0))


def solve_reversible(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options: ReversibleOptions):
    """Integrate ``traj`` with the memory-free float-reversal gradient; returns ``(xs, vs)``, time first."""
    check_reversible(traj.integrator, [span.h for span in traj.spans], "reversible")
    return solve_with_reversal(traj, x0, v0, FloatSystem(traj, options, every=None))


def solve_checkpoint(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, options: CheckpointOptions):
    """Integrate ``traj`` with float reversal inside checkpointed segments; returns ``(xs, vs)``."""
    check_reversible(traj.integrator, [span.h for span in traj.spans], "checkpoint")
    every = options.every or auto_segment(traj, x0.dtype, options.drift_tol)
    return solve_with_reversal(traj, x0, v0, FloatSystem(traj, options, every=every))


def auto_segment(traj: Trajectory, dtype: torch.dtype, drift_tol: float) -> int:
    """Largest ``K`` with ``u gamma^{-K} <= drift_tol / 100`` for the strongest damping of ``traj``."""
    worst = max(-math.log(traj.integrator.gamma(span.h)) for span in traj.spans)
    if worst <= 0:
        return traj.n_steps
    return max(1, min(traj.n_steps, int(math.log(drift_tol / 100 / unit_roundoff(dtype)) / worst)))


class FloatSystem:
    """State system of float reversal: the state is its own encoding; ``every`` adds checkpoints.

    Unless ``on_drift="ignore"``, a training forward instruments the trajectory's residual functions (the
    trajectory is the solve's own, built per call) with a :class:`_Probe` that fingerprints every state and
    every evaluation's derivative pattern; the backward compares the reconstructions with them.
    """

    def __init__(self, traj: Trajectory, options: ReversibleOptions, every: int | None):
        self.traj = traj
        self.options = options
        self.every = every
        self.checkpoints: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.probe: _Probe | None = None

    @staticmethod
    def encode(x0, v0):
        return x0, v0

    @staticmethod
    def decode(x):
        return x

    def training_ops(self, v):
        if self.options.on_drift != "ignore":
            self.probe = _Probe(self.traj)
            self.traj.funcs = self.probe.instrument(self.traj.funcs)
        return FLOAT

    def inference_ops(self):
        return FLOAT

    def on_step(self, n, x, v):
        if self.every is not None and 0 < n < self.traj.n_steps and n % self.every == 0:
            self.checkpoints[n] = (x, v)
        if self.probe is not None and n < self.traj.n_steps:
            self.probe.forward_state(n, x, v)

    def end_forward(self):
        if self.probe is not None:
            self.probe.end_forward()

    def tensors_to_save(self, x0, v0):
        saved = [x0]
        for n in sorted(self.checkpoints):
            saved.extend(self.checkpoints[n])
        self.checkpoints = {n: None for n in self.checkpoints}  # the tensors now live in the autograd context
        return saved

    def start_backward(self, saved):
        x0, *flat = saved
        stored = dict(zip(sorted(self.checkpoints), zip(flat[0::2], flat[1::2])))
        if self.probe is not None:
            self.probe.start_backward()
        return _FloatReverse(self, x0, stored)


class _FloatReverse:
    ops = FLOAT

    def __init__(self, system: FloatSystem, x0, stored):
        self.system, self.x0, self.stored = system, x0, stored
        self.measured: dict[int, float] = {}  # step -> exact relative error (max norm) of the reconstructed x_n
        self.worst = 0.0

    @contextlib.contextmanager
    def evaluating_again(self):
        """The recorder recomputes, at a stored state, an evaluation it already recorded (a scheme's first same
        as last after a restart): not fingerprinted, the probe pairs each forward evaluation with one."""
        probe = self.system.probe
        phase = None if probe is None else probe.phase
        if probe is not None:
            probe.phase = None
        try:
            yield
        finally:
            if probe is not None:
                probe.phase = phase

    def after_inverse(self, n, x, v):
        if self.system.probe is not None:
            self.system.probe.backward_state(n, x, v)
        if n in self.stored:  # measure the segment's drift, then restart from the stored state
            xs, vs = self.stored[n]
            self.measured[n] = _relative_error(x, xs)
            return xs, vs
        return x, v

    def finish(self, x, v):
        self.measured[0] = _relative_error(x, self.x0)
        self.worst = max(self.measured.values())
        opts, traj = self.system.options, self.system.traj
        if opts.on_drift == "ignore":
            return
        found = self.system.probe.compare() if self.system.probe is not None else _Findings()
        errors = found.state_errors
        bad_states = [n for n, e in enumerate(errors) if not e <= opts.drift_tol]
        flips = [(n, e) for n, e in ((n, self._error_at(n, errors)) for n in found.changed) if e > self._tie()]
        drifted = not self.worst <= opts.drift_tol
        if not (drifted or bad_states or flips):
            return
        parts = []
        if drifted or bad_states:
            size = max([self.worst] + [errors[n] for n in bad_states])
            first = f", first at step {max(bad_states)}" if bad_states else ""
            where = f"segments of {self.system.every} steps" if self.system.every else f"{traj.n_steps} steps"
            parts.append(
                f"float reversal drifted: a reconstructed state differs from the forward's by {size:.3g} "
                f"(relative){first} > drift_tol = {opts.drift_tol:g} over {where} of {traj.integrator!r} in "
                f"{self.x0.dtype}. Each inverse step divides by the damping factor, so rounding grows like "
                "gamma^-N."
            )
        if flips:
            steps = sorted({n for n, _ in flips}, reverse=True)
            named = ", ".join(map(str, steps[:6])) + (", ..." if len(steps) > 6 else "")
            u = unit_roundoff(self.x0.dtype)
            parts.append(
                f"float reversal changed the derivative pattern of the residual functions, first at step "
                f"{steps[0]} (steps {named}): recomputed at the reconstructed states, whose relative error "
                f"there (~{flips[0][1]:.2g}, {flips[0][1] / u:.0f} times the unit roundoff of {self.x0.dtype}) "
                "is well above the forward's own rounding, a piecewise operation (ReLU, clamp, max-pool, where, "
                f"...) took another branch than in the forward in {len(flips)} of {found.evals} evaluations "
                f"({found.decisions} branch decisions in all). Each flipped branch changes the gradient at its "
                "element by O(1), however small the state error, so gradients can be wrong by far more than "
                "drift_tol (3% for a 32-layer Conv-BN-ReLU stack in float32)."
            )
        short = ' with short segments (gradient_options={"every": 4})' if flips else ""
        msg = " ".join(parts) + (
            ' Gradients are unreliable. Use gradient="exact" (bit-exact at any depth), float64, '
            f'gradient="checkpoint"{short}, or gradient="backprop".'
        )
        if opts.on_drift == "raise":
            raise ReconstructionDriftError(msg)
        warnings.warn(msg, ReconstructionDriftWarning, stacklevel=2)

    def _tie(self) -> float:
        return ROUNDING_TIE_ULPS * unit_roundoff(self.x0.dtype)

    def _error_at(self, n: int, errors: list) -> float:
        """Relative reconstruction error at step ``n``: its fingerprint's estimate, or the exact error measured
        at the segment's end (``x_0`` or a checkpoint) shrunk by the damping of the steps in between."""
        b = max(m for m in self.measured if m <= n)
        traj = self.system.traj
        model = self.measured[b] * math.prod(traj.integrator.gamma(traj.spans[m].h) for m in range(b, n))
        return max(model, errors[n] if n < len(errors) else 0.0)


def _relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    err = float((x - ref).abs().max())
    scale = float(ref.abs().max())
    rel = err / scale if scale > 0 else err
    return rel if math.isfinite(rel) else math.inf


# --------------------------------------------------------------------------------------- the fingerprints


@dataclass
class _Findings:
    """What the comparison of the forward's fingerprints with the backward's found."""

    state_errors: list = field(default_factory=list)  # estimated relative error of (x_n, v_n), n = 0..N-1
    changed: list = field(default_factory=list)  # step of each evaluation whose branch decisions differ, last first
    evals: int = 0  # residual evaluations with branch decisions
    decisions: int = 0  # branch decisions per forward, summed over the evaluations


_PROJECTION_SEED = 0x5EED  # the projections are the same in the forward and in the backward


class _Probe:
    """Fingerprints of the forward, and of its reconstruction by the backward, compared once at the end.

    States: four projections ``a_i^T X b_j`` (``i, j = 1, 2``) of each of ``x_n`` and ``v_n`` viewed as
    matrices ``X`` (last dimension as columns), plus ``|x_n|^2 + |v_n|^2`` in the forward; the projections
    again in the backward. ``a_i``, ``b_j`` are standard Gaussian vectors drawn from a private generator
    (the caller's random state is untouched): one pass over the state for each of ``x`` and ``v``, and
    ``O(rows + columns)`` numbers held while the forward or the backward runs. A squared projection of the
    reconstruction error ``e`` estimates ``|e|_2^2``, so the comparison gives the relative error of
    ``(x_n, v_n)`` in the 2-norm up to a random factor of order one.

    Evaluations: the residual functions are wrapped (:class:`_Probed`); each evaluation's autograd graph is
    walked for piecewise operations (:func:`decisions_of`) and their branch decisions hashed on the device
    into one int64 (:meth:`_pattern`). The backward's ``j``-th evaluation recomputes the forward's
    ``K-1-j``-th, as the engine's RNG replay does.
    """

    def __init__(self, traj: Trajectory):
        self.n_steps = traj.n_steps
        self.stop = {t.grad_fn for t in traj.extras if t.grad_fn is not None}  # the caller's graph
        self.step = 0
        self._r: tuple | None = None  # the projection factors (a, b)
        self._weights: dict = {}
        self.fwd_states: list = []
        self.fwd_evals: list = []
        self.eval_steps: list[int] = []
        self.eval_decisions: list[int] = []
        self.bwd_states: list = []
        self.bwd_evals: list = []
        self.phase = "forward"  # the probe is made by training_ops, just before the forward

    def instrument(self, funcs):
        wrapped: dict[int, _Probed] = {}
        for f in funcs:  # one wrapper per distinct function: identities (first-same-as-last reuse) are kept
            if id(f) not in wrapped:
                wrapped[id(f)] = _Probed(f, self)
        return [wrapped[id(f)] for f in funcs]

    # ----- states
    def _matrix(self, x):
        """``x`` as a float32/64 matrix (last dimension as columns); draws ``a``, ``b`` on the first call."""
        if self._r is None:
            q = x.shape[-1] if x.dim() and x.numel() else 1
            dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
            gen = torch.Generator(device=x.device).manual_seed(_PROJECTION_SEED)
            a = torch.randn(2, x.numel() // q, generator=gen, dtype=dtype, device=x.device)
            b = torch.randn(q, 2, generator=gen, dtype=dtype, device=x.device)
            self._r = (a, b)
        a, b = self._r
        X = x.reshape(a.shape[1], b.shape[0])
        return X if X.dtype == a.dtype else X.to(a.dtype)

    def _project(self, X):
        """``a^T X b`` (2 x 2): four rank-one Gaussian projections of the state matrix ``X``, one pass."""
        a, b = self._r
        return (a @ X) @ b

    def forward_state(self, n, x, v):
        self.step = n
        X, V = self._matrix(x), self._matrix(v)
        flat_x, flat_v = X.reshape(-1), V.reshape(-1)
        self.fwd_states.append(
            (self._project(X), self._project(V), torch.dot(flat_x, flat_x) + torch.dot(flat_v, flat_v))
        )

    def end_forward(self):
        self.phase, self._r, self._weights = None, None, {}
        if self.fwd_states:
            self.fwd_states = tuple(torch.stack(t).double() for t in zip(*self.fwd_states))
        else:
            self.fwd_states = None

    def start_backward(self):
        self.phase = "backward"
        self.bwd_states = [None] * self.n_steps
        self.bwd_evals = []

    def backward_state(self, n, x, v):
        self.bwd_states[n] = (self._project(self._matrix(x)), self._project(self._matrix(v)))

    # ----- evaluations
    def evaluation(self, out):
        ds = decisions_of(out, self.stop) if isinstance(out, torch.Tensor) else []
        with torch.no_grad():
            fp = self._pattern(ds) if ds else None
        if self.phase == "forward":
            self.fwd_evals.append(fp)
            self.eval_steps.append(self.step)
            self.eval_decisions.append(sum(d.numel() for d in ds))
        else:
            self.bwd_evals.append(fp)

    def _w(self, n, device):
        """``n`` pseudo-random odd int64 weights (the same in the forward and the backward); kept for up to
        2^20 words (8 MB), drawn afresh above."""
        w = self._weights.get((n, device))
        if w is None:
            gen = torch.Generator(device=device).manual_seed(_PROJECTION_SEED + n)
            w = torch.randint(-(2**62), 2**62, (n,), generator=gen, dtype=torch.int64, device=device) * 2 + 1
            if n <= 1 << 20:
                self._weights[(n, device)] = w
        return w

    def _pattern(self, ds):
        """One int64 hash of the decisions: their bytes read as 32-bit words ``d_i``, ``sum_i w_i d_i``
        modulo 2^64 with random odd weights ``w_i``. A change within one word moves it by ``w_i`` times a
        nonzero number below ``2^32``, never a multiple of ``2^64``: one flip always changes the hash; changes
        in several words cancel with probability about ``2^-32``."""
        hashes = []
        for d in ds:
            flat = d.reshape(-1)
            if flat.numel() == 0:
                continue
            size = flat.element_size()
            if (flat.numel() * size) % 4 == 0 and (flat.storage_offset() * size) % 4 == 0:
                words = flat.view(torch.int32)  # four bools, one float, ... per word
            elif flat.is_floating_point():
                words = flat.double().view(torch.int64)
            else:
                words = flat.to(torch.int64)
            hashes.append((words * self._w(words.numel(), words.device)).sum())
        if not hashes:
            return None
        if len(hashes) == 1:
            return hashes[0]
        return (torch.stack(hashes) * self._w(len(hashes), hashes[0].device)).sum()

    # ----- the comparison, once per backward
    def compare(self) -> _Findings:
        """Compare the fingerprints (one host synchronisation) and free them."""
        self.phase, self._r, self._weights = None, None, {}
        found = _Findings()
        values: list[torch.Tensor] = []
        n_states = 0
        if self.fwd_states is not None and all(b is not None for b in self.bwd_states):
            px, pv, squared_norms = self.fwd_states
            gx, gv = (torch.stack(t).double() for t in zip(*self.bwd_states))
            # each of the four projections estimates |e|^2 when squared
            diff = torch.sqrt((((gx - px) ** 2).sum((1, 2)) + ((gv - pv) ** 2).sum((1, 2))) / 4)
            scale = torch.sqrt(squared_norms)
            values.append(torch.where(scale > 0, diff / scale, diff))
            n_states = len(self.bwd_states)
        pairs, changed = [], []
        K = len(self.fwd_evals)
        if len(self.bwd_evals) == K:
            for k in range(K):
                a, b = self.fwd_evals[k], self.bwd_evals[K - 1 - k]
                if a is None and b is None:
                    continue
                if a is None or b is None:
                    changed.append(k)
                else:
                    pairs.append((k, a, b))
        if pairs:
            values.append((torch.stack([p[1] for p in pairs]) != torch.stack([p[2] for p in pairs])).double())
        if values:
            host = torch.cat(values).tolist()  # the one synchronisation of the checks
            found.state_errors = [e if math.isfinite(e) else math.inf for e in host[:n_states]]
            changed += [k for (k, _, _), differs in zip(pairs, host[n_states:]) if differs]
        found.changed = sorted((self.eval_steps[k] for k in changed), reverse=True)
        found.evals = sum(1 for fp in self.fwd_evals if fp is not None)
        found.decisions = sum(self.eval_decisions)
        return found


class _Probed:
    """A residual function whose evaluations during a probed forward or backward are fingerprinted."""

    __slots__ = ("func", "probe")

    def __init__(self, func, probe: _Probe):
        self.func, self.probe = func, probe

    def __call__(self, t, x):
        out = self.func(t, x)
        if self.probe.phase is not None:
            self.probe.evaluation(out)
        return out


# ------------------------------------------------------------------ piecewise operations in autograd graphs


# Decisions are computed with ``sign`` and ``bool`` casts rather than comparisons: on CPUs torch's
# comparisons with a scalar run several times slower than a ``sign`` (75 against 15 us for 131k floats).
def _band(s, lo, hi):
    """Which side of ``lo`` and ``hi`` each element lies (either may be None): one code per region."""
    code = None
    for bound in (lo, hi):
        if bound is not None:
            side = torch.sign(s - bound)
            code = side if code is None else code + 2 * side
    return code


def _amax(n):
    s, r = n._saved_self, n._saved_result
    if not n._saved_keepdim:
        dims = n._saved_dim or tuple(range(s.dim()))
        for d in sorted(d % max(s.dim(), 1) for d in dims):
            r = r.unsqueeze(d)
    return torch.sign(s - r)


def _elu(n):
    if n._saved_alpha * n._saved_input_scale == 1:  # ELU, CELU: the derivative is continuous
        return None
    return torch.sign(n._saved_self)  # SELU and other scalings: a kink at 0


# The branch decisions of the piecewise operations whose derivative jumps, by autograd node type.
_DECISIONS = {
    "ReluBackward0": lambda n: n._saved_result.bool(),  # the result is >= 0: nonzero where the branch is taken
    "ReluBackward1": lambda n: n._saved_result.bool(),
    "LeakyReluBackward0": lambda n: torch.sign(n._saved_self),
    "LeakyReluBackward1": lambda n: torch.sign(n._saved_result),
    "PreluKernelBackward0": lambda n: torch.sign(n._saved_self),
    "RreluWithNoiseBackward0": lambda n: torch.sign(n._saved_self),
    "ThresholdBackward0": lambda n: _band(n._saved_self, n._saved_threshold, None),
    "HardtanhBackward0": lambda n: _band(n._saved_self, n._saved_min_val, n._saved_max_val),
    "ClampBackward0": lambda n: _band(n._saved_self, n._saved_min, n._saved_max),
    "ClampBackward1": lambda n: _band(n._saved_self, n._saved_min, n._saved_max),
    "ClampMinBackward0": lambda n: _band(n._saved_self, n._saved_min, None),
    "ClampMinBackward1": lambda n: _band(n._saved_self, n._saved_min, None),
    "ClampMaxBackward0": lambda n: _band(n._saved_self, None, n._saved_max),
    "ClampMaxBackward1": lambda n: _band(n._saved_self, None, n._saved_max),
    "AbsBackward0": lambda n: torch.sign(n._saved_self),
    "MaximumBackward0": lambda n: torch.sign(n._saved_self - n._saved_other),
    "MinimumBackward0": lambda n: torch.sign(n._saved_self - n._saved_other),
    "FmaxBackward0": lambda n: torch.sign(n._saved_self - n._saved_other),
    "FminBackward0": lambda n: torch.sign(n._saved_self - n._saved_other),
    "HardswishBackward0": lambda n: _band(n._saved_self, -3.0, 3.0),
    "HardsigmoidBackward0": lambda n: _band(n._saved_self, -3.0, 3.0),
    "HardshrinkBackward0": lambda n: _band(n._saved_self.abs(), n._saved_lambd, None),
    "SoftshrinkBackward0": lambda n: _band(n._saved_self.abs(), n._saved_lambd, None),
    "EluBackward0": _elu,
    "MaxBackward1": lambda n: torch.sign(n._saved_self - n._saved_result),
    "MinBackward1": lambda n: torch.sign(n._saved_self - n._saved_result),
    "AmaxBackward0": _amax,
    "AminBackward0": _amax,
}
# Saved tensors that are decisions themselves, whatever the node: selected indices (max-pool, max/min/sort/
# topk along a dimension, gather with a computed index) and boolean conditions (where, masked_fill).
_DECISION_ATTRS = ("_saved_indices", "_saved_index", "_saved_result1", "_saved_condition", "_saved_mask")
_EXTRACTORS: dict[type, object] = {}


def _extractor(node_type: type):
    if node_type not in _EXTRACTORS:
        named = _DECISIONS.get(node_type.__name__)
        attrs = tuple(a for a in _DECISION_ATTRS if hasattr(node_type, a))
        if named is None and attrs:
            def named(n, attrs=attrs):
                for a in attrs:
                    t = getattr(n, a)
                    if isinstance(t, torch.Tensor) and (t.dtype == torch.bool or not t.is_floating_point()):
                        return t
                return None
        _EXTRACTORS[node_type] = named
    return _EXTRACTORS[node_type]


def decisions_of(out: torch.Tensor, stop=()) -> list[torch.Tensor]:
    """The branch decisions of the piecewise operations in ``out``'s autograd graph, in a fixed graph order.

    Each is a bool, integer or sign tensor (a ReLU's active set, a max-pool's indices, a ``where``
    condition, ``sign(x - bound)`` of a clamp, ...) on which the derivative of ``out`` depends
    discontinuously. The walk stops at leaves and at the nodes in ``stop``. Nodes whose saved tensors
    cannot be read (freed, or modified in place) are skipped. Operations hidden inside an opaque node (a
    ``torch.compile``'d function) are not seen.
    """
    found: list[torch.Tensor] = []
    node = out.grad_fn
    if node is None:
        return found
    seen, stack = {node}, [node]
    with torch.no_grad():  # the decisions are values, not part of any graph
        while stack:
            node = stack.pop()
            kind = type(node)
            extract = _EXTRACTORS[kind] if kind in _EXTRACTORS else _extractor(kind)
            if extract is not None:
                try:
                    d = extract(node)
                except RuntimeError:
                    d = None
                if d is not None:
                    found.append(d)
            for nxt, _ in node.next_functions:
                if nxt is not None and nxt not in seen:
                    seen.add(nxt)
                    if not (stop and nxt in stop):
                        stack.append(nxt)
    return found
