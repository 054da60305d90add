"""The `mmft` console script.

Subcommands live beside the code they drive; each module exposes
`add_parser(subparsers)` that registers its command and sets `func`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register one subcommand each, in the order `mmft --help` lists them.
_COMMAND_MODULES = (
    "mmft.testing.cli",  # archs, make-tiny
    "mmft.label.cli",  # label serve | add-labeler | export
    "mmft.hub_cli",  # push
    "mmft.evaluation.cli",  # eval
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmft", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # the module is not written yet
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
