"""splitter: a compiler for split computing.

A reference model goes in; a device half (head), a server half (tail) and a learned
compression bottleneck between them come out, with their costs counted and their artifacts
ready to deploy. See DESIGN.md for the data flow.
"""

from splitter.errors import SplitterError
from splitter.export import export
from splitter.fit import fit
from splitter.runtime import load_bundle
from splitter.split import Split, split
from splitter.sweep import sweep
from splitter.trace import Graph, trace

__all__ = ["trace", "split", "sweep", "fit", "export", "load_bundle", "Graph", "Split", "SplitterError"]
__version__ = "0.1.0"
