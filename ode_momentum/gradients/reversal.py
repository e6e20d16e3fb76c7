"""The engine of the memory-free gradient modes: a solve whose backward runs the integrator in reverse.

Forward: the solve runs under ``no_grad`` on an *encoded* state (the float state itself, or int64 fixed
point for the exact mode); only the final state and what the state system asks for are saved. Backward, for
``n = N-1 .. 0``:

1. ``inverse_step`` reconstructs the encoded state of step ``n``. Each residual evaluation it makes is
   recorded with its graph, on a detached float copy of its input, under the RNG state of the matching
   forward evaluation. The forward evaluated the residual the same way (autograd on, input requiring
   grad, value detached at once), so kernels that depend on grad mode take the same path both times.
2. The same call pulls the adjoint ``(a_x, a_v)`` back: its arithmetic (``_Adjoint``) applies, at each
   primitive it undoes, the transpose of that primitive, and at each kick one vector-Jacobian product
   through the recorded residual. A step costs one evaluation and one vector-Jacobian product of ``F`` on
   top of the forward, and no recomputation of the step.
3. Parameter gradients are accumulated and returned from the autograd Function once, so every parameter's
   gradient hook fires once per backward.

A *state system* (float reversal, checkpointed float reversal, exact fixed point) decides how the state is
encoded, which arithmetic the steps use, what is saved, and which integrity checks run; it knows nothing of
autograd. The engine knows nothing of number formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import internal_assert
from . import native
from .replay_state import (
    AutocastState,
    ModuleMembers,
    RNGLog,
    buffers_unchanged,
    module_members,
    parameters_rebound,
)
from .trajectory import Trajectory, check_residual, run_forward, stack_outputs


def check_reversible(integrator, hs, mode: str) -> None:
    """Raise ``ValueError`` unless ``integrator`` can be reversed at every step length in ``hs``."""
    if not integrator.reversible:
        raise ValueError(
            f'gradient="{mode}" needs a reversible integrator; {integrator.name!r} is not (it forgets the '
            'velocity). Use gradient="backprop", or a momentum scheme with eps > 0.'
        )
    for h in set(hs):
        for s in (h, 0.5 * h):
            if integrator.damping(s) <= 0.0:
                raise ValueError(
                    f'gradient="{mode}" cannot reverse a step whose damping factor is 0 ({integrator!r}, '
                    f'h = {h}): the inverse divides by it. gamma = 0 (or eps = 0) is a plain ResNet / '
                    'first-order ODE; use gradient="backprop" there.'
                )


def solve_with_reversal(traj: Trajectory, x0: torch.Tensor, v0: torch.Tensor, system):
    """Integrate ``traj`` with a memory-free gradient; ``system`` is the state system (see module doc).

    Returns the time-first ``(xs, vs)`` in the dtype of ``x0``.
    """
    members = module_members(traj.root)
    params = [p for p in members.parameters if p.requires_grad]  # unique, tied weights once
    inputs = params + list(traj.extras)
    needs_grad = torch.is_grad_enabled() and (
        x0.requires_grad or v0.requires_grad or any(t.requires_grad for t in inputs)
    )
    if torch.is_grad_enabled() and not needs_grad:
        _refuse_hidden_grad(traj, x0)
    if not needs_grad:  # inference: the same arithmetic as training, nothing kept for a backward
        with torch.no_grad():
            X, V = system.encode(x0, v0)
            xs, vs = run_forward(traj, X, V, ops=system.inference_ops(), decode=system.decode)
            system.end_forward()
        return _decoded(system, xs), _decoded(system, vs)
    return _ReversalSolve.apply(_Run(traj, params, members, system), x0, v0, *inputs)


def _refuse_hidden_grad(traj: Trajectory, x0: torch.Tensor) -> None:
    """Nothing declared needs a gradient: make sure the first residual does not read a tensor that does."""
    devices = [x0.device] if x0.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), buffers_unchanged(traj.root):
        out = traj.funcs[0](traj.spans[0].t0, x0)
    if isinstance(out, torch.Tensor) and out.requires_grad:
        _GradSink([]).leaves_of(out, x0, 0)  # raises, naming the tensor
        internal_assert(False, "a graph without leaves")


class _Run:
    """Non-tensor context of one forward (what the backward needs besides the saved tensors)."""

    def __init__(self, traj: Trajectory, params: list[torch.Tensor], members: ModuleMembers, system):
        self.traj = traj
        self.params = params  # the root's trainable parameters, in the order of the Function's inputs
        self.members = members  # the root's parameter slots and buffers, found once for forward and backward
        self.system = system
        self.rng: RNGLog | None = None
        self.autocast: AutocastState | None = None


def _decoded(system, states):
    return stack_outputs([system.decode(s) for s in states])


class _ReversalSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: _Run, x0, v0, *inputs):
        system = run.system
        run.rng = RNGLog(x0, enabled=system.options.replay_rng)
        run.autocast = AutocastState(x0.device.type)
        X, V = system.encode(x0, v0)
        ops = system.training_ops(V)
        xs, vs = run_forward(
            run.traj, X, V, on_eval=run.rng.record, ops=ops, on_step=system.on_step, decode=system.decode,
            as_recorded=True,
        )
        system.end_forward()
        ctx.run = run
        ctx.save_for_backward(xs[-1], vs[-1], *system.tensors_to_save(x0, v0))
        return _decoded(system, xs), _decoded(system, vs)

    @staticmethod
    def backward(ctx, grad_xs, grad_vs):
        if torch.is_grad_enabled():  # create_graph=True: a gradient of the gradient was asked for
            raise RuntimeError(
                "a memory-free gradient mode cannot be differentiated twice (create_graph=True, e.g. for a "
                "gradient penalty or a Hessian-vector product): its backward recomputes the states outside "
                'autograd, so the returned gradient would carry no graph and the second derivative would be '
                'silently missing. Use gradient="backprop" for double backward.'
            )
        run: _Run = ctx.run
        X, V, *saved = ctx.saved_tensors
        reverse = run.system.start_backward(saved)
        with torch.no_grad():
            aliases = [p.detach().requires_grad_() for p in run.params]
        sink = _GradSink(aliases + list(run.traj.extras))
        root, members = run.traj.root, run.members
        rebound = parameters_rebound(root, {id(p): a for p, a in zip(run.params, aliases)}, members.slots)
        with run.rng.fork(), buffers_unchanged(root, members.buffers), run.autocast(), rebound:
            X, V, ax, av = _sweep(run, reverse, X, V, grad_xs, grad_vs, sink)
        reverse.finish(X, V)
        grads = sink.result()
        internal_assert(len(grads) == len(ctx.needs_input_grad) - 3, "one gradient per differentiable input")
        return (None, ax, av, *grads)


def _sweep(run: _Run, reverse, X, V, grad_xs, grad_vs, sink):
    """The reverse sweep; returns the reconstructed initial state and the adjoints of ``x_0`` and ``v_0``."""
    traj = run.traj
    saves = list(traj.save_at)
    k = len(saves) - 1
    adjoint = _Adjoint(reverse.ops, grad_xs[k], grad_vs[k], sink)
    k -= 1
    recorder = _Recorder(run.rng, sink, run.system.decode, adjoint, reverse)
    with torch.no_grad():  # the recorder turns autograd on for the residual evaluations only
        for n in range(traj.n_steps - 1, -1, -1):
            recorder.begin_step(traj.funcs[n], n)
            X, V = traj.integrator.inverse_step(recorder, X, V, traj.spans[n], ops=adjoint)
            X_n, V_n = reverse.after_inverse(n, X, V)
            if X_n is not X or V_n is not V:  # a restart from a stored state (checkpoints)
                recorder.state_replaced()
            X, V = X_n, V_n
            if k >= 0 and saves[k] == n:
                adjoint.ax = adjoint.ax + grad_xs[k]
                adjoint.av = adjoint.av + grad_vs[k]
                k -= 1
    internal_assert(recorder.n_evals == len(run.rng), "the backward replays every forward evaluation once")
    return X, V, adjoint.ax, adjoint.av


try:  # the engine entry point behind torch.autograd.grad (torch >= 2.3)
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older torch
    _engine_run_backward = None


def vjp(out: torch.Tensor, wrt: list[torch.Tensor], cotangent: torch.Tensor) -> tuple:
    """``torch.autograd.grad(out, wrt, cotangent, retain_graph=True, allow_unused=True)``, same values.

    For plain tensors the engine is called directly, skipping ``grad``'s argument normalisation
    (``_make_grads``: a symbolic-shape comparison that costs about as much as the backward of a small
    residual); the cotangent is built by the caller with ``out``'s shape, and cast here to its dtype as the
    engine would. Tensor subclasses and older torch take ``torch.autograd.grad`` itself.
    """
    if (_engine_run_backward is None or type(out) is not torch.Tensor or type(cotangent) is not torch.Tensor
            or cotangent.shape != out.shape):
        return torch.autograd.grad(out, wrt, cotangent, retain_graph=True, allow_unused=True)
    if cotangent.dtype != out.dtype:
        cotangent = cotangent.to(out.dtype)
    return _engine_run_backward((out,), (cotangent,), True, False, tuple(wrt), True, accumulate_grad=False)


class _Adjoint:
    """Arithmetic for ``inverse_step`` that also pulls the adjoint back through every primitive it undoes.

    ``inverse_step`` undoes a step's sub-flows in reverse order, which is the order reverse-mode
    differentiation visits them, so each inverse primitive applies the transpose of its forward primitive to
    the adjoint ``(ax, av)``: ``damp`` (``v <- g v``) gives ``av <- g av``; ``kick`` (``v <- v + c f``) gives
    the cotangent ``c av`` of ``f``, pulled through the recorded residual graph into ``ax`` and the
    parameters; ``drift`` (``x <- x + h v``) gives ``av <- av + h ax``. The products are autograd's own
    (a tensor times the same Python scalar), so the gradient equals autograd's through the forward
    recurrence evaluated at the reconstructed states.
    """

    def __init__(self, inverse_ops, ax, av, sink: "_GradSink"):
        self.inv = inverse_ops
        self._ax, self._av = ax, av
        self._pending: tuple | None = None  # (gx, g): ax is _ax + gx and av is _av * g, not yet computed
        self.sink = sink
        self.records: dict[int, tuple] = {}  # id of a residual value handed to inverse_step -> its record

    # An undone damped kick leaves ``ax + gx`` and ``g av`` pending; an undone drift right after computes them
    # with its own ``av + h ax`` in one native pass (native.adjoint_undrift, same bits). Any other access first
    # computes them with the torch operations.
    def _flush(self) -> None:
        if self._pending is not None:
            gx, g = self._pending
            self._pending = None
            if gx is not None:
                self._ax = self._ax + gx
            self._av = self._av * g

    @property
    def ax(self) -> torch.Tensor:
        self._flush()
        return self._ax

    @ax.setter
    def ax(self, value: torch.Tensor) -> None:
        self._flush()
        self._ax = value

    @property
    def av(self) -> torch.Tensor:
        self._flush()
        return self._av

    @av.setter
    def av(self, value: torch.Tensor) -> None:
        self._flush()
        self._av = value

    def coefficient(self, g):
        return self.inv.coefficient(g)

    def undamp(self, v, g):
        self.av = self.av * g
        return self.inv.undamp(v, g)

    def unkick(self, v, c, f):
        gx = self._pull_through_residual(c, f)
        if gx is not None:
            self.ax = self.ax + gx
        return self.inv.unkick(v, c, f)

    def unkick_undamp(self, v, c, f, g):
        gx = self._pull_through_residual(c, f)
        self._pending = (gx, g)
        return self.inv.unkick_undamp(v, c, f, g)

    def _pull_through_residual(self, c, f):
        """The kick's transpose: the cotangent ``c av`` of ``f``, through the recorded graph; the parameters'
        gradients go to the sink, the state's (or ``None``) is returned."""
        value, rec = self.records[id(f)]
        internal_assert(value is f, "kicks use the residual values the recorder handed out")
        if not rec.out.requires_grad:
            return None
        wrt = [rec.xd] + [self.sink.leaves[i] for i in rec.leaves]
        grads = vjp(rec.out, wrt, self.av * c)
        self.sink.add(rec.leaves, grads[1:])
        return grads[0]

    def undrift(self, x, h, v):
        fused = None
        if self._pending is not None and self._pending[0] is not None:
            gx, g = self._pending
            fused = native.adjoint_undrift(self._ax, gx, self._av, g, h)  # None where it does not apply
        if fused is not None:
            self._pending = None
            self._ax, self._av = fused
        else:
            self.av = self.av + (self.ax if h == 1.0 else self.ax * h)
        return self.inv.undrift(x, h, v)


@dataclass
class _Record:
    t: torch.Tensor
    xd: torch.Tensor  # detached leaf the residual was evaluated at
    out: torch.Tensor  # residual output, with its graph back to xd and the parameters
    leaves: list  # indices into the sink's leaves that `out` depends on


class _Recorder:
    """The ``func`` handed to ``inverse_step``: evaluates with graph, replays RNG, reuses the last call.

    The reuse is :class:`~ode_momentum.integrators.LastCall`'s rule (same ``t`` and ``x`` objects, same
    value), kept inline: a ``LastCall`` of the bound ``self._evaluate`` stored on ``self`` would be a
    reference cycle, and every recorder with its last graph would then wait for the cyclic garbage
    collector, whose full passes cost milliseconds.

    When the state system replaces the state between steps (a restart from a checkpoint), a scheme that
    reuses its last evaluation (leapfrog: ``F(t_n, x_n)`` ends step ``n - 1`` and starts step ``n``) asks for
    ``F`` at the same time again, at the stored state. That is the forward's same evaluation, recomputed: it
    replays that evaluation's RNG state and is neither counted nor fingerprinted as another one (the state
    system's ``evaluating_again()``).
    """

    def __init__(self, rng: RNGLog, sink: "_GradSink", decode, adjoint: _Adjoint, reverse):
        self.rng = rng
        self.sink = sink
        self.decode = decode
        self.adjoint = adjoint
        self.reverse = reverse
        self.n_evals = 0
        self._func = None
        self._key: tuple | None = None  # (t, x) of the last evaluation of self._func
        self._last: _Record | None = None
        self._replaced = False  # the state system replaced the state since the last call

    def begin_step(self, func, n):
        if func is not self._func:
            self._func = func
            self._key = self._last = None
        self._step = n
        self.adjoint.records.clear()

    def state_replaced(self) -> None:
        self._replaced = True

    def __call__(self, t, x):
        key = self._key
        if key is None or key[0] is not t or key[1] is not x:
            if self._replaced and key is not None and key[0] is t:
                with self.reverse.evaluating_again():
                    self._evaluate(t, x, self.n_evals - 1)
            else:
                self._evaluate(t, x, self.n_evals)
                self.n_evals += 1
            self._key = (t, x)
        self._replaced = False
        value = self._last.out.detach()
        self.adjoint.records[id(value)] = (value, self._last)
        return value

    def _evaluate(self, t, x, j: int) -> None:
        """Record the backward's ``j``-th evaluation, which recomputes the forward's ``K-1-j``-th."""
        self.rng.restore(len(self.rng) - 1 - j)
        xd = self.decode(x).detach().requires_grad_()
        with torch.enable_grad():
            out = check_residual(self._func(t, xd), xd, self._step)
        self._last = _Record(t, xd, out, self.sink.leaves_of(out, xd, self._step))


_HOLDS_VARIABLE: dict[type, bool] = {}  # graph node type -> whether it is a leaf accumulator (has .variable)


class _GradSink:
    """Accumulates gradients of the differentiable inputs (parameter aliases, extra tensors)."""

    def __init__(self, leaves: list[torch.Tensor]):
        self.leaves = leaves
        self._index = {id(t): i for i, t in enumerate(leaves)}
        self._nodes = {}
        for i, t in enumerate(leaves):
            if t.grad_fn is not None:  # a non-leaf extra: stop the graph walk at its node
                self._nodes[(t.grad_fn, t.output_nr)] = i
        self._grads: list[torch.Tensor | None] = [None] * len(leaves)

    def leaves_of(self, out: torch.Tensor, xd: torch.Tensor, step: int) -> list[int]:
        """Indices of the inputs that ``out`` depends on; raise if it depends on any other tensor.

        A tensor that requires grad but is neither the state, a parameter of the layer nor a declared extra
        would silently get no gradient in a memory-free mode: that is refused here. The walk runs once per
        recorded evaluation, so it is kept lean: leaf accumulators are recognised by their type (cached; an
        attribute lookup on every other node would raise and catch), and edges into non-leaf extras are
        looked up only when there are such extras.
        """
        root = out.grad_fn
        if root is None:
            return []
        holds, index, extra_nodes = _HOLDS_VARIABLE, self._index, self._nodes
        found, seen, stack = set(), {root}, [root]
        while stack:
            node = stack.pop()
            kind = type(node)
            is_leaf = holds.get(kind)
            if is_leaf is None:
                is_leaf = holds[kind] = hasattr(node, "variable")
            if is_leaf:
                variable = node.variable
                if variable is xd:
                    continue
                i = index.get(id(variable))
                if i is None:
                    raise RuntimeError(
                        f"the residual function of step {step} reads a tensor of shape "
                        f"{tuple(variable.shape)} that requires grad but is not one of its module's "
                        "registered parameters nor a declared input, so a memory-free gradient mode would "
                        "silently drop its gradient. Register it as an nn.Parameter of the function, pass it "
                        'through `params=`, or use gradient="backprop".'
                    )
                found.add(i)
                continue
            for edge in node.next_functions:
                nxt = edge[0]
                if nxt is None:
                    continue
                if extra_nodes:
                    i = extra_nodes.get(edge)
                    if i is not None:  # a non-leaf extra: the walk stops at its node
                        found.add(i)
                        continue
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return sorted(found)

    def add(self, idx: list[int], grads) -> None:
        for i, g in zip(idx, grads):
            if g is not None:
                self._grads[i] = g if self._grads[i] is None else self._grads[i] + g

    def result(self) -> list[torch.Tensor]:
        # zeros, never None, for unused trainable inputs: DDP with find_unused_parameters=False needs them.
        return [torch.zeros_like(t) if g is None else g for t, g in zip(self.leaves, self._grads)]
