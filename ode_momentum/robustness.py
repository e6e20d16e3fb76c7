"""Robustness of a Momentum ResNet to the gamma used at test time (Sander et al. 2021, section 5).

A ResNet-18-layout model is trained on the digits at each ``gamma_train`` (``0`` is the plain ResNet, trained
by backprop). Each trained model is then run at every ``gamma_test`` of a grid, as it is ("no refit") and
after a short refit at that gamma ("refit": ``refit_epochs`` epochs at the constant step size
``refit_lr``). The paper's observation: accuracy falls when gamma changes at test time, and a short refit
recovers it, so a pretrained ResNet (``gamma_train = 0``) can become a Momentum ResNet cheaply.

Writes ``robustness.csv`` (one row per ``gamma_train, gamma_test, refit``), ``robustness.png`` and the
training runs (``train_gamma_<g>/``: metrics, checkpoint, curves) into ``out``; the command line is
``ode-momentum robustness``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ._checks import check_choice, check_positive_int, check_real
from .analysis import Table
from .data.rings import check_seed
from ._runs import torch_threads
from .train_images import (
    GRADIENTS,
    ImageFitConfig,
    _Recipe,
    evaluate,
    fit_images,
    load_image_model,
    load_images,
    regamma,
    train_model,
)


@dataclass
class GammaRobustnessConfig:
    """Settings of :func:`run_gamma_robustness` (validated on construction).

    Raises
    ------
    TypeError, ValueError
        For an empty or invalid gamma grid (values in [0, 1)), ``refit_epochs < 0``, ``refit_lr <= 0``, an
        unknown ``gradient`` (it must be memory-free or "backprop"), a bad size, seed or path.
    """

    out: Path = Path("runs/robustness")  # CSV, PNG and the training runs (created)
    gamma_train: tuple = (0.0, 0.9)  # gammas the models are trained at; 0: the plain ResNet
    gamma_test: tuple = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # gammas they are evaluated at
    refit_epochs: int = 1  # epochs of the short refit at each gamma_test (0: no refit rows)
    refit_lr: float = 0.01  # constant SGD step size of the refit (a tenth of the initial fit's)
    arch: str = "resnet18"  # ode_momentum.models architecture (CIFAR stem, one input channel)
    width: int = 32  # channels of layer1
    epochs: int = 20  # epochs of each initial fit (the digits default)
    image_size: int = 8  # digits at their native 8x8 (or upsampled)
    gradient: str = "exact"  # gradient of the momentum models (fits and refits); gamma = 0 uses backprop
    n_train: int | None = None  # first n_train training images only (quick runs); None: all 1437
    seed: int = 0  # split, weights, batches, augmentation
    threads: int | None = 1
    progress: bool | None = None

    def __post_init__(self):
        if not isinstance(self.out, (str, Path)):
            raise TypeError(f"`out` must be a path; got {type(self.out).__name__}.")
        self.out = Path(self.out)
        for name in ("gamma_train", "gamma_test"):
            grid = getattr(self, name)
            if isinstance(grid, (int, float)):
                grid = (grid,)
            grid = tuple(check_real(name, g) for g in grid)
            if not grid:
                raise ValueError(f"`{name}` is empty; give at least one gamma in [0, 1), e.g. (0.0, 0.9).")
            if any(not 0.0 <= g < 1.0 for g in grid):
                raise ValueError(
                    f"`{name}` values must lie in [0, 1) (0: plain ResNet; gamma = 1 never forgets); got {list(grid)}."
                )
            setattr(self, name, grid)
        if isinstance(self.refit_epochs, bool) or not isinstance(self.refit_epochs, int) or self.refit_epochs < 0:
            raise ValueError(f"`refit_epochs` must be an int >= 0; got {self.refit_epochs!r}.")
        self.refit_lr = check_real("refit_lr", self.refit_lr)
        if self.refit_lr <= 0:
            raise ValueError(f"`refit_lr` must be > 0; got {self.refit_lr!r}.")
        check_choice("gradient", self.gradient, GRADIENTS)
        for name in ("width", "epochs", "image_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_train is not None:
            check_positive_int("n_train", self.n_train)
        check_seed(self.seed)
        self.fit_config(0.9)  # validates arch and the remaining settings once, here

    def fit_config(self, gamma_train: float) -> ImageFitConfig:
        """The :class:`ImageFitConfig` of the model trained at ``gamma_train``."""
        plain = gamma_train == 0.0
        return ImageFitConfig(
            arch=self.arch, model="resnet" if plain else "momentum", gamma=gamma_train,
            gradient="backprop" if plain else self.gradient, dataset="digits", image_size=self.image_size,
            width=self.width, epochs=self.epochs, n_train=self.n_train, seed=self.seed,
            out=self.out / f"train_gamma_{gamma_train:g}", threads=self.threads, progress=self.progress,
        )


def run_gamma_robustness(config: GammaRobustnessConfig) -> Table:
    """Train at each ``gamma_train``, evaluate at each ``gamma_test`` with and without a short refit.

    Returns
    -------
    Table
        Columns ``gamma_train``, ``gamma_test``, ``refit`` (bool), ``refit_epochs``, ``test_accuracy``
        (fraction in [0, 1], eval mode), ``test_loss`` (nats). Also written to ``out/robustness.csv``, with
        the figure ``out/robustness.png`` and ``out/metrics.json`` (settings, rows, wall time).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`GammaRobustnessConfig`.

    References
    ----------
    Sander et al., ICML 2021, section 5 ("robustness to the choice of gamma"; refitting a converted ResNet).
    """
    if not isinstance(config, GammaRobustnessConfig):
        raise TypeError(f"`config` must be a GammaRobustnessConfig; got {type(config).__name__}.")
    start = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    table = Table()
    for gamma_train in config.gamma_train:
        fit_config = config.fit_config(gamma_train)
        fit_images(fit_config)
        data = load_images(fit_config)
        with torch.random.fork_rng(devices=[]), torch_threads(config.threads):
            model, _ = load_image_model(fit_config.out / "model.pt")
            for k, gamma_test in enumerate(config.gamma_test):
                gradient = "backprop" if gamma_test == 0.0 else config.gradient
                tested = regamma(model, gamma_test, gradient)
                loss, acc = evaluate(tested, data)
                table.append(_row(gamma_train, gamma_test, False, 0, acc, loss))
                if config.refit_epochs:
                    gen = torch.Generator().manual_seed(config.seed + 1 + k)
                    recipe = dataclasses.replace(
                        _Recipe.of(fit_config), epochs=config.refit_epochs, lr=config.refit_lr, milestones=(),
                        progress=False,
                    )
                    train_model(tested, data, recipe, gen)
                    loss, acc = evaluate(tested, data)
                    table.append(_row(gamma_train, gamma_test, True, config.refit_epochs, acc, loss))
    table.to_csv(config.out / "robustness.csv")
    plot_gamma_robustness(table, config.out / "robustness.png")
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    settings["out"] = str(config.out)
    summary = {"settings": settings, "rows": table.rows, "seconds": time.perf_counter() - start}
    (config.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return table


def _row(gamma_train, gamma_test, refit, epochs, acc, loss) -> dict:
    return {"gamma_train": gamma_train, "gamma_test": gamma_test, "refit": refit, "refit_epochs": epochs,
            "test_accuracy": acc, "test_loss": loss}


def plot_gamma_robustness(table: Table, path) -> None:
    """Test accuracy against ``gamma_test``: one colour per ``gamma_train``, solid without refit, dashed with.

    Uses matplotlib's object API with the Agg canvas (no global ``pyplot`` state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, gamma_train in enumerate(table.unique("gamma_train")):
        color = f"C{i}"
        label = "ResNet (gamma 0)" if gamma_train == 0.0 else f"trained at gamma {gamma_train:g}"
        for refit in (False, True):
            part = table.where(gamma_train=gamma_train, refit=refit)
            if not len(part):
                continue
            epochs = part.rows[0]["refit_epochs"]
            ax.plot(part.column("gamma_test"), part.column("test_accuracy"), color=color, marker="o" if not refit else "s",
                    linestyle="--" if refit else "-",
                    label=f"{label}, refit {epochs} epoch{'s' if epochs != 1 else ''}" if refit else label)
        ax.axvline(gamma_train, color=color, linestyle=":", alpha=0.6)
    ax.set(xlabel="gamma at test time", ylabel="test accuracy", title="Robustness to gamma (digits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    fig.savefig(Path(path), dpi=100)


def add_robustness_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``robustness [options] --out DIR`` to an argparse ``subparsers`` object (``ode_momentum.cli``'s
    convention: the parser sets ``run`` and ``parser``)."""
    d = GammaRobustnessConfig()
    p = subparsers.add_parser(
        "robustness",
        help="gamma-robustness study on the digits: train at gamma_train, test at gamma_test, refit",
        description=(
            "Train a ResNet-18-layout model on the digits at each --gamma-train (0: the plain ResNet), evaluate it "
            "at each --gamma-test as it is and after a short refit, and write robustness.csv, robustness.png and "
            "the training runs into --out. Prints the table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=d.out, help="output directory")
    p.add_argument("--gamma-train", type=_floats, default=d.gamma_train, metavar="G[,G...]",
                   help="comma-separated gammas to train at (0: plain ResNet)")
    p.add_argument("--gamma-test", type=_floats, default=d.gamma_test, metavar="G[,G...]",
                   help="comma-separated gammas to evaluate at")
    p.add_argument("--refit-epochs", type=int, default=d.refit_epochs, help="epochs of each refit (0: none)")
    p.add_argument("--refit-lr", type=float, default=d.refit_lr, help="constant SGD step size of the refits")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of each initial fit")
    p.add_argument("--width", type=int, default=d.width, help="channels of layer1")
    p.add_argument("--gradient", choices=GRADIENTS, default=d.gradient, help="gradient of the momentum models")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, weights and batches")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test (width 8, 2 epochs, 256 images, 3 test gammas)")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    p.set_defaults(run=run_robustness_command, parser=p)
    return p


def _floats(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,0.5,0.9; got {text!r}") from None


def run_robustness_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """``ode-momentum robustness``: run the study, print its table and the files written."""
    settings = dict(
        out=args.out, gamma_train=args.gamma_train, gamma_test=args.gamma_test, refit_epochs=args.refit_epochs,
        refit_lr=args.refit_lr, epochs=args.epochs, width=args.width, gradient=args.gradient, seed=args.seed,
        progress=True if args.progress else None,
    )
    if args.quick:
        settings.update(width=8, epochs=2, n_train=256, gamma_test=(0.0, 0.5, 0.9))
    try:
        config = GammaRobustnessConfig(**settings)
    except (TypeError, ValueError) as err:
        if parser is None:
            raise
        parser.error(_as_options(str(err)))
    table = run_gamma_robustness(config)
    print("gamma_train  gamma_test  refit  test acc")
    for row in table:
        print(f"{row['gamma_train']:>11g}  {row['gamma_test']:>10g}  {'yes' if row['refit'] else 'no':>5}  "
              f"{row['test_accuracy']:.4f}")
    print(f"wrote robustness.csv, robustness.png, metrics.json to {config.out}")
    return 0


def _as_options(message: str) -> str:
    for name in ("gamma_train", "gamma_test", "refit_epochs", "refit_lr", "epochs", "width", "gradient", "seed",
                 "gamma"):
        message = message.replace(f"`{name}`", f"--{name.replace('_', '-')}")
    return message
