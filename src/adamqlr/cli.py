"""The ``adamqlr`` command line: one entry point, one subcommand per job.

Each subcommand lives beside the code it drives and contributes a ``register(subparsers)``
function; this module only collects them. Importing is lazy, so ``adamqlr run`` needs torch and
the package alone, while ``adamqlr book`` and ``adamqlr tune`` pull in their own extras.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

#: (subcommand, module that defines ``register``), in the order ``--help`` lists them.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("run", "adamqlr.experiment.cli"),
    ("tune", "adamqlr.tune.cli"),
    ("study", "adamqlr.studies.cli"),
    ("book", "adamqlr.book.cli"),
)


def _experiment_cli() -> ModuleType:
    from adamqlr.experiment import cli

    return cli


def _tune_cli() -> ModuleType:
    from adamqlr.tune import cli

    return cli


def _studies_cli() -> ModuleType:
    from adamqlr.studies import cli

    return cli


def _book_cli() -> ModuleType:
    from adamqlr.book import cli

    return cli


#: Subcommand -> the function that imports its module (plain imports, so that the import graph
#: shows them; each runs only when its subcommand is asked for).
_LOADERS: dict[str, Callable[[], ModuleType]] = {
    "run": _experiment_cli,
    "tune": _tune_cli,
    "study": _studies_cli,
    "book": _book_cli,
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser, importing only the subcommand that ``argv`` names.

    Args:
        argv: The command-line arguments (without the program name). When the first one names a
            subcommand, only that subcommand's module is imported.

    Returns:
        The parser, with every subcommand registered (or only the named one).
    """
    parser = argparse.ArgumentParser(
        prog="adamqlr",
        description="AdamQLR companion: run experiments, tune baselines, build the book.",
    )
    from adamqlr.version import __version__

    parser.add_argument("--version", action="version", version=f"adamqlr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, _module in SUBCOMMANDS:
        if wanted in {n for n, _ in SUBCOMMANDS} and wanted != name:
            subparsers.add_parser(name, help=f"(see `adamqlr {name} --help`)")
            continue
        _LOADERS[name]().register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adamqlr`` command line and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
