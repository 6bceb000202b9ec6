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

from splitter.errors import PostconditionError, PreconditionError

__all__ = ["EncodeCall", "DecodeCall", "InsertBottleneck", "inserted", "ENCODE", "DECODE"]

ENCODE = "bottleneck_encode"
DECODE = "bottleneck_decode"


class _SideCall(nn.Module):
    """Calls one side of a bottleneck as an FX leaf module, holding only that side's layers.

    The bottleneck is kept as a plain attribute, not a submodule, so a head built from an
    :class:`EncodeCall` carries the encoder's weights and never the decoder's (and a tail
    the decoder's, never the encoder's): each side holds what it reads. Entropy-model
    constants it also reads (medians) are counted with the coder tables, not as weights.
    """

    def __init__(self, bottleneck: nn.Module, side: dict[str, nn.Module]):
        super().__init__()
        object.__setattr__(self, "bottleneck", bottleneck)  # not registered on purpose
        for name, module in side.items():
            self.add_module(name, module)


class EncodeCall(_SideCall):
    """``forward = bottleneck.encode``; holds ``bottleneck.encode_modules()``."""

    def __init__(self, bottleneck: nn.Module):
        super().__init__(bottleneck, bottleneck.encode_modules())

    def forward(self, x):
        return self.bottleneck.encode(x)


class DecodeCall(_SideCall):
    """``forward = bottleneck.decode``; holds ``bottleneck.decode_modules()``."""

    def __init__(self, bottleneck: nn.Module):
        super().__init__(bottleneck, bottleneck.decode_modules())

    def forward(self, symbols):
        return self.bottleneck.decode(symbols)


class InsertBottleneck(PassBase):
    """Returns a new GraphModule with the bottleneck on tensor ``node_name`` (or replacing the
    head that computes it).

    The two nodes it adds carry ``node.meta["bottleneck"]``: ``"encode"`` (its output is the
    symbols) and ``"decode"`` (the reconstructed tensor); :func:`inserted` finds them.
    """

    def __init__(self, bottleneck: nn.Module, node_name: str, mode: str = "insert"):
        if mode not in ("insert", "replace"):
            raise PreconditionError(f"InsertBottleneck: mode must be 'insert' or 'replace', not {mode!r}")
        self.bottleneck = bottleneck
        self.node_name = node_name
        self.mode = mode

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        # torch's PassBase.__call__ hands ``ensures`` the input graph; check the output
        self.requires(graph_module)
        result = self.call(graph_module)
        self.ensures(result.graph_module)
        return result

    def requires(self, graph_module: fx.GraphModule) -> None:
        node = next((n for n in graph_module.graph.nodes if n.name == self.node_name), None)
        if node is None:
            raise PreconditionError(f"InsertBottleneck: no node {self.node_name!r} in the graph")
        if not node.users:
            raise PreconditionError(f"InsertBottleneck: nothing reads {self.node_name!r}, so a "
                                    f"bottleneck there would be dead code; place it on the tensor "
                                    f"that crosses the cut")
        if ENCODE in dict(graph_module.named_children()):
            raise PreconditionError("InsertBottleneck: the graph already has a bottleneck")

    def ensures(self, graph_module: fx.GraphModule) -> None:
        try:
            enc, dec = inserted(graph_module)
        except LookupError as e:
            raise PostconditionError(f"InsertBottleneck: {e}") from None
        if not dec.users:
            raise PostconditionError("InsertBottleneck: nothing reads the decoded tensor")

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
        enc.meta["bottleneck"], dec.meta["bottleneck"] = "encode", "decode"
        # Everything that read the cut tensor now reads the decoder's reconstruction; in
        # replace mode the old head then has no users and dead-code elimination drops it.
        cut.replace_all_uses_with(dec, delete_user_cb=lambda u: u is not enc)
        g.eliminate_dead_code()
        if self.mode == "replace":
            _after_input_checks(g, enc, dec)
        g.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return PassResult(gm, True)


def _after_input_checks(g: fx.Graph, enc: fx.Node, dec: fx.Node) -> None:
    """Move encode/decode after the input checks that survive dead-code elimination.

    torch.export leaves shape guards (``_guards_fn(x)``: no users, impure, so kept) that
    read the image. They belong on the device with the image; with the encoder placed
    before them the image would stay live across the cut.
    """
    checks = [n for n in g.nodes if n.op not in ("output", "placeholder", "get_attr")
              and not n.users and n is not enc and n is not dec
              and all(a.op in ("placeholder", "get_attr") for a in n.all_input_nodes)]
    if checks:
        checks[-1].append(enc)
        enc.append(dec)


def inserted(gm: fx.GraphModule) -> tuple[fx.Node, fx.Node]:
    """The ``(encode, decode)`` nodes :class:`InsertBottleneck` added to ``gm``."""
    found = {n.meta.get("bottleneck"): n for n in gm.graph.nodes if "bottleneck" in n.meta}
    if set(found) != {"encode", "decode"}:
        raise LookupError("the graph has no inserted encode/decode pair")
    return found["encode"], found["decode"]
