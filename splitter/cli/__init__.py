"""``splitter`` command line, the top layer. Each subcommand is a module ``splitter/cli/NAME.py``
with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; ``_common`` holds the
arguments they share, ``demo_run`` the demo itself.

``-v`` / ``--verbose`` (before or after the command) shows what the library logs at DEBUG on
the ``splitter`` loggers, such as the graph torch printed while a trace failed, and the
traceback of an error; without it an error is one line naming the next step.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
import traceback

from splitter.errors import SplitterError

COMMANDS = ["points", "split", "sweep", "fit", "eval", "encode", "serve", "export", "demo"]


VERBOSE_HELP = "show torch's diagnostics (e.g. the graph of a failed trace) and full tracebacks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitter",
        description="Split computing compiler: split a model, insert a bottleneck, cost it, deploy it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", dest="verbose_top", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod_name = f"splitter.cli.{name}"
        if importlib.util.find_spec(mod_name) is None:
            continue
        mod = importlib.import_module(mod_name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False) or getattr(args, "verbose_top", False))
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log = logging.getLogger("splitter")
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
    try:
        return int(args._run(args) or 0)
    except SplitterError as e:
        if verbose:
            traceback.print_exc()
        print(f"splitter: error: {e}", file=sys.stderr)
        return 2

