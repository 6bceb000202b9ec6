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

COMMANDS = ["points", "split", "sweep", "plan", "fit", "eval", "encode", "profile", "serve", "export", "demo"]


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
        try:
            mod = importlib.import_module(mod_name)
            mod.add_arguments(argparse.ArgumentParser(add_help=False))  # probe: imports it needs
        except ModuleNotFoundError as e:  # a device install (no compiler extra): say what is missing
            _unavailable(sub, name, e.name or str(e))
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
        p.set_defaults(_run=mod.run)
    return parser


def _unavailable(sub, name: str, missing: str) -> None:
    """A command whose dependencies this install lacks still parses, then says how to get them."""
    help_ = f"(needs {missing}: pip install 'sc2-splitter[compiler]')"
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args: argparse.Namespace) -> int:
        raise SplitterError(f"`splitter {name}` needs {missing}, which this install lacks (the "
                            f"device runtime only has encode); pip install 'sc2-splitter[compiler]'")

    p.set_defaults(_run=run)


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
    except ModuleNotFoundError as e:
        if e.name not in _COMPILER_MODULES:
            raise
        print(f"splitter: error: `splitter {args.command}` needs {e.name}, which this install "
              f"lacks (a device install runs encode only); pip install 'sc2-splitter[compiler]'",
              file=sys.stderr)
        return 2


# top-level modules of the compiler extra: missing on a device install
_COMPILER_MODULES = {"torch", "torchvision", "timm", "compressai", "networkx", "onnx",
                     "onnxscript", "matplotlib", "tqdm", "yaml", "sklearn", "fastapi", "uvicorn"}

