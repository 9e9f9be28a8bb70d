"""The ``wasap`` command: ``wasap train ...`` and ``wasap predict ...``.

``wasap train`` takes the flags of ``python -m wasap.run`` and ``wasap predict`` those of
``python -m wasap.predict``; ``python -m wasap`` is the same command.
"""

import argparse
import functools
import sys
from typing import Sequence

from . import __version__, predict, run

#: Each subcommand: the function that runs it (argv -> exit status) and one line of help.
COMMANDS = {
    "train": (functools.partial(run.main, prog="wasap train"),
              "train a sparse MLP and write its output folder (the flags of python -m wasap.run)"),
    "predict": (functools.partial(predict.main, prog="wasap predict"),
                "predict the labels of a data file with a trained model (python -m wasap.predict)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the subcommands' list, ``--help`` and ``--version``."""
    parser = argparse.ArgumentParser(
        prog="wasap",
        description="Truly sparse MLPs on CPUs (SET, All-ReLU, Importance Pruning, WASAP-SGD).",
        epilog="Run 'wasap COMMAND --help' for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] = None) -> int:
    """Run the ``wasap`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        # The subcommand's own parser reads the rest, so its --help lists every flag it takes.
        command, _ = COMMANDS[argv[0]]
        return command(argv[1:])
    parser = build_parser()
    parser.parse_args(argv)  # --help, --version and unknown commands end here
    parser.print_help(sys.stderr)
    return 2
