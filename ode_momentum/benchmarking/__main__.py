"""``python -m ode_momentum.benchmarking [--quick] --out DIR``: the ``bench`` subcommand without the CLI."""

import sys

from .cli import main

sys.exit(main())
