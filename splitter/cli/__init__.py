"""``splitter`` command line, the top layer. Each subcommand is a module ``splitter/cli/NAME.py``
with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; ``_common`` holds the
arguments they share, ``demo_run`` the demo itself."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from splitter.errors import SplitterError

COMMANDS = ["points", "split", "sweep", "fit", "eval", "encode", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitter",
        description="Split computing compiler: split a model, insert a bottleneck, cost it, deploy it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod_name = f"splitter.cli.{name}"
        if importlib.util.find_spec(mod_name) is None:
            continue
        mod = importlib.import_module(mod_name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SplitterError as e:
        print(f"splitter: error: {e}", file=sys.stderr)
        return 2

