"""splitter: a compiler for split computing.

A reference model goes in; a device half (head), a server half (tail) and a learned
compression bottleneck between them come out, with their costs counted and their artifacts
ready to deploy. See DESIGN.md for the data flow::

    compile/  model ─► trace ─► split (+ bottleneck) ─► costs
    train/    split ─► fit (two-stage distillation)
    deploy/   split ─► export ─► bundle ─► runtime (device encode, server decode), serve
    explore/  model ─► sweep every cut ─► latency, plots
    cli/      the ``splitter`` command, on top of all of them

This face is lazy (PEP 562): ``import splitter`` or ``import splitter.errors`` loads no
torch; ``splitter.split`` imports the compiler on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["trace", "split", "sweep", "fit", "export", "load_bundle", "Graph", "Split",
           "SplitterError", "BottleneckSpec"]
__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "trace": "splitter.compile.trace",
    "Graph": "splitter.compile.trace",
    "split": "splitter.compile.split",
    "Split": "splitter.compile.split",
    "BottleneckSpec": "bottlenecks.spec",
    "fit": "splitter.train.fit",
    "export": "splitter.deploy.export",
    "load_bundle": "splitter.deploy.runtime",
    "sweep": "splitter.explore.sweep",
    "SplitterError": "splitter.errors",
}

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from bottlenecks.spec import BottleneckSpec
    from splitter.compile.split import Split, split
    from splitter.compile.trace import Graph, trace
    from splitter.deploy.export import export
    from splitter.deploy.runtime import load_bundle
    from splitter.errors import SplitterError
    from splitter.explore.sweep import sweep
    from splitter.train.fit import fit


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'splitter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
