"""The fit loop: a residual classifier on scikit-learn's digits, with a progress bar, metrics and checkpoints.

``fit(FitConfig(...))`` trains ``Dropout -> Linear -> residual stage -> Linear`` and writes, into ``config.out``:

- ``metrics.json``: final accuracies, activation memory of the residual stage, wall time, sizes, settings,
  and the per-epoch history;
- ``model.pt``: ``{"state_dict", "config", "n_features", "n_classes"}`` (reload with :func:`load_model`);
- ``curves.png``: loss and accuracy against epochs;
- ``checkpoint.pt``: everything needed to continue the run, rewritten (atomically) after every epoch; an
  interrupted run continues with :func:`resume` (``ode-momentum fit --resume DIR``) and ends with the same
  metrics as an uninterrupted one.

With ``FitConfig(distributed=True)``, launched by ``torchrun``, every process trains a
``DistributedDataParallel`` replica on its shard of each epoch and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ._checks import check_choice, check_gamma, check_positive_int, check_real
from .analysis import saved_tensor_bytes
from .data import load_digits
from ._checks import check_seed
from ._runs import (
    World,
    atomic_write,
    check_out,
    check_threads_progress,
    forked_host_rngs,
    process_group,
    remove_stale_temporaries,
    rng_states,
    set_rng_states,
    stderr_is_tty,
    torch_threads,
    torchrun_world,
)
from .gradients import GRADIENTS as _GRADIENT_REGISTRY
from .nn import MomentumResNet, NeuralODE, ResNetStack

MODELS = ("momentum", "resnet", "node")
GRADIENTS = tuple(_GRADIENT_REGISTRY)  # every mode of the registry; the first-order models only backprop
CHECKPOINT = "checkpoint.pt"  # in the run's folder, rewritten after every epoch
_CHECKPOINT_KIND = "ode_momentum.train.fit"
_CHECKPOINT_FORMAT = 1
# settings a resumed run may change: they decide how fast it runs, not what it computes
RUNTIME_SETTINGS = ("threads", "progress")


@dataclass
class FitConfig:
    """Settings of one :func:`fit` run on the digits (validated on construction).

    Raises
    ------
    TypeError, ValueError
        For an unknown ``model`` or ``gradient``, a non-positive size, ``lr <= 0``, ``weight_decay < 0``,
        ``dropout`` outside [0, 1), ``gamma`` outside [0, 1] (or 0 with a memory-free gradient), a
        gradient other than ``"backprop"`` for a first-order model, a negative seed, ``threads < 1``, or a
        ``distributed`` that is not a bool.
    """

    model: str = "momentum"  # "momentum" (MomentumResNet), "resnet" (ResNetStack) or "node" (NeuralODE)
    depth: int = 8  # residual functions (momentum, resnet) or Euler steps of the tied field (node)
    width: int = 64  # features of the residual stage (the 64 pixels are mapped to it by a Linear)
    gamma: float = 0.9  # momentum coefficient of "momentum" (the paper's value); ignored by the others
    gradient: str | None = None  # a key of ode_momentum.GRADIENTS; None: "auto" for "momentum" (exact: ReLU),
    # "backprop" for the first-order models (the only mode they have)
    epochs: int = 20  # passes over the 1437 training images; test accuracy plateaus at about 98% by 15-20
    batch_size: int = 64  # 23 AdamW steps per epoch
    lr: float = 3e-3  # peak AdamW step size, cosine-annealed to 0; 1e-3 is ~1% worse at 20 epochs
    weight_decay: float = 1e-4  # decoupled (AdamW); light, the dropout below does the regularising
    dropout: float = 0.2  # input (pixel) dropout, in [0, 1); lifts test accuracy from ~96.5% to ~98%
    seed: int = 0  # fixes the split, the initial weights, the dropout masks and the batch order
    out: Path = Path("runs/fit")  # directory for metrics.json, model.pt and curves.png (created)
    threads: int | None = 1  # torch intra-op threads during the run (restored after); None: torch's own.
    # One thread: 64-wide matrices gain nothing from more, and on a busy 2-core machine two OpenMP threads
    # ran the default fit 3-10x slower (busy-waiting for each other).
    progress: bool | None = None  # tqdm bar over epochs; None: only when stderr is a terminal
    distributed: bool = False  # DistributedDataParallel over the processes torchrun started (RANK, WORLD_SIZE,
    # LOCAL_RANK in the environment): each trains on its shard (DistributedSampler), batch_size is per process

    def __post_init__(self):
        check_choice("model", self.model, MODELS)
        check_positive_int("depth", self.depth)
        check_positive_int("width", self.width)
        if self.gradient is not None:
            check_choice("gradient", self.gradient, GRADIENTS)
        if self.model != "momentum" and self.gradient not in (None, "backprop"):
            raise ValueError(
                f"`gradient` = {self.gradient!r} needs model 'momentum'; got model {self.model!r}, a first-order "
                "model: it keeps no velocity and cannot be run backwards. Use gradient 'backprop' (or leave "
                "it unset)."
            )
        self.gamma = check_gamma(self.gamma, allow_zero=self.gradient_mode == "backprop")
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        self.lr = check_real("lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0 (the optimiser's step size); got {self.lr!r}. Try 3e-3.")
        self.weight_decay = check_real("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {self.weight_decay!r}. Use 0 to switch it off.")
        self.dropout = check_real("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"`dropout` must lie in [0, 1) (the probability of zeroing an input pixel); got {self.dropout!r}. "
                "Use 0 to switch it off."
            )
        check_seed(self.seed)
        self.out = check_out(self.out)
        check_threads_progress(self.threads, self.progress)
        if not isinstance(self.distributed, bool):
            raise TypeError(f"`distributed` must be True or False; got {self.distributed!r} "
                            f"({type(self.distributed).__name__}).")

    @property
    def gradient_mode(self) -> str:
        """The gradient actually used: ``gradient``, or its default for ``model``."""
        if self.gradient is not None:
            return self.gradient
        return "auto" if self.model == "momentum" else "backprop"

    def to_dict(self) -> dict:
        """Plain dict (``out`` as a str) that ``FitConfig(**d)`` turns back into this config."""
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d


class ResidualMLP(nn.Module):
    """Residual function ``f(x) = W2 relu(W1 x + b1) + b2``, ``(batch, width) -> (batch, width)``.

    ``W2`` starts at ``1 / sqrt(depth)`` times PyTorch's default scale and ``b2`` at 0, so that a stack of
    ``depth`` such functions starts near the identity and its output variance does not grow with depth.
    """

    def __init__(self, width: int, depth: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        with torch.no_grad():
            self.net[2].weight.mul_(depth**-0.5)
            self.net[2].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (batch, width)


class TimeIndependent(nn.Module):
    """Wrap ``f(x)`` as a force field ``F(t, x) = f(x)`` for the ODE layers."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


class Classifier(nn.Module):
    """``logits = head(stage(embed(dropout(x))))``: a residual stage between two linear maps.

    Parameters
    ----------
    stage : nn.Module
        Maps ``(batch, width)`` to ``(batch, width)`` (a residual stack or an ODE layer).
    n_features, width, n_classes : int
        Input features, features of the stage, classes.
    dropout : float
        Probability of zeroing an input feature in training mode.
    """

    def __init__(self, stage: nn.Module, n_features: int, width: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.embed = nn.Linear(n_features, width)
        self.stage = stage
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` for inputs ``x`` of shape ``(batch, n_features)``."""
        return self.head(self.stage(self.embed(self.dropout(x))))


def build_model(config: FitConfig, n_features: int, n_classes: int) -> Classifier:
    """Build ``Dropout -> Linear(n_features, width) -> stage -> Linear(width, n_classes)`` (logits).

    The stage, by ``config.model``:

    - ``"momentum"``: :class:`~ode_momentum.MomentumResNet` over ``depth`` :class:`ResidualMLP` with
      ``gamma`` and the gradient mode: ``v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)``,
      ``x_{n+1} = x_n + v_{n+1}``, ``v_0 = 0``;
    - ``"resnet"``: :class:`~ode_momentum.ResNetStack` over ``depth`` :class:`ResidualMLP`,
      ``x_{n+1} = x_n + f_n(x_n)``;
    - ``"node"``: :func:`~ode_momentum.NeuralODE`, ``x' = f(x)`` on ``[0, 1]`` with one tied
      :class:`ResidualMLP` and ``depth`` Euler steps of ``h = 1 / depth``.

    Parameters
    ----------
    config : FitConfig
    n_features, n_classes : int
        Input features and classes (64 and 10 for the digits), ``>= 1``.

    Returns
    -------
    Classifier
        Maps ``(batch, n_features)`` float32 to logits ``(batch, n_classes)``; the stage is ``.stage``.
        Initialised from the global generator: seed it (as :func:`fit` does, in a forked RNG) for
        reproducible weights.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`FitConfig` or a size is not an int.
    ValueError
        If ``n_features`` or ``n_classes`` is below 1.

    References
    ----------
    Sander, Ablin, Blondel, Peyré, ICML 2021, eq. (3) (Momentum ResNet); He et al., CVPR 2016 (ResNet);
    Chen et al., NeurIPS 2018 (neural ODE).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"`config` must be a FitConfig; got {type(config).__name__}. Use FitConfig(**settings).")
    check_positive_int("n_features", n_features)
    check_positive_int("n_classes", n_classes)
    width, depth = config.width, config.depth
    if config.model == "momentum":
        functions = [ResidualMLP(width, depth) for _ in range(depth)]
        stage = MomentumResNet(functions, config.gamma, gradient=config.gradient_mode)
    elif config.model == "resnet":
        stage = ResNetStack([ResidualMLP(width, depth) for _ in range(depth)])
    else:
        stage = NeuralODE(TimeIndependent(ResidualMLP(width)), t1=1.0, n_steps=depth)
    return Classifier(stage, n_features, width, n_classes, config.dropout)


def load_model(path) -> tuple[Classifier, FitConfig]:
    """Rebuild the model saved by :func:`fit` in ``path`` (a ``model.pt``) and return it with its config."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    config = FitConfig(**checkpoint["config"])
    model = build_model(config, checkpoint["n_features"], checkpoint["n_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    return model, config


def fit(config: FitConfig, *, checkpoint: dict | None = None) -> dict:
    """Train the classifier of ``config`` on the digits; write metrics, model, curves and checkpoint to ``config.out``.

    AdamW minimises the cross-entropy over shuffled mini-batches, with the step size cosine-annealed from
    ``lr`` to 0 over the run; train and test accuracy are measured (in eval mode) after every epoch. The
    activation memory of the residual stage is the bytes autograd saves for backward in one training-mode
    forward of the stage alone on the first training batch (``analysis.saved_tensor_bytes``; parameters
    excluded): ``O(depth)`` for backprop, independent of depth for the memory-free gradients.

    After every epoch ``checkpoint.pt`` is replaced atomically (a temporary file in the same folder, flushed,
    fsynced, renamed over the old one) by the model, the AdamW and cosine-schedule states, the state of the
    batch-order generator, every global random state (torch CPU, CUDA when training on it, numpy, Python's
    ``random``), the epoch, the history so far and the config. A run killed at any moment loses at most its
    current epoch; :func:`resume` continues it, and since every random draw of the run comes from a
    checkpointed generator, a resumed run computes what an uninterrupted one does, bit for bit (same seed,
    CPU). When the run ends the checkpoint is marked finished.

    The global random states and the thread count are restored on return: seeding happens inside
    ``torch.random.fork_rng`` and :func:`~ode_momentum._runs.forked_host_rngs`.

    With ``config.distributed``, the process must have been started by ``torchrun``: it joins the process
    group (gloo on the CPU; nccl and ``cuda:LOCAL_RANK`` when CUDA is available), wraps the model in
    ``DistributedDataParallel`` (``find_unused_parameters=False``: every gradient mode delivers a gradient
    for every parameter), and trains on its shard of each epoch from a ``DistributedSampler`` seeded with
    ``config.seed``. The initial weights are the same in every process; dropout draws from ``seed + rank``.
    The history's ``loss`` is the mean over all processes' samples. Only rank 0 writes files; every process
    returns the same metrics.

    Parameters
    ----------
    config : FitConfig
    checkpoint : dict, optional
        A checkpoint to continue from, as returned (with its config) by :func:`resumable`; use
        :func:`resume` rather than passing it by hand.

    Returns
    -------
    dict
        The content of ``metrics.json``: ``test_accuracy``, ``train_accuracy`` (fractions in [0, 1]),
        ``train_loss``, ``test_loss`` (mean cross-entropy in eval mode, nats), ``activation_bytes`` (int,
        bytes), ``train_seconds`` (wall time of the optimisation steps, s, summed over resumptions;
        evaluation excluded), ``n_parameters``, the settings (``model``, ``gradient``, ``depth``, ``width``,
        ``gamma``, ``epochs``, ``batch_size``, ``lr``, ``seed``, ...), ``world_size`` (processes; 1 unless
        distributed), ``resumed_after_epochs`` (the epoch counts at which the run was resumed; empty for an
        uninterrupted run) and ``history``, a list of per-epoch dicts with ``epoch``, ``loss`` (mean
        cross-entropy of the epoch's training batches, in train mode, nats), ``train_accuracy``,
        ``test_accuracy``.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`FitConfig`.
    ~ode_momentum._runs.DistributedEnvironmentError
        If ``config.distributed`` is set but the process was not started by ``torchrun``.
    ValueError
        If ``checkpoint`` was written by a different number of processes.
    OSError
        If ``config.out`` cannot be created or written.

    References
    ----------
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019 (AdamW); Sander et al., ICML 2021,
    section 5 (memory of Momentum ResNets against ResNets).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"`config` must be a FitConfig; got {type(config).__name__}. Use FitConfig(**settings).")
    world = torchrun_world("`distributed` = True") if config.distributed else World()
    if checkpoint is not None:
        _check_world_size(checkpoint, world, config.out)
    data = load_digits(seed=config.seed)
    out = config.out
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out / CHECKPOINT)  # left by a run killed while it saved
    cuda = [world.device] if world.device.type == "cuda" else []
    with process_group(world), torch.random.fork_rng(devices=cuda), forked_host_rngs(config.seed), \
            torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model = build_model(config, data.n_features, data.n_classes).to(world.device)
        batch_gen = torch.Generator().manual_seed(config.seed)
        split = [t.to(world.device) for t in (data.X_train, data.y_train, data.X_test, data.y_test)]
        if checkpoint is None:
            activation_bytes = _stage_activation_bytes(model, split[0][: config.batch_size])
            if world.distributed:  # the same initial weights everywhere, each process its own dropout masks
                torch.manual_seed(config.seed + world.rank)
        else:
            activation_bytes = checkpoint["activation_bytes"]
        run = _Run(config, world, model, batch_gen, activation_bytes, data.n_features, data.n_classes)
        history, train_seconds, resumed = run.train(*split[:2], *split[2:], start=checkpoint)
        train_loss, train_acc = _evaluate(model, split[0], split[1])
        test_loss, test_acc = _evaluate(model, split[2], split[3])

    metrics = {
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "activation_bytes": activation_bytes,
        "train_seconds": train_seconds,
        "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "model": config.model,
        "gradient": config.gradient_mode,
        "depth": config.depth,
        "width": config.width,
        "gamma": config.gamma if config.model == "momentum" else 0.0,  # first-order models are gamma = 0
        # the damping the forward applied: gamma, or its dyadic quantisation in the exact / auto modes
        "effective_gamma": getattr(model.stage, "effective_gamma", 0.0),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "dropout": config.dropout,
        "seed": config.seed,
        "world_size": world.world_size,
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "resumed_after_epochs": resumed,
        "history": history,
    }
    if world.is_main:
        atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2) + "\n"), mode="w")
        final = {
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "config": config.to_dict(),
            "n_features": data.n_features,
            "n_classes": data.n_classes,
        }
        atomic_write(out / "model.pt", lambda f: torch.save(final, f))
        save_curves(history, out / "curves.png", title=_title(config))
        run.save({**run.last, "finished": True})  # after every output: a finished run cannot be resumed
    return metrics


def resumable(out, /, **settings) -> tuple[FitConfig, dict]:
    """Check that ``out`` holds an interrupted :func:`fit` run; return the config to continue it and its checkpoint.

    The config is the one stored in ``out/checkpoint.pt`` with ``out`` set to the folder given (it may have
    been moved). ``settings`` may repeat stored settings (a no-op) or change the runtime ones
    (:data:`RUNTIME_SETTINGS`: ``threads``, ``progress``); any other change would not continue the same run.

    Parameters
    ----------
    out : str or Path
        The run's folder (``FitConfig.out`` of the interrupted run).
    **settings
        Fields of :class:`FitConfig` other than ``out``.

    Returns
    -------
    (FitConfig, dict)
        Hand both to ``fit(config, checkpoint=...)``; :func:`resume` does.

    Raises
    ------
    FileNotFoundError
        If ``out`` is not a folder or holds no ``checkpoint.pt`` (the run stopped before its first epoch
        ended, or never ran): start it afresh.
    ValueError
        If the checkpoint is unreadable or not one of :func:`fit`, if the run already finished, if a setting
        differs from the stored one, or if the run was distributed over a number of processes other than
        this launch's.
    TypeError
        If ``out`` is not a path or ``settings`` names no field of :class:`FitConfig` (or names ``out``).
    ~ode_momentum._runs.DistributedEnvironmentError
        If the stored run was distributed and this process was not started by ``torchrun``.
    """
    out = check_out(out)
    fields = {f.name for f in dataclasses.fields(FitConfig)} - {"out"}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(map(repr, unknown))} for resuming; expected some of "
                        f"{sorted(fields)}. The folder is the first argument.")
    checkpoint = read_checkpoint(out)
    stored = FitConfig(**{**checkpoint["config"], "out": out})
    if checkpoint["finished"]:
        raise ValueError(
            f"{str(out)!r} holds a finished run ({checkpoint['epoch']} of {stored.epochs} epochs; metrics.json, "
            "model.pt and curves.png are written): there is nothing to resume. To train longer, start a new run "
            "with more `epochs` in another folder; to redo this one, run it again without resuming."
        )
    try:
        wanted = FitConfig(**{**checkpoint["config"], **settings, "out": out})
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} (while resuming {str(out)!r})") from None
    conflicts = []
    for name in settings:
        if name in RUNTIME_SETTINGS:
            continue
        # gradient None means the model's default: compare the mode actually used
        attr = "gradient_mode" if name == "gradient" else name
        if getattr(wanted, attr) != getattr(stored, attr):
            conflicts.append(f"`{name}` = {getattr(wanted, attr)!r} (the run has {getattr(stored, attr)!r})")
    if conflicts:
        raise ValueError(
            f"resuming {str(out)!r} continues the run with the settings stored in its checkpoint; "
            f"{'; '.join(conflicts)}. Leave {'it' if len(conflicts) == 1 else 'them'} out to resume, or start "
            f"a new run in another folder to train with different settings."
        )
    if wanted.distributed:
        _check_world_size(checkpoint, torchrun_world("resuming a distributed run"), out)
    elif checkpoint["world_size"] != 1:  # pragma: no cover - a distributed checkpoint stores distributed=True
        raise ValueError(f"{str(out)!r} was trained by {checkpoint['world_size']} processes but is not marked "
                         "distributed; it cannot be resumed.")
    return wanted, checkpoint


def resume(out, /, **settings) -> dict:
    """Continue the interrupted :func:`fit` run in ``out`` from its last checkpoint; return its metrics.

    ``resume(out)`` is ``fit(*resumable(out))``: see :func:`resumable` for the ``settings`` it accepts and
    the errors it raises. The run ends with the same metrics, history and model as if it had not been
    interrupted (``train_seconds`` sums both parts; ``resumed_after_epochs`` records the restart).
    """
    config, checkpoint = resumable(out, **settings)
    return fit(config, checkpoint=checkpoint)


def read_checkpoint(out) -> dict:
    """Load ``out/checkpoint.pt`` (on the CPU, ``weights_only``) and check that :func:`fit` wrote it.

    Keys: ``config`` (``FitConfig.to_dict()``), ``epoch`` (epochs completed), ``finished``, ``world_size``,
    ``model``, ``optimizer``, ``scheduler`` (state dicts), ``batch_generator`` (state of the batch-order
    generator), ``rng`` (one :func:`~ode_momentum._runs.rng_states` dict per process), ``history``,
    ``train_seconds``, ``activation_bytes``, ``resumed_after_epochs``, ``n_features``, ``n_classes``.

    Raises
    ------
    FileNotFoundError
        If ``out`` is not a folder or has no ``checkpoint.pt``.
    ValueError
        If the file cannot be read or is not a checkpoint of :func:`fit` in this format.
    """
    out = check_out(out)
    path = out / CHECKPOINT
    if not out.is_dir():
        raise FileNotFoundError(f"cannot resume {str(out)!r}: no such folder. Give the `out` folder of the run.")
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume {str(out)!r}: it holds no {CHECKPOINT}. `fit` writes one at the end of every epoch, "
            "so the run there stopped before its first epoch ended (or never ran): start it afresh with the same "
            "settings."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any failure to unpickle means the same to the user
        # torch's own message (chained below) suggests weights_only=False, which is no cure for a damaged file
        raise ValueError(f"cannot resume from {str(path)!r}: it cannot be read as a torch checkpoint "
                         f"({type(err).__name__}); it is damaged or not a checkpoint. Start the run afresh.") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != _CHECKPOINT_KIND:
        raise ValueError(f"cannot resume from {str(path)!r}: it is not a checkpoint of `ode-momentum fit`.")
    if checkpoint.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"cannot resume from {str(path)!r}: checkpoint format {checkpoint.get('format')!r}, this "
                         f"version reads format {_CHECKPOINT_FORMAT}. Start the run afresh.")
    return checkpoint


def _check_world_size(checkpoint: dict, world: World, out) -> None:
    if checkpoint["world_size"] != world.world_size:
        raise ValueError(
            f"{str(out)!r} was trained by {checkpoint['world_size']} process(es); this launch has "
            f"{world.world_size}. Resume it with as many, e.g. `torchrun --nproc_per_node "
            f"{checkpoint['world_size']} -m ode_momentum.cli fit --resume {out}`: each process continues its "
            "own shard and random streams."
        )


class _Run:
    """The optimisation of one :func:`fit` run: its loop, and the checkpoint it saves after every epoch."""

    def __init__(self, config: FitConfig, world: World, model: Classifier, gen: torch.Generator,
                 activation_bytes: int, n_features: int, n_classes: int):
        self.config, self.world, self.model, self.gen = config, world, model, gen
        self.fixed = {"activation_bytes": activation_bytes, "n_features": n_features, "n_classes": n_classes}
        self.last: dict | None = None  # the latest checkpoint saved (or resumed from)

    def train(self, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
              start: dict | None = None) -> tuple[list[dict], float, list[int]]:
        """Train in place from scratch or from the checkpoint ``start``; return history, seconds, resumptions."""
        config, world, model = self.config, self.world, self.model
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        n = len(y)
        sampler = None
        if world.distributed:
            from torch.utils.data import DistributedSampler

            # pads each epoch to a multiple of the world size; the shard order depends on (seed, epoch) only
            sampler = DistributedSampler(range(n), num_replicas=world.world_size, rank=world.rank, shuffle=True,
                                         seed=config.seed)
        n_local = len(sampler) if sampler is not None else n
        steps_per_epoch = -(-n_local // config.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
        history, seconds, resumed, first = [], 0.0, [], 1
        if start is not None:
            model.load_state_dict(start["model"])
            optimizer.load_state_dict(start["optimizer"])
            schedule.load_state_dict(start["scheduler"])
            self.gen.set_state(start["batch_generator"])
            set_rng_states(start["rng"][world.rank], world.device)
            history, seconds = list(start["history"]), start["train_seconds"]
            resumed = [*start["resumed_after_epochs"], start["epoch"]]
            first = start["epoch"] + 1
            self.last = start
        trainer = model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [world.device.index] if world.device.type == "cuda" else None
            trainer = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
        show = (config.progress if config.progress is not None else stderr_is_tty()) and world.is_main
        bar = tqdm(range(first, config.epochs + 1), desc=f"fit {config.model}", unit="epoch", disable=not show,
                   initial=first - 1, total=config.epochs)
        with contextlib.closing(bar):
            for epoch in bar:
                model.train()
                begin = time.perf_counter()
                total = 0.0
                if sampler is None:
                    order = torch.randperm(n, generator=self.gen)
                else:
                    sampler.set_epoch(epoch)
                    order = torch.tensor(list(sampler))
                for idx in order.to(X.device).split(config.batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(trainer(X[idx]), y[idx])
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total += loss.item() * len(idx)
                seconds += time.perf_counter() - begin
                mean_loss = total / n if sampler is None else _global_mean(total, n_local, X.device)
                _, train_acc = _evaluate(model, X, y)
                _, test_acc = _evaluate(model, X_test, y_test)
                record = {"epoch": epoch, "loss": mean_loss, "train_accuracy": train_acc, "test_accuracy": test_acc}
                history.append(record)
                self.save(self._checkpoint(epoch, optimizer, schedule, history, seconds, resumed))
                bar.set_postfix(loss=f"{record['loss']:.4f}", train=f"{train_acc:.3f}", test=f"{test_acc:.3f}")
        return history, seconds, resumed

    def _checkpoint(self, epoch, optimizer, schedule, history, seconds, resumed) -> dict:
        states = rng_states(self.world.device)
        if self.world.distributed:  # every process's random streams, so each continues its own
            gathered = [None] * self.world.world_size
            torch.distributed.all_gather_object(gathered, states)
            states = gathered
        else:
            states = [states]
        return {
            "kind": _CHECKPOINT_KIND,
            "format": _CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": epoch,
            "finished": False,
            "world_size": self.world.world_size,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "batch_generator": self.gen.get_state(),
            "rng": states,
            "history": list(history),
            "train_seconds": seconds,
            "resumed_after_epochs": list(resumed),
            **self.fixed,
        }

    def save(self, checkpoint: dict) -> None:
        """Replace ``out/checkpoint.pt`` by ``checkpoint`` atomically (rank 0 only)."""
        self.last = checkpoint
        if self.world.is_main:
            atomic_write(self.config.out / CHECKPOINT, lambda f: torch.save(checkpoint, f))


def _global_mean(total: float, count: int, device: torch.device) -> float:
    """``sum(total) / sum(count)`` over the processes of the group."""
    t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t[0] / t[1])


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` on ``(X, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        logits = model(X)
    finally:
        model.train(was_training)
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, int((logits.argmax(dim=1) == y).sum()) / len(y)


def _stage_activation_bytes(model: Classifier, X: torch.Tensor) -> int:
    """Bytes saved for backward by the residual stage alone, on the embedded batch ``X``, in train mode."""
    model.train()
    with torch.no_grad():
        x0 = model.embed(X)  # (batch, width)
    return saved_tensor_bytes(model.stage, x0.requires_grad_())


def save_curves(history: list[dict], path, *, title: str = "") -> None:
    """Plot the training loss and the train / test accuracy of ``history`` against epochs into ``path``.

    Uses matplotlib's object API with the Agg canvas, so the global backend and ``pyplot`` state are left
    alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["loss"] for r in history], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="train cross-entropy (nats)", yscale="log")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], marker=".", label="train")
    ax_acc.plot(epochs, [r["test_accuracy"] for r in history], marker=".", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.savefig(Path(path), dpi=100)


def _title(config: FitConfig) -> str:
    gamma = f", gamma={config.gamma:g}" if config.model == "momentum" else ""
    return f"{config.model} (depth {config.depth}, width {config.width}{gamma}, {config.gradient_mode})"




