"""Command line: ``ode-momentum <command> [options]``; thin, it parses, builds a config, calls the library.

Commands
--------
fit
    Train a residual classifier on scikit-learn's digits (:func:`ode_momentum.train.fit`); ``--compare``
    trains a Momentum ResNet and a ResNet with the same settings side by side; ``--resume DIR`` continues an
    interrupted run; ``--distributed`` trains with DistributedDataParallel under ``torchrun``.
study step-limit
    The infinitesimal-step limit and work-precision study (:func:`ode_momentum.studies.run_step_limit`):
    ``--out DIR`` receives CSV tables and PNG figures, ``--quick`` picks small sizes.
verify
    Check the paper's claims numerically (:mod:`ode_momentum.verify`, ``ode_momentum.theory``) and print a
    PASS/FAIL table; ``--quick`` for small sizes, ``--json FILE`` to save the results; exit status 1 on a FAIL.

A command is one ``_add_<name>`` function that declares its parser and sets ``run`` to the function that
executes it; :func:`main` dispatches.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .reproduce import add_reproduce_parser
from .robustness import add_robustness_parser
from .benchmarking.cli import add_bench_parser
from .studies import add_study_parser
from ._runs import DistributedEnvironmentError, World, process_group, torchrun_world
from .train import CHECKPOINT, GRADIENTS, MODELS, FitConfig, fit, resumable
from .train_images import add_finetune_parser, add_image_fit_options, run_image_fit, wants_images
from .verify import add_verify_parser

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
    add_verify_parser(commands)
    add_bench_parser(commands)
    add_finetune_parser(commands)
    add_robustness_parser(commands)
    add_reproduce_parser(commands)
    return parser


class _StoreGiven(argparse._StoreAction):
    """argparse's ``store``, also noting the option in ``namespace.fit_given``: --resume must tell an explicit
    ``--gamma 0.9`` (to check against the stored run) from the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        vars(namespace).setdefault("fit_given", set()).add(self.dest)


class _StoreTrueGiven(argparse._StoreTrueAction):
    """argparse's ``store_true``, also noting the option in ``namespace.fit_given``."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        vars(namespace).setdefault("fit_given", set()).add(self.dest)


# FitConfig fields that --resume compares with the stored run (threads may change: it is runtime only)
_RESUME_SETTINGS = ("model", "depth", "width", "gamma", "gradient", "epochs", "batch_size", "lr", "weight_decay",
                    "dropout", "seed", "threads", "distributed")


def _add_fit(commands) -> None:
    d = FitConfig()  # the defaults live in FitConfig; the options only override them
    p = commands.add_parser(
        "fit",
        help="train a residual classifier on scikit-learn's digits",
        description=(
            "Train Linear -> residual stage -> Linear on scikit-learn's 8x8 digits (80/20 stratified split) and "
            "write metrics.json, model.pt and curves.png into --out. Prints a summary table. A checkpoint.pt "
            "after every epoch lets --resume continue an interrupted run; --distributed trains under torchrun."
        ),
        formatter_class=_HelpFormatter,
    )
    # every option records that it was given (namespace.fit_given), whatever its value
    p.register("action", None, _StoreGiven)
    p.register("action", "store", _StoreGiven)
    p.register("action", "store_true", _StoreTrueGiven)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", choices=MODELS, default=d.model, help="residual stage")
    which.add_argument(
        "--compare",
        action="store_true",
        help="train 'momentum' and 'resnet' with the same settings into OUT/momentum and OUT/resnet",
    )
    unset = argparse.SUPPRESS  # options whose default depends on --arch: absent from args unless given
    p.add_argument("--depth", type=int, default=unset, help=f"residual functions (node: Euler steps; default: {d.depth})")
    p.add_argument("--width", type=int, default=unset,
                   help=f"features of the residual stage (default: {d.width}); --arch: channels of layer1")
    p.add_argument("--gamma", type=float, default=d.gamma, help="momentum coefficient in [0, 1] (momentum only)")
    p.add_argument(
        "--gradient",
        choices=GRADIENTS,
        default=None,
        help="how to differentiate the momentum stage (default: auto, which takes exact for the ReLU residuals; "
        "the first-order models always backprop)",
    )
    p.add_argument("--epochs", type=int, default=unset, help=f"passes over the training set (default: {d.epochs})")
    p.add_argument("--batch-size", type=int, default=unset, help=f"mini-batch size (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=unset,
                   help=f"peak AdamW step size, cosine-annealed to 0 (default: {d.lr}); --arch: initial step size")
    p.add_argument("--weight-decay", type=float, default=unset,
                   help=f"AdamW decoupled weight decay (default: {d.weight_decay}; --arch: 5e-4)")
    p.add_argument("--dropout", type=float, default=unset,
                   help=f"input dropout probability in [0, 1) (default: {d.dropout})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, the weights and the batches")
    p.add_argument("--out", type=Path, default=d.out, help="output directory")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch intra-op threads during the run; 0: torch's own count",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the interrupted run in DIR from its last checkpoint, with the settings stored there "
        "(other options must agree with them; --threads may change)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="train with DistributedDataParallel over the processes torchrun starts "
        "(torchrun --nproc_per_node N -m ode_momentum.cli fit --distributed ...; gloo on CPU, nccl on CUDA); "
        "--batch-size is per process and only rank 0 writes files",
    )
    add_image_fit_options(p)
    p.set_defaults(run=_run_fit, parser=p)


def _run_fit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if wants_images(args):  # --arch (or an option of its group): a ResNet on images
        for name in ("resume", "distributed"):
            if getattr(args, name):
                parser.error(f"--{name} applies to the MLP classifier only; `fit --arch` trains in one process "
                             "and writes no checkpoint to resume from. Drop --arch and its options, or --" + name + ".")
        return run_image_fit(args, parser)
    if args.resume is not None:
        return _resume_fit(args, parser)
    settings = dict(
        gamma=args.gamma,
        seed=args.seed,
        threads=None if args.threads == 0 else args.threads,
        # given options only: the rest keep FitConfig's defaults
        **{name: getattr(args, name) for name in ("depth", "width", "epochs", "batch_size", "lr", "weight_decay",
                                                  "dropout") if hasattr(args, name)},
    )
    if args.compare:
        # the ResNet is the gamma = 0 model: it cannot be reversed, so --gradient applies to momentum only
        plans = [
            dict(model="momentum", gradient=args.gradient, out=args.out / "momentum"),
            dict(model="resnet", gradient="backprop", out=args.out / "resnet"),
        ]
    else:
        plans = [dict(model=args.model, gradient=args.gradient, out=args.out)]
    configs = [_config_or_exit(parser, **plan, **settings, distributed=args.distributed) for plan in plans]
    world = _world_or_exit(parser, args.distributed)
    with process_group(world):  # one group for every run of the command (--compare trains two)
        rows = [fit(config) for config in configs]
    _report(rows, configs, world)
    return 0


def _resume_fit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``fit --resume DIR``: continue the run in DIR with its stored settings; options given must agree."""
    given = vars(args).get("fit_given", set())
    if "out" in given:
        parser.error(f"--resume {args.resume} continues the run in {args.resume} and writes there; drop --out.")
    if args.compare:
        parser.error("--resume continues one run; a --compare run is two: resume OUT/momentum and OUT/resnet "
                     "one after the other (--resume OUT/momentum, then --resume OUT/resnet).")
    settings = {name: getattr(args, name) for name in _RESUME_SETTINGS if name in given}
    if "threads" in settings and settings["threads"] == 0:
        settings["threads"] = None
    try:
        config, checkpoint = resumable(args.resume, **settings)
    except (FileNotFoundError, ValueError, TypeError, DistributedEnvironmentError) as err:
        parser.error(_as_options(str(err)))
    world = _world_or_exit(parser, config.distributed)
    with process_group(world):
        rows = [fit(config, checkpoint=checkpoint)]
    _report(rows, [config], world)
    return 0


def _world_or_exit(parser: argparse.ArgumentParser, distributed: bool) -> World:
    """This process's place among torchrun's (a one-process world without --distributed), or exit 2."""
    if not distributed:
        return World()
    try:
        return torchrun_world("--distributed")
    except DistributedEnvironmentError as err:
        parser.error(str(err))


def _report(rows: list[dict], configs: list[FitConfig], world: World) -> None:
    """Print the summary table and where the files went (rank 0 only: the others wrote nothing)."""
    if not world.is_main:
        return
    print(format_table(rows))
    for config in configs:
        print(f"wrote metrics.json, model.pt, curves.png, {CHECKPOINT} to {config.out}")


def _config_or_exit(parser: argparse.ArgumentParser, **settings) -> FitConfig:
    """``FitConfig(**settings)``, or exit with status 2 and the validation message in option terms."""
    try:
        return FitConfig(**settings)
    except (TypeError, ValueError) as err:
        parser.error(_as_options(str(err)))


def _as_options(message: str) -> str:
    """Name the command-line options in a library message: `batch_size` -> --batch-size, and
    gradient="backprop" -> --gradient backprop."""
    for name in ("batch_size", "weight_decay", "depth", "width", "gamma", "gradient", "epochs", "lr",
                 "dropout", "seed", "threads", "model", "distributed"):
        option = f"--{name.replace('_', '-')}"
        message = message.replace(f"`{name}`", option)
        message = re.sub(rf'\b{name}="([^"]*)"', rf"{option} \1", message)
    return message


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (their help says what the default is)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


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
