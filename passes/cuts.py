"""cuts: every place an annotated graph can be cut, with the tensors that cross it.

The graph is a DAG of FX nodes (networkx). Nodes are taken in execution order; a cut after
position ``i`` sends every value produced at or before ``i`` that a node after ``i`` reads
(the live set). Two kinds of nodes never cross:

- *constants*: nodes that do not depend on any input (``get_attr`` weights and anything
  computed only from them, such as attention-mask tables); each side recomputes them;
- Python values (an int from ``x.shape``, a ``None`` mask) are never sent either; the tail
  re-creates each one (see :class:`ScalarInfo`): one that is the same at every batch size
  is written into the tail as the traced value, which fixes the tail to the traced
  per-sample shape (``CutPoint.fixed_shape``); one that follows the batch size is read off
  the shape of a tensor that crosses. A position holding a Python value that can be
  re-created neither way (or a graph without a batch probe) is not a cut.

A cut that coincides with the end of a module's output is named by the module path (the
outermost one when several end there), the other names are kept as aliases. ``input`` (send
the input: full offloading) and ``output`` (send the result: local computing) are the ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from splitter.tensors import TensorSpec

__all__ = ["TensorInfo", "ScalarInfo", "CutPoint", "find_cut_points", "to_networkx", "constant_nodes"]


TensorInfo = TensorSpec  # the name this module used; one class for every tensor description


@dataclass(frozen=True)
class ScalarInfo:
    """A Python value live across a cut that the tail re-creates instead of receiving.

    ``how == "const"``: the value is the same at every batch size; ``value`` is the traced
    value and the tail holds it as a literal. ``how == "size"``: the value follows the batch
    size; ``value`` is ``(k, d)`` and the tail reads ``wire[k].shape[d]``.
    """

    name: str
    how: str
    value: Any


@dataclass(frozen=True)
class CutPoint:
    """A place to cut: after node ``node`` (position ``index`` in execution order)."""

    name: str
    index: int
    node: str
    module_path: str
    tensors: tuple[TensorSpec, ...]  # per sample
    aliases: tuple[str, ...] = field(default=())
    scalars: tuple[ScalarInfo, ...] = field(default=())  # Python values the tail re-creates

    @property
    def single(self) -> bool:
        """True when exactly one tensor crosses (a bottleneck can go here)."""
        return len(self.tensors) == 1

    @property
    def fixed_shape(self) -> bool:
        """True when the tail holds traced values of the input's per-sample shape.

        Such a split is exact for inputs of the traced ``(C, H, W)`` only (any batch size);
        the tail checks the wire's shape.
        """
        return any(s.how == "const" for s in self.scalars)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.tensors[0].shape if self.single else None

    @property
    def dtype(self) -> str | None:
        return self.tensors[0].dtype if self.single else None


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """The graph's data dependencies as a networkx DAG over node names."""
    g = nx.DiGraph()
    for i, n in enumerate(gm.graph.nodes):
        g.add_node(n.name, index=i, op=n.op)
        for inp in n.all_input_nodes:
            g.add_edge(inp.name, n.name)
    return g


def constant_nodes(gm: fx.GraphModule, dag: nx.DiGraph | None = None) -> set[str]:
    """Names of nodes that do not depend on any placeholder (each side can recompute them)."""
    dag = dag if dag is not None else to_networkx(gm)
    live: set[str] = set()
    for n in gm.graph.nodes:
        # Non-tensor placeholders (defaulted flags, None masks) are constants too.
        if n.op == "placeholder" and "tensor_meta" in n.meta:
            live.add(n.name)
            live |= nx.descendants(dag, n.name)
    return {n.name for n in gm.graph.nodes if n.name not in live and n.op != "output"}


def _tensor_info(node: fx.Node) -> TensorSpec | None:
    """The node's tensor per sample (the traced batch dimension dropped)."""
    tm = node.meta.get("tensor_meta")
    if not isinstance(tm, TensorMetadata):
        return None
    return TensorSpec(name=node.name, shape=tuple(int(d) for d in tm.shape[1:]),
                      dtype=str(tm.dtype).replace("torch.", ""))


# Reading these from a tensor reads its metadata, never its data.
_META_ATTRS = {"shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad"}
_META_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "get_device"}


def _shape_only(node: fx.Node, memo: dict[str, bool]) -> bool:
    """True when ``node``'s Python value is computed from tensor metadata alone (never data).

    Only such a value is a function of the input's shape, so the traced value (or the
    probe's) holds for every input of that shape.
    """
    if node.name in memo:
        return memo[node.name]
    memo[node.name] = False  # guards recursion; the graph is a DAG, so this is never read
    ok = "value" in node.meta and node.op in ("call_function", "call_method")
    reads_meta = (node.op == "call_function" and node.target is getattr
                  and len(node.args) > 1 and node.args[1] in _META_ATTRS) or (
        node.op == "call_method" and node.target in _META_METHODS)
    for a in node.all_input_nodes if ok else ():
        if "tensor_meta" in a.meta:
            ok = ok and reads_meta and a is node.args[0]
        else:
            ok = ok and (a.op == "placeholder" or _shape_only(a, memo))
    memo[node.name] = ok
    return ok


def _scalar_info(node: fx.Node, wire: list[fx.Node], memo: dict[str, bool]) -> ScalarInfo | None:
    """How the tail re-creates the Python value of ``node`` from ``wire`` (None: it cannot).

    Needs ``meta["value"]`` (annotate), ``meta["probe"]`` (annotate's batch probe) and a
    value computed from shapes alone (:func:`_shape_only`).
    """
    if "value" not in node.meta or "probe" not in node.meta or not _shape_only(node, memo):
        return None
    value, probe = node.meta["value"], node.meta["probe"]
    if type(value) is type(probe) and value == probe:
        return ScalarInfo(node.name, "const", value)
    if type(value) is int and type(probe) is int:
        for k, w in enumerate(wire):  # the wire dimension that follows the batch the same way
            shape, pshape = w.meta["tensor_meta"].shape, w.meta.get("probe")
            for d in range(len(shape)):
                if pshape and int(shape[d]) == value and pshape[d] == probe:
                    return ScalarInfo(node.name, "size", (k, d))
    return None


def _module_ends(nodes: list[fx.Node], consts: set[str], preferred: set[str]) -> dict[int, list[str]]:
    """Position -> module paths whose last computing node sits there."""
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if n.op in ("placeholder", "output", "get_attr") or n.name in consts:
            continue
        path = n.meta.get("module_path", "")
        parts = path.split(".") if path else []
        for k in range(1, len(parts) + 1):
            last[".".join(parts[:k])] = i
    ends: dict[int, list[str]] = {}
    for path, i in last.items():
        ends.setdefault(i, []).append(path)
    for paths in ends.values():
        paths.sort(key=lambda p: (p not in preferred, p.count("."), p))
    return ends


def find_cut_points(gm: fx.GraphModule, preferred: set[str] | None = None) -> list[CutPoint]:
    """All cut points of an annotated graph, in execution order (``input`` first, ``output`` last).

    Where several module paths end at one cut, a path in ``preferred`` (timm's
    ``feature_info`` stage names) names it, else the outermost.
    """
    dag = to_networkx(gm)
    if not nx.is_directed_acyclic_graph(dag):  # FX graphs always are; guard the invariant
        raise RuntimeError("graph has a cycle")
    nodes = list(gm.graph.nodes)
    pos = {n.name: i for i, n in enumerate(nodes)}
    consts = constant_nodes(gm, dag)
    last_use = {
        n.name: max((pos[u.name] for u in n.users), default=pos[n.name]) for n in nodes
    }
    ends = _module_ends(nodes, consts, preferred or set())
    out_index = len(nodes) - 1
    compute = [i for i, n in enumerate(nodes)
               if n.op not in ("placeholder", "output", "get_attr") and n.name not in consts]

    cuts: list[CutPoint] = []
    used_names: set[str] = set()
    first_compute = compute[0] if compute else out_index
    positions = [first_compute - 1] + compute
    live_set: dict[str, fx.Node] = {}  # insertion-ordered: execution order
    memo: dict[str, bool] = {}  # node name -> its Python value comes from shapes alone
    expire: dict[int, list[str]] = {}
    cursor = 0
    for i in positions:
        while cursor <= i:  # sweep: values become live when made, die after their last use
            n = nodes[cursor]
            if n.name not in consts and n.op != "get_attr" and last_use[n.name] > cursor:
                live_set[n.name] = n
                expire.setdefault(last_use[n.name], []).append(n.name)
            for dead in expire.pop(cursor, []):
                live_set.pop(dead, None)
            cursor += 1
        if i != positions[0] and "tensor_meta" not in nodes[i].meta:
            continue  # after an assert or a shape lookup: the same cut as the one before
        live = [n for n in live_set.values() if _tensor_info(n) is not None]
        infos = [_tensor_info(n) for n in live]
        scalars = [_scalar_info(n, live, memo) for n in live_set.values() if _tensor_info(n) is None]
        if not live or any(s is None for s in scalars):
            continue
        if i == positions[0]:
            name, aliases, node_name, path = "input", (), live[0].name, ""
        elif i == compute[-1]:
            name, path = "output", ""
            node_name = nodes[i].name
            aliases = tuple(p for p in ends.get(i, []) if p not in used_names) + (node_name,)
        else:
            node_name = nodes[i].name
            paths = [p for p in ends.get(i, []) if p not in used_names]
            name = paths[0] if paths else node_name
            path = paths[0] if paths else nodes[i].meta.get("module_path", "")
            aliases = tuple(p for p in paths[1:]) + ((node_name,) if name != node_name else ())
        used_names.add(name)
        used_names.update(aliases)
        cuts.append(CutPoint(name=name, index=i, node=node_name, module_path=path,
                             tensors=tuple(infos), aliases=aliases,  # type: ignore[arg-type]
                             scalars=tuple(scalars)))  # type: ignore[arg-type]
    return cuts
