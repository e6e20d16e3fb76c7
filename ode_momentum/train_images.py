"""Image classification with ResNets, plain or Momentum: fit, fine-tune a converted checkpoint, reload.

``fit_images(ImageFitConfig(...))`` trains an ``ode_momentum.models`` ResNet on the digits (native 8x8 or
upsampled) or on CIFAR-10/100 read from a local copy, and writes into ``config.out``:

- ``metrics.json``: final accuracies and losses, activation memory, wall time, sizes, settings, per-epoch
  history;
- ``model.pt``: ``{"state_dict", "config", "n_classes", "image_shape"}`` (reload with
  :func:`load_image_model`);
- ``curves.png``: loss and accuracy against epochs.

``finetune(FinetuneConfig(...))`` converts such a checkpoint (a plain ResNet, or a momentum one at another
gamma) to a Momentum ResNet at ``gamma`` and refits it for a few epochs. The command line is
``ode-momentum fit --arch ...`` and ``ode-momentum finetune ...``.
"""

from __future__ import annotations

import argparse
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
from .convert import to_momentum, with_gamma
from .data.cifar import load_cifar
from .data.images import ImageSplit, load_digit_images
from .data.rings import check_seed
from .gradients import GRADIENTS as _GRADIENT_REGISTRY
from .models import ARCHS, STAGES, STEMS, resnet
from .nn import MomentumResNet
from ._runs import check_out, check_threads_progress, stderr_is_tty, torch_threads
from .train import save_curves

DATASETS = ("digits", "cifar10", "cifar100")
MODELS = ("momentum", "resnet")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = ("none", "crop", "crop+flip")
GRADIENTS = tuple(_GRADIENT_REGISTRY)

# Per-dataset defaults of the settings left at None. CIFAR: the paper's recipe (Sander et al. 2021,
# section 5 and appendix: SGD with momentum 0.9, weight decay 5e-4, batch 128, 220 epochs, random crops with
# 4 pixels of padding and horizontal flips), with the step schedule of He et al. 2016 (lr 0.1, divided by 10
# at 50% and 75% of the epochs). Digits: the same recipe, shorter and narrower (1437 training images of 8x8
# pixels; 20 epochs of a width-32 ResNet-18 measured, seeds 0-2, test accuracy 97.8/98.1/98.6% plain and
# 98.6/98.6/99.2% momentum), and crops by 1 pixel without flips (a flipped digit is another symbol).
_DEFAULTS = {
    "digits": dict(width=32, epochs=20, batch_size=64, augment="crop", image_size=8, crop_padding=1),
    "cifar10": dict(width=64, epochs=220, batch_size=128, augment="crop+flip", image_size=32, crop_padding=4),
    "cifar100": dict(width=64, epochs=220, batch_size=128, augment="crop+flip", image_size=32, crop_padding=4),
}
_DEFAULT_LR = {"sgd": 0.1, "adamw": 3e-3}
EVAL_BATCH = 500  # images per forward pass when measuring accuracy (bounds the memory of evaluation)


@dataclass
class ImageFitConfig:
    """Settings of one :func:`fit_images` run (validated on construction; ``None`` picks the dataset's default).

    Raises
    ------
    TypeError, ValueError
        For an unknown ``arch``, ``model``, ``dataset``, ``stem``, ``optimizer``, ``augment`` or ``gradient``;
        ``gamma`` outside [0, 1] (or 0 with a memory-free gradient); a gradient other than ``"backprop"`` for
        the plain ResNet; a CIFAR set without ``data_dir``; an ``image_size`` other than 32 for CIFAR; a
        non-positive size; ``lr <= 0``; ``weight_decay < 0``; ``sgd_momentum`` or ``lr_decay`` outside
        [0, 1); milestones outside (0, 1) or not increasing; a negative seed.
    """

    arch: str = "resnet18"  # one of ode_momentum.models.ARCHS
    model: str = "momentum"  # "momentum": first block of each stage kept, the rest one MomentumResNet; "resnet"
    gamma: float = 0.9  # momentum coefficient of the momentum stages (the paper's value)
    gradient: str | None = None  # None: "exact" for "momentum" (memory-free, exact), "backprop" for "resnet"
    dataset: str = "digits"  # "digits" (ships with scikit-learn), "cifar10" or "cifar100" (needs data_dir)
    data_dir: Path | None = None  # folder of the CIFAR python pickles (nothing is downloaded)
    image_size: int | None = None  # digits: 8 (native) or more (bilinear upsampling); CIFAR: 32
    stem: str = "cifar"  # "cifar": 3x3 convolution, no max-pool (small images); "imagenet": 7x7 + max-pool
    width: int | None = None  # channels of layer1 (torchvision: 64); digits 32, CIFAR 64
    epochs: int | None = None  # digits 20, CIFAR 220 (the paper)
    batch_size: int | None = None  # digits 64, CIFAR 128 (the paper)
    optimizer: str = "sgd"  # "sgd" (with momentum `sgd_momentum`, the paper) or "adamw"
    lr: float | None = None  # initial step size; sgd 0.1, adamw 3e-3
    sgd_momentum: float = 0.9  # heavy-ball coefficient of SGD (the paper's 0.9); unused by adamw
    weight_decay: float = 5e-4  # L2 penalty of SGD / decoupled decay of AdamW (the paper's 5e-4)
    milestones: tuple = (0.5, 0.75)  # fractions of the epochs after which lr is multiplied by lr_decay
    lr_decay: float = 0.1  # factor of the step schedule
    augment: str | None = None  # "crop+flip" (CIFAR), "crop" (digits) or "none"
    crop_padding: int | None = None  # pixels of zero padding before the random crop: CIFAR 4, digits 1
    n_train: int | None = None  # use only the first n_train training images (quick runs); None: all
    seed: int = 0  # fixes the split, the weights, the batches and the augmentation
    out: Path = Path("runs/fit-images")  # directory for metrics.json, model.pt and curves.png (created)
    threads: int | None = 1  # torch intra-op threads during the run (restored after); None: torch's own
    progress: bool | None = None  # tqdm bar over epochs; None: only when stderr is a terminal

    def __post_init__(self):
        check_choice("arch", self.arch, ARCHS)
        check_choice("model", self.model, MODELS)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("stem", self.stem, STEMS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.gradient is not None:
            check_choice("gradient", self.gradient, GRADIENTS)
        if self.model == "resnet" and self.gradient not in (None, "backprop"):
            raise ValueError(
                f"`gradient` = {self.gradient!r} needs model 'momentum'; the plain ResNet keeps no velocity and "
                "cannot be run backwards. Use gradient 'backprop' (or leave it unset)."
            )
        self.gamma = check_gamma(self.gamma, allow_zero=self.gradient_mode == "backprop")
        defaults = _DEFAULTS[self.dataset]
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lr is None:
            self.lr = _DEFAULT_LR[self.optimizer]
        check_choice("augment", self.augment, AUGMENTS)
        for name in ("width", "epochs", "batch_size", "image_size"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"`crop_padding` must be an int >= 0; got {self.crop_padding!r}.")
        if self.dataset == "digits":
            if self.image_size < 8:
                raise ValueError(f"`image_size` must be >= 8 for the digits (8x8 images); got {self.image_size}.")
            if self.data_dir is not None:
                raise ValueError("`data_dir` is for CIFAR; the digits ship with scikit-learn. Leave it unset.")
        else:
            if self.image_size != 32:
                raise ValueError(f"`image_size` must be 32 for {self.dataset} (no resizing); got {self.image_size}.")
            if self.data_dir is None:
                raise ValueError(
                    f"`data_dir` is required for {self.dataset}: the folder of the python version's pickles "
                    "(nothing is downloaded)."
                )
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, Path)):
                raise TypeError(f"`data_dir` must be a path; got {type(self.data_dir).__name__}.")
            self.data_dir = Path(self.data_dir)
        self.lr = check_real("lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0; got {self.lr!r}. The paper's SGD starts at 0.1.")
        self.weight_decay = check_real("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {self.weight_decay!r}. Use 0 to switch it off.")
        self.sgd_momentum = check_real("sgd_momentum", self.sgd_momentum)
        if not 0.0 <= self.sgd_momentum < 1.0:
            raise ValueError(f"`sgd_momentum` must lie in [0, 1); got {self.sgd_momentum!r}. The paper uses 0.9.")
        self.lr_decay = check_real("lr_decay", self.lr_decay)
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"`lr_decay` must lie in (0, 1] (1: no decay); got {self.lr_decay!r}. Try 0.1.")
        self.milestones = tuple(check_real("milestones", m) for m in self.milestones)
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(
                f"`milestones` must be increasing fractions of the epochs in (0, 1); got {self.milestones!r}. "
                "Use () for a constant step size."
            )
        if self.n_train is not None:
            check_positive_int("n_train", self.n_train)
        check_seed(self.seed)
        self.out = check_out(self.out)
        check_threads_progress(self.threads, self.progress)

    @property
    def gradient_mode(self) -> str:
        """The gradient actually used: ``gradient``, or ``"exact"`` (momentum) / ``"backprop"`` (resnet)."""
        if self.gradient is not None:
            return self.gradient
        return "exact" if self.model == "momentum" else "backprop"

    def to_dict(self) -> dict:
        """Plain dict (paths as str, tuples as lists) that ``ImageFitConfig(**d)`` turns back into this config."""
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        d["milestones"] = list(self.milestones)
        return d


def load_images(config: ImageFitConfig) -> ImageSplit:
    """The data of ``config``: the digits (split by ``seed``) or CIFAR from ``data_dir``; ``n_train`` applied."""
    if config.dataset == "digits":
        data = load_digit_images(image_size=config.image_size, seed=config.seed)
    else:
        data = load_cifar(config.data_dir, config.dataset)
    if config.n_train is not None and config.n_train < len(data.y_train):
        data = dataclasses.replace(data, X_train=data.X_train[: config.n_train], y_train=data.y_train[: config.n_train])
    return data


def build_image_model(config: ImageFitConfig, in_channels: int, n_classes: int) -> nn.Module:
    """The ResNet of ``config``: ``ode_momentum.models.resnet(arch, ...)``, momentum or plain.

    Parameters
    ----------
    config : ImageFitConfig
    in_channels, n_classes : int
        Image channels (1 digits, 3 CIFAR) and classes.

    Returns
    -------
    ResNet
        Maps ``(batch, in_channels, H, W)`` float32 to logits ``(batch, n_classes)``; initialised from the
        global generator (seed it in ``torch.random.fork_rng``, as :func:`fit_images` does).
    """
    if not isinstance(config, ImageFitConfig):
        raise TypeError(f"`config` must be an ImageFitConfig; got {type(config).__name__}.")
    momentum = config.model == "momentum"
    return resnet(
        config.arch, n_classes, stem=config.stem, in_channels=in_channels, width=config.width, momentum=momentum,
        gamma=config.gamma if momentum else 0.9, gradient=config.gradient_mode if momentum else "exact",
    )


def load_image_model(path) -> tuple[nn.Module, ImageFitConfig]:
    """Rebuild the model saved by :func:`fit_images` or :func:`finetune` in ``path`` (a ``model.pt``)."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != "image":
        raise ValueError(
            f"{path} is not a checkpoint of `ode-momentum fit --arch` or `ode-momentum finetune` (no "
            "kind='image'); for the digits MLP use ode_momentum.train.load_model."
        )
    config = ImageFitConfig(**checkpoint["config"])
    model = build_image_model(config, checkpoint["image_shape"][0], checkpoint["n_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    return model, config


def fit_images(config: ImageFitConfig) -> dict:
    """Train the ResNet of ``config``; write metrics, checkpoint and curves into ``config.out``.

    Mini-batch training of the cross-entropy with SGD (heavy ball ``sgd_momentum``, L2 ``weight_decay``) or
    AdamW, the step size multiplied by ``lr_decay`` after each milestone, random crops (zero padding of
    ``crop_padding`` pixels in normalised units, i.e. the mean colour) and horizontal flips as ``augment``
    says. Test accuracy is measured (eval mode) after every epoch. ``activation_bytes`` are the bytes autograd
    saves in one training-mode forward of the whole network on one batch (parameters excluded; the BatchNorm
    statistics are restored afterwards).

    The global random state and the thread count are restored on return.

    Parameters
    ----------
    config : ImageFitConfig

    Returns
    -------
    dict
        The content of ``metrics.json``: ``test_accuracy``, ``train_accuracy`` (fractions, eval mode),
        ``test_loss``, ``train_loss`` (nats), ``activation_bytes``, ``train_seconds`` (s), ``n_parameters``,
        ``effective_gamma`` (the damping the momentum stages apply; 0 for the plain ResNet), the settings,
        ``n_train``, ``n_test`` and ``history`` (per epoch: ``epoch``, ``loss``, ``lr``,
        ``train_accuracy`` (of the augmented batches, train mode), ``test_accuracy``).

    Raises
    ------
    TypeError
        If ``config`` is not an :class:`ImageFitConfig`.
    FileNotFoundError
        If a CIFAR file is missing in ``data_dir``.
    OSError
        If ``config.out`` cannot be written.

    References
    ----------
    Sander et al., ICML 2021, section 5 (CIFAR recipe); He et al., CVPR 2016 (step schedule, augmentation).
    """
    if not isinstance(config, ImageFitConfig):
        raise TypeError(f"`config` must be an ImageFitConfig; got {type(config).__name__}.")
    data = load_images(config)
    config.out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model = build_image_model(config, data.image_shape[0], data.n_classes)
        gen = torch.Generator().manual_seed(config.seed)
        activation_bytes = _activation_bytes(model, data.normalise(data.X_train[: config.batch_size]))
        history, seconds = train_model(model, data, _Recipe.of(config), gen, desc=f"fit {config.arch}")
        train_loss, train_acc = evaluate(model, data, train=True)
        test_loss, test_acc = evaluate(model, data)
    metrics = {
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "train_loss": train_loss,
        "activation_bytes": activation_bytes,
        "train_seconds": seconds,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "effective_gamma": _effective_gamma(model),
        **_settings(config),
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "history": history,
    }
    _write(config.out, metrics, model, config, data, title=_title(config))
    return metrics


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (validated on construction).

    Raises
    ------
    TypeError, ValueError
        For a ``checkpoint`` or ``out`` that is not a path, ``gamma`` outside [0, 1] (or 0 with a memory-free
        gradient), an unknown ``gradient``, ``epochs < 0``, ``lr <= 0``, a bad ``batch_size``, seed or
        thread count.
    """

    checkpoint: Path  # model.pt of `ode-momentum fit --arch` (plain or momentum) or of an earlier finetune
    gamma: float = 0.9  # momentum coefficient of the converted model
    gradient: str = "exact"  # gradient mode of the momentum stages; gamma = 0 needs "backprop"
    epochs: int = 2  # refit epochs at constant step size; 0: convert and evaluate only
    lr: float = 0.01  # constant step size of the refit (a tenth of the initial fit's: a short refit)
    batch_size: int | None = None  # None: the checkpoint's
    data_dir: Path | None = None  # None: the checkpoint's (CIFAR)
    seed: int = 0  # batches and augmentation of the refit
    out: Path = Path("runs/finetune")  # directory for metrics.json, model.pt, curves.png
    threads: int | None = 1
    progress: bool | None = None

    def __post_init__(self):
        for name in ("checkpoint", "out"):
            if not isinstance(getattr(self, name), (str, Path)):
                raise TypeError(f"`{name}` must be a path; got {type(getattr(self, name)).__name__}.")
            setattr(self, name, Path(getattr(self, name)))
        check_choice("gradient", self.gradient, GRADIENTS)
        self.gamma = check_gamma(self.gamma, allow_zero=self.gradient == "backprop")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"`epochs` must be an int >= 0 (0: no refit); got {self.epochs!r}.")
        self.lr = check_real("lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0; got {self.lr!r}. A short refit uses about 0.01.")
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, Path)):
                raise TypeError(f"`data_dir` must be a path; got {type(self.data_dir).__name__}.")
            self.data_dir = Path(self.data_dir)
        check_seed(self.seed)
        check_threads_progress(self.threads, self.progress)


def finetune(config: FinetuneConfig) -> dict:
    """Convert a trained ResNet checkpoint to a Momentum ResNet at ``gamma`` and refit it briefly.

    A plain checkpoint is converted with :func:`ode_momentum.to_momentum` (the first block of each stage kept,
    ``f_n(x) = B_n(x) - x``); a momentum checkpoint gets the new ``gamma`` (:func:`ode_momentum.convert.with_gamma`).
    The converted model is evaluated, then refit for ``epochs`` with the checkpoint's optimizer and
    augmentation at the constant step size ``lr``, and evaluated again. Writes ``metrics.json``,
    ``model.pt`` (a momentum checkpoint that :func:`load_image_model` reloads) and ``curves.png``.

    Returns
    -------
    dict
        ``source_test_accuracy`` (the checkpoint as it was), ``converted_test_accuracy`` (after conversion,
        before the refit), ``test_accuracy``, ``train_accuracy``, ``test_loss``, ``train_loss`` (after the
        refit), ``gamma``, ``source_gamma`` (0 for a plain checkpoint), ``effective_gamma``, ``gradient``,
        ``epochs``, ``lr``, ``train_seconds``, ``n_parameters``, ``history``.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`FinetuneConfig`.
    ValueError
        If the checkpoint is not one of ``fit_images`` / ``finetune``.
    FileNotFoundError
        If the checkpoint (or a CIFAR file) is missing.

    References
    ----------
    Sander et al., ICML 2021, section 5 (fine-tuning a converted pretrained ResNet; robustness to gamma).
    """
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"`config` must be a FinetuneConfig; got {type(config).__name__}.")
    source, source_config = load_image_model(config.checkpoint)
    # the checkpoint's seed stays: it fixes the digits' train/test split (config.seed only drives the refit)
    overrides = {"out": config.out, "threads": config.threads, "progress": config.progress}
    if config.batch_size is not None:
        overrides["batch_size"] = config.batch_size
    if config.data_dir is not None:
        overrides["data_dir"] = config.data_dir
    new_config = ImageFitConfig(
        **{**source_config.to_dict(), **overrides, "model": "momentum", "gamma": config.gamma,
           "gradient": config.gradient}
    )
    data = load_images(new_config)
    config.out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), torch_threads(config.threads):
        _, source_acc = evaluate(source, data)
        model = regamma(source, config.gamma, config.gradient)
        _, converted_acc = evaluate(model, data)
        gen = torch.Generator().manual_seed(config.seed)
        recipe = dataclasses.replace(_Recipe.of(new_config), epochs=config.epochs, lr=config.lr, milestones=())
        history, seconds = train_model(model, data, recipe, gen, desc="finetune")
        train_loss, train_acc = evaluate(model, data, train=True)
        test_loss, test_acc = evaluate(model, data)
    metrics = {
        "source_test_accuracy": source_acc,
        "converted_test_accuracy": converted_acc,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "train_loss": train_loss,
        "gamma": config.gamma,
        "source_gamma": source_config.gamma if source_config.model == "momentum" else 0.0,
        "effective_gamma": _effective_gamma(model),
        "gradient": config.gradient,
        "epochs": config.epochs,
        "lr": config.lr,
        "train_seconds": seconds,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint": str(config.checkpoint),
        "arch": new_config.arch,
        "dataset": new_config.dataset,
        "history": history,
    }
    _write(config.out, metrics, model, new_config, data, title=f"finetune {_title(new_config)}")
    return metrics


def regamma(model: nn.Module, gamma: float, gradient: str) -> nn.Module:
    """A copy of a ResNet of ``ode_momentum.models`` as a momentum model at ``gamma`` (plain ones converted)."""
    if any(isinstance(m, MomentumResNet) for m in model.modules()):
        return with_gamma(model, gamma, gradient=gradient)
    return to_momentum(model, STAGES, gamma=gamma, keep_first_block=True, gradient=gradient)


# ------------------------------------------------------------------------------------------ the loop


@dataclass
class _Recipe:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    sgd_momentum: float
    weight_decay: float
    milestones: tuple
    lr_decay: float
    augment: str
    crop_padding: int
    progress: bool | None

    @classmethod
    def of(cls, config: ImageFitConfig) -> "_Recipe":
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def train_model(model: nn.Module, data: ImageSplit, recipe, gen: torch.Generator, *, desc: str = "fit"):
    """Train ``model`` in place on ``data`` with ``recipe``; return ``(history, train_seconds)``.

    ``recipe`` has the optimisation fields of :class:`ImageFitConfig` (``epochs`` may be 0). The batches and
    the augmentation draw from ``gen`` only.
    """
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.sgd_momentum, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = sorted({max(1, round(m * recipe.epochs)) for m in recipe.milestones})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=recipe.lr_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    history, seconds = [], 0.0
    show = recipe.progress if recipe.progress is not None else stderr_is_tty()
    bar = tqdm(range(1, recipe.epochs + 1), desc=desc, unit="epoch", disable=not show)
    with contextlib.closing(bar):
        for epoch in bar:
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            total, correct = 0.0, 0
            for idx in torch.randperm(n, generator=gen).split(recipe.batch_size):
                x = augment(data.normalise(data.X_train[idx]), recipe.augment, recipe.crop_padding, gen)
                y = data.y_train[idx]
                optimizer.zero_grad(set_to_none=True)
                logits = model(x)
                loss = loss_fn(logits, y)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == y).sum())
            schedule.step()
            seconds += time.perf_counter() - start
            _, test_acc = evaluate(model, data)
            record = {"epoch": epoch, "loss": total / n, "lr": lr, "train_accuracy": correct / n,
                      "test_accuracy": test_acc}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", test=f"{test_acc:.3f}")
    return history, seconds


def augment(x: torch.Tensor, mode: str, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Random crops after zero padding by ``padding`` pixels (``"crop"``) and horizontal flips (``"+flip"``).

    ``x`` has shape ``(B, C, H, W)``; the result too. Draws from ``gen`` only.
    """
    if mode == "none":
        return x
    B, C, H, W = x.shape
    if padding > 0:
        padded = nn.functional.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
        top = torch.randint(0, 2 * padding + 1, (B,), generator=gen)
        left = torch.randint(0, 2 * padding + 1, (B,), generator=gen)
        rows = (top[:, None] + torch.arange(H))[:, None, :, None]  # (B, 1, H, 1)
        cols = (left[:, None] + torch.arange(W))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    if mode.endswith("flip"):
        flip = torch.rand(B, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSplit, *, train: bool = False) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` on the test (or train) images, in eval mode."""
    X, y = (data.X_train, data.y_train) if train else (data.X_test, data.y_test)
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        for start in range(0, len(y), EVAL_BATCH):
            logits = model(data.normalise(X[start:start + EVAL_BATCH]))
            target = y[start:start + EVAL_BATCH]
            loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    finally:
        model.train(was_training)
    return loss / len(y), correct / len(y)


def _activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    saved = [(b, b.clone()) for b in model.buffers()]
    model.train()
    try:
        return saved_tensor_bytes(model, x)
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def _effective_gamma(model: nn.Module) -> float:
    stacks = [m for m in model.modules() if isinstance(m, MomentumResNet)]
    return stacks[0].effective_gamma if stacks else 0.0


def _settings(config: ImageFitConfig) -> dict:
    d = config.to_dict()
    for key in ("out", "threads", "progress"):
        d.pop(key)
    d["gradient"] = config.gradient_mode
    d["gamma"] = config.gamma if config.model == "momentum" else 0.0
    return d


def _write(out: Path, metrics: dict, model: nn.Module, config: ImageFitConfig, data: ImageSplit, *, title: str):
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    checkpoint = {
        "kind": "image",
        "state_dict": model.state_dict(),
        "config": config.to_dict(),
        "n_classes": data.n_classes,
        "image_shape": list(data.image_shape),
    }
    torch.save(checkpoint, out / "model.pt")
    if metrics["history"]:
        save_curves(metrics["history"], out / "curves.png", title=title)


def _title(config: ImageFitConfig) -> str:
    gamma = f", gamma={config.gamma:g}, {config.gradient_mode}" if config.model == "momentum" else ""
    return f"{config.arch} {config.model} on {config.dataset} (width {config.width}{gamma})"


# ------------------------------------------------------------------------------------------ command line
# Helpers of ``ode_momentum.cli`` (the ``fit --arch`` options and the ``finetune`` command), kept here so
# that the command-line module stays a thin dispatcher.

_COLUMNS = (
    ("model", lambda m: m["model"]),
    ("gradient", lambda m: m["gradient"]),
    ("arch", lambda m: m["arch"]),
    ("dataset", lambda m: m["dataset"]),
    ("test acc", lambda m: f"{m['test_accuracy']:.4f}"),
    ("activation KiB", lambda m: f"{m['activation_bytes'] / 1024:.1f}"),
    ("train s", lambda m: f"{m['train_seconds']:.1f}"),
    ("params", lambda m: f"{m['n_parameters']:,}"),
)
_TEXT_COLUMNS = 4
# options of `fit` that only the MLP classifier has
_MLP_ONLY = ("depth", "dropout")
# options of `fit` shared by the MLP and --arch runs whose defaults differ (absent from the namespace when unset)
_SHARED = ("width", "epochs", "batch_size", "lr", "weight_decay")


def add_image_fit_options(p: argparse.ArgumentParser) -> None:
    """Add the ``--arch`` options to the ``fit`` parser ``p``."""
    g = p.add_argument_group(
        "image classification (--arch)",
        "With --arch, `fit` trains a ResNet of ode_momentum.models (the momentum one keeps the first block of "
        "each stage and stacks the others in a MomentumResNet) on the digits as 8x8 images, or on CIFAR from "
        "--data-dir. Defaults: digits: width 32, 20 epochs, batch 64; CIFAR: the paper's recipe (width 64, 220 "
        "epochs, batch 128, SGD lr 0.1 momentum 0.9, weight decay 5e-4, step schedule at half and three quarters of the epochs, crop+flip).",
    )
    d = _IMAGE_DEFAULTS
    g.add_argument("--arch", choices=ARCHS, default=d["arch"], help="train this ResNet on images instead of the MLP")
    g.add_argument("--dataset", choices=DATASETS, default=d["dataset"], help="image data set")
    g.add_argument("--data-dir", type=Path, default=d["data_dir"], metavar="DIR",
                   help="CIFAR: folder of the python pickles (cifar-10-batches-py/ or cifar-100-python/)")
    g.add_argument("--image-size", type=int, default=d["image_size"],
                   help="digits: 8 (native, the default) or larger (upsampled); CIFAR: 32")
    g.add_argument("--stem", choices=STEMS, default=d["stem"], help="3x3 stem without max-pool, or 7x7 + max-pool")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"],
                   help="optimiser (lr default: sgd 0.1, adamw 3e-3)")
    g.add_argument("--sgd-momentum", type=float, default=d["sgd_momentum"], help="heavy-ball coefficient of SGD")
    g.add_argument("--milestones", type=_fractions, default=d["milestones"], metavar="F[,F...]",
                   help="fractions of the epochs after which the step size is multiplied by --lr-decay ('': none)")
    g.add_argument("--lr-decay", type=float, default=d["lr_decay"], help="factor of the step schedule")
    g.add_argument("--augment", choices=AUGMENTS, default=d["augment"],
                   help="crop+flip (CIFAR default), crop (digits default) or none")
    g.add_argument("--n-train", type=int, default=d["n_train"], help="use only the first N training images")


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.5,0.75; got {text!r}") from None


_IMAGE_DEFAULTS = dict(arch=None, dataset="digits", data_dir=None, image_size=None, stem="cifar", optimizer="sgd",
                       sgd_momentum=0.9, milestones=(0.5, 0.75), lr_decay=0.1, augment=None, n_train=None)


def wants_images(args: argparse.Namespace) -> bool:
    """Whether a ``fit`` namespace asks for an image run: ``--arch`` or another option of its group given."""
    return any(getattr(args, name) != default for name, default in _IMAGE_DEFAULTS.items())


def run_image_fit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``ode-momentum fit --arch ...``: build the configs, train, print a table."""
    if args.arch is None:
        given = [f"--{n.replace('_', '-')}" for n, v in _IMAGE_DEFAULTS.items() if getattr(args, n) != v]
        parser.error(f"{', '.join(given)} need(s) --arch (e.g. --arch resnet18); the MLP classifier has no such option.")
    for name in _MLP_ONLY:
        if hasattr(args, name):
            parser.error(f"--{name} applies to the MLP classifier only; with --arch the architecture fixes it.")
    if args.model == "node" and not args.compare:
        parser.error("--model node has no --arch counterpart; use --model momentum or --model resnet.")
    settings = dict(
        arch=args.arch, gamma=args.gamma, dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
        stem=args.stem, optimizer=args.optimizer, sgd_momentum=args.sgd_momentum, milestones=args.milestones,
        lr_decay=args.lr_decay, augment=args.augment, n_train=args.n_train, seed=args.seed,
        threads=None if args.threads == 0 else args.threads,
        **{name: getattr(args, name) for name in _SHARED if hasattr(args, name)},
    )
    if args.compare:
        plans = [dict(model="momentum", gradient=args.gradient, out=args.out / "momentum"),
                 dict(model="resnet", gradient="backprop", out=args.out / "resnet")]
    else:
        plans = [dict(model=args.model, gradient=args.gradient, out=args.out)]
    try:
        configs = [ImageFitConfig(**plan, **settings) for plan in plans]
    except (TypeError, ValueError) as err:
        parser.error(_as_options(str(err)))
    try:
        rows = [fit_images(config) for config in configs]
    except FileNotFoundError as err:
        parser.error(str(err))
    print(format_image_table(rows))
    for config in configs:
        print(f"wrote metrics.json, model.pt, curves.png to {config.out}")
    return 0


def format_image_table(rows) -> str:
    """Aligned text table of :func:`fit_images` metrics: a header line, then one line per run."""
    cells = [[h for h, _ in _COLUMNS]] + [[cell(m) for _, cell in _COLUMNS] for m in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(_COLUMNS))]
    lines = []
    for row in cells:
        parts = [c.ljust(w) if j < _TEXT_COLUMNS else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``finetune --checkpoint FILE --gamma G [options]`` to an argparse ``subparsers`` object."""
    d = FinetuneConfig(checkpoint=Path("model.pt"))
    p = subparsers.add_parser(
        "finetune",
        help="convert a trained ResNet checkpoint to a Momentum ResNet at --gamma and refit it",
        description=(
            "Load a model.pt written by `ode-momentum fit --arch` (a plain ResNet, or a momentum one trained at "
            "another gamma), convert it to a Momentum ResNet at --gamma (first block of each stage kept, the "
            "rest one momentum stack over the same weights), evaluate it, refit it for --epochs at the constant "
            "step size --lr, and write metrics.json, model.pt and curves.png into --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, metavar="FILE", help="model.pt of `fit --arch`")
    p.add_argument("--gamma", type=float, default=d.gamma, help="momentum coefficient of the converted model")
    p.add_argument("--gradient", choices=GRADIENTS, default=d.gradient,
                   help="gradient of the momentum stages (gamma 0 needs backprop)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="refit epochs (0: convert and evaluate only)")
    p.add_argument("--lr", type=float, default=d.lr, help="constant step size of the refit")
    p.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help="CIFAR folder; default: the checkpoint's")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the refit's batches and augmentation")
    p.add_argument("--out", type=Path, default=d.out, help="output directory")
    p.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads; 0: torch's own")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.set_defaults(run=run_finetune_command, parser=p)
    return p


def run_finetune_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``ode-momentum finetune``: convert, refit, print accuracies before and after."""
    try:
        config = FinetuneConfig(
            checkpoint=args.checkpoint, gamma=args.gamma, gradient=args.gradient, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed, out=args.out,
            threads=None if args.threads == 0 else args.threads, progress=True if args.progress else None,
        )
    except (TypeError, ValueError) as err:
        parser.error(_as_options(str(err)))
    if not config.checkpoint.is_file():
        parser.error(f"--checkpoint {str(config.checkpoint)!r} does not exist; pass the model.pt of `fit --arch`.")
    try:
        m = finetune(config)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"checkpoint (gamma {m['source_gamma']:g}): test acc {m['source_test_accuracy']:.4f}")
    print(f"converted to gamma {m['gamma']:g}, no refit: test acc {m['converted_test_accuracy']:.4f}")
    print(f"after {m['epochs']} refit epoch(s): test acc {m['test_accuracy']:.4f}")
    print(f"wrote metrics.json, model.pt, curves.png to {config.out}")
    return 0


def _as_options(message: str) -> str:
    """Name the command-line options in a library message: `batch_size` -> --batch-size."""
    names = sorted({f.name for f in dataclasses.fields(ImageFitConfig)} | {f.name for f in dataclasses.fields(FinetuneConfig)},
                   key=len, reverse=True)
    for name in names:
        message = message.replace(f"`{name}`", f"--{name.replace('_', '-')}")
    return message
