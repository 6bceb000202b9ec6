"""insert / replace: put a bottleneck into a graph at a single-tensor cut.

::

    insert:   … ─► n ─► users            becomes   … ─► n ─► encode ─► symbols ─► decode ─► users
    replace:  x ─► [head] ─► n ─► users  becomes   x ─► encode ─► symbols ─► decode ─► users
                                                   (the old head is dead code and removed)

The bottleneck's ``encode`` and ``decode`` become two ``call_module`` nodes (thin wrappers
sharing one bottleneck), so partitioning right after the ``encode`` node puts the symbols
on the wire. The input graph is never modified: the pass works on a copy whose submodules
are shared with the original.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

__all__ = ["EncodeCall", "DecodeCall", "InsertBottleneck", "ENCODE", "DECODE"]

ENCODE = "bottleneck_encode"
DECODE = "bottleneck_decode"


class EncodeCall(nn.Module):
    """``forward = bottleneck.encode`` so FX can call it as a module (a leaf)."""

    def __init__(self, bottleneck: nn.Module):
        super().__init__()
        self.bottleneck = bottleneck

    def forward(self, x):
        return self.bottleneck.encode(x)


class DecodeCall(nn.Module):
    """``forward = bottleneck.decode``."""

    def __init__(self, bottleneck: nn.Module):
        super().__init__()
        self.bottleneck = bottleneck

    def forward(self, symbols):
        return self.bottleneck.decode(symbols)


class InsertBottleneck(PassBase):
    """Returns a new GraphModule with the bottleneck after ``node_name`` (or replacing the head).

    After the pass, ``self.symbols`` is the name of the node that produces the symbols.
    """

    def __init__(self, bottleneck: nn.Module, node_name: str, mode: str = "insert"):
        if mode not in ("insert", "replace"):
            raise ValueError(f"mode must be 'insert' or 'replace', not {mode!r}")
        self.bottleneck = bottleneck
        self.node_name = node_name
        self.mode = mode
        self.symbols: str | None = None  # name of the node producing the symbols
        self.decoded: str | None = None  # name of the node reconstructing the cut tensor

    def requires(self, graph_module: fx.GraphModule) -> None:
        names = {n.name for n in graph_module.graph.nodes}
        if self.node_name not in names:
            raise ValueError(f"no node {self.node_name!r} in the graph")
        if ENCODE in dict(graph_module.named_children()):
            raise ValueError("the graph already has a bottleneck")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        graph.output(graph.graph_copy(graph_module.graph, env))
        gm = fx.GraphModule(graph_module, graph, graph_module.__class__.__name__)
        gm.meta.update(graph_module.meta)
        gm.add_submodule(ENCODE, EncodeCall(self.bottleneck))
        gm.add_submodule(DECODE, DecodeCall(self.bottleneck))

        g = gm.graph
        cut = next(n for n in g.nodes if n.name == self.node_name)
        source = cut if self.mode == "insert" else next(
            n for n in g.nodes if n.op == "placeholder" and "tensor_meta" in n.meta)
        with g.inserting_after(source):
            enc = g.call_module(ENCODE, (source,))
        with g.inserting_after(enc):
            dec = g.call_module(DECODE, (enc,))
        # Everything that read the cut tensor now reads the decoder's reconstruction; in
        # replace mode the old head then has no users and dead-code elimination drops it.
        cut.replace_all_uses_with(dec, delete_user_cb=lambda u: u is not enc)
        g.eliminate_dead_code()
        g.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        self.symbols, self.decoded = enc.name, dec.name
        return PassResult(gm, True)
