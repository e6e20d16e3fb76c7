"""Command line: ``ode-momentum <command> [options]``; thin, it parses, builds a config, calls the library.

Commands
--------
fit
    Train a residual classifier on scikit-learn's digits (:func:`ode_momentum.train.fit`); ``--compare``
    trains a Momentum ResNet and a ResNet with the same settings side by side.
study step-limit
    The infinitesimal-step limit and work-precision study (:func:`ode_momentum.studies.run_step_limit`):
    ``--out DIR`` receives CSV tables and PNG figures, ``--quick`` picks small sizes.

A command is one ``_add_<name>`` function that declares its parser and sets ``run`` to the function that
executes it; :func:`main` dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .studies import add_study_parser
from .train import GRADIENTS, MODELS, FitConfig, fit

# columns of the summary table: (header, format of a metrics dict)
_COLUMNS = (
    ("model", lambda m: m["model"]),
    ("gradient", lambda m: m["gradient"]),
    ("depth", lambda m: str(m["depth"])),
    ("test acc", lambda m: f"{m['test_accuracy']:.4f}"),
    ("activation KiB", lambda m: f"{m['activation_bytes'] / 1024:.1f}"),
    ("train s", lambda m: f"{m['train_seconds']:.1f}"),
    ("params", lambda m: f"{m['n_parameters']:,}"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``ode-momentum`` on ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Invalid options exit with status 2 and a message on stderr that names the option (``SystemExit``),
    whether argparse or the library's validation rejects them.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    return args.run(args, args.parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ode-momentum",
        description="Momentum ResNets as discretised second-order ODEs.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    _add_fit(commands)
    add_study_parser(commands)
    return parser


def _add_fit(commands) -> None:
    d = FitConfig()  # the defaults live in FitConfig; the options only override them
    p = commands.add_parser(
        "fit",
        help="train a residual classifier on scikit-learn's digits",
        description=(
            "Train Linear -> residual stage -> Linear on scikit-learn's 8x8 digits (80/20 stratified split) and "
            "write metrics.json, model.pt and curves.png into --out. Prints a summary table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", choices=MODELS, default=d.model, help="residual stage")
    which.add_argument(
        "--compare",
        action="store_true",
        help="train 'momentum' and 'resnet' with the same settings into OUT/momentum and OUT/resnet",
    )
    p.add_argument("--depth", type=int, default=d.depth, help="residual functions (node: Euler steps)")
    p.add_argument("--width", type=int, default=d.width, help="features of the residual stage")
    p.add_argument("--gamma", type=float, default=d.gamma, help="momentum coefficient in [0, 1] (momentum only)")
    p.add_argument(
        "--gradient",
        choices=GRADIENTS,
        default=None,
        help="how to differentiate the momentum stage (default: reversible; the first-order models always "
        "backprop)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="mini-batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW step size (cosine-annealed to 0)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decoupled weight decay")
    p.add_argument("--dropout", type=float, default=d.dropout, help="input dropout probability in [0, 1)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, the weights and the batches")
    p.add_argument("--out", type=Path, default=d.out, help="output directory")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch intra-op threads during the run; 0: torch's own count",
    )
    p.set_defaults(run=_run_fit, parser=p)


def _run_fit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings = dict(
        depth=args.depth,
        width=args.width,
        gamma=args.gamma,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        seed=args.seed,
        threads=None if args.threads == 0 else args.threads,
    )
    if args.compare:
        # the ResNet is the gamma = 0 model: it cannot be reversed, so --gradient applies to momentum only
        plans = [
            dict(model="momentum", gradient=args.gradient, out=args.out / "momentum"),
            dict(model="resnet", gradient="backprop", out=args.out / "resnet"),
        ]
    else:
        plans = [dict(model=args.model, gradient=args.gradient, out=args.out)]
    configs = [_config_or_exit(parser, **plan, **settings) for plan in plans]
    rows = [fit(config) for config in configs]
    print(format_table(rows))
    for config in configs:
        print(f"wrote metrics.json, model.pt, curves.png to {config.out}")
    return 0


def _config_or_exit(parser: argparse.ArgumentParser, **settings) -> FitConfig:
    """``FitConfig(**settings)``, or exit with status 2 and the validation message in option terms."""
    try:
        return FitConfig(**settings)
    except (TypeError, ValueError) as err:
        parser.error(_as_options(str(err)))


def _as_options(message: str) -> str:
    """Name the command-line options in a library message: `batch_size` -> --batch-size."""
    for name in ("batch_size", "weight_decay", "depth", "width", "gamma", "gradient", "epochs", "lr",
                 "dropout", "seed", "threads", "model"):
        message = message.replace(f"`{name}`", f"--{name.replace('_', '-')}")
    return message


def format_table(rows: Sequence[dict]) -> str:
    """Aligned text table of :func:`ode_momentum.train.fit` metrics: one line per run, a header line first."""
    cells = [[header for header, _ in _COLUMNS]] + [[cell(m) for _, cell in _COLUMNS] for m in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(_COLUMNS))]
    lines = []
    for row in cells:
        # text columns left-aligned, numbers right-aligned
        parts = [c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
