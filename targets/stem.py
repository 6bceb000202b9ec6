"""Space-to-depth stem: a stride-2 conv on a few input channels, rewritten exactly as a
``SpaceToDepth`` and a stride-1 conv on four times the channels (an ONNX graph rewrite).

::

    image (N, C, H, W) ─► Conv k×k, stride 2, pads (t, l, b, r) ─► (N, O, Ho, Wo)
        ==
    image ─► Pad (t, l, b + e, r + e') ─► SpaceToDepth(2) ─► (N, 4C, Hr/2, Wr/2)
          ─► Conv ⌈k/2⌉×⌈k/2⌉, stride 1, no pads ─► (N, O, Ho, Wo)

In an int8 (QDQ) head the Pad and SpaceToDepth go before the image's QuantizeLinear and the
int8 weights are rearranged, not re-quantized (``targets.int8`` applies it after GPTQ).

Why. An int8 conv with three input channels is slow in onnxruntime: its im2col gathers
3-byte rows (K = 3·k·k, not a multiple of the 4-byte groups the VNNI kernels take), so on
this CPU ResNet-50's int8 stem (7×7, 3 → 64 channels, 224×224) ran no faster than the fp32
one (1.6 vs 1.5 ms, onnxruntime's profiler) while every later int8 conv ran 2-3× faster. As
SpaceToDepth + a 4×4 conv on 12 channels the same int8 conv took 0.9 ms. It is the stem
rewrite that MLPerf's ResNet-50 submissions on TPUs use; it is written here because neither
onnxruntime's optimizer nor its quantizer has it.

Exactness. With ``Wp`` the kernel zero-padded to an even size 2K (K = ⌈k/2⌉),
``out[o, i, j] = Σ_{c,u,v} Wp[o, c, u, v] · xpad[c, 2i + u, 2j + v]`` and, writing
``u = 2a + p``, ``v = 2b + q``, ``xpad[c, 2(i + a) + p, 2(j + b) + q]`` is channel
``(2p + q)·C + c`` of ``SpaceToDepth(xpad)`` at ``(i + a, j + b)``, ONNX's channel order.
The padded kernel's extra taps are zeros, so the result is the same sum in another order:
equal up to float rounding in fp32; in int8 the same integer sum, so the int8 head's outputs
are bit-identical (the int8 weights are moved, not re-rounded; the image keeps its scale and
zero point; a zero pad is the zero point, as in QLinearConv's own padding). The extra
bottom/right rows ``e`` only meet zero taps.

Applies to a ``Conv`` that reads the graph's input (in a QDQ graph: through the image's own
QuantizeLinear/DequantizeLinear pair) with stride 2, group 1, dilation 1, static H and W, and
C ≤ 4 (a 4C ≤ 16 channel input). Used on the int8 path only: in fp32 the rewritten stem is
slower (more multiply-adds, 8×8 instead of 7×7 taps).
"""

from __future__ import annotations

import numpy as np

__all__ = ["space_to_depth_stem", "MAX_CHANNELS"]

MAX_CHANNELS = 4


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _plan(node, w: np.ndarray, in_shape):
    """((pads t, l, b + e, r + e'), (K, K')) for a stem conv this rewrite takes, else None."""
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or a.get("group", 1) != 1:
        return None
    if list(a.get("strides", [1, 1])) != [2, 2] or list(a.get("dilations", [1, 1])) != [1, 1]:
        return None
    if w.ndim != 4 or w.shape[1] > MAX_CHANNELS or w.shape[2] < 2 or w.shape[3] < 2:
        return None
    h, wd = in_shape
    if not isinstance(h, int) or not isinstance(wd, int) or h <= 0 or wd <= 0:
        return None
    pt, pl, pb, pr = list(a.get("pads", [0, 0, 0, 0]))
    kh, kw = w.shape[2:]
    out_h, out_w = (h + pt + pb - kh) // 2 + 1, (wd + pl + pr - kw) // 2 + 1
    kh2, kw2 = -(-kh // 2), -(-kw // 2)
    eb = 2 * (out_h + kh2 - 1) - (h + pt + pb)  # rows the 2K-tall kernel reads past the pads
    er = 2 * (out_w + kw2 - 1) - (wd + pl + pr)
    if eb < 0 or er < 0:  # trailing rows no output reads: would need a crop; leave the conv
        return None
    return (pt, pl, pb + eb, pr + er), (kh2, kw2)


def _s2d_kernel(w: np.ndarray, k2: tuple[int, int]) -> np.ndarray:
    """(O, C, kh, kw) -> (O, 4C, K, K') in SpaceToDepth's channel order (2p + q)·C + c."""
    o, c, kh, kw = w.shape
    wp = np.zeros((o, c, 2 * k2[0], 2 * k2[1]), dtype=w.dtype)
    wp[:, :, :kh, :kw] = w
    # wp[o, c, 2a + p, 2b + q] -> out[o, (2p + q)·C + c, a, b]
    wp = wp.reshape(o, c, k2[0], 2, k2[1], 2).transpose(0, 3, 5, 1, 2, 4)
    return np.ascontiguousarray(wp.reshape(o, 4 * c, k2[0], k2[1]))


def _layout_nodes(wname: str, shape, k2, base: str):
    """Pad -> Reshape -> Transpose -> Reshape of the stored (O, C, k, k') int8 kernel into
    ``_s2d_kernel``'s layout, as graph nodes on constants: onnxruntime folds them when the
    session starts, so the file keeps exactly the quantized weights (weight bits stay 1/4 of
    fp32) and the int8 conv still reads a constant int8 tensor through its DequantizeLinear."""
    from onnx import helper, numpy_helper

    o, c, kh, kw = shape
    kk, kk2 = k2
    consts = [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 2 * kk - kh, 2 * kk2 - kw],
                                               np.int64), f"{base}_s2d_wpads"),
              numpy_helper.from_array(np.array([o, c, kk, 2, kk2, 2], np.int64), f"{base}_s2d_wsplit"),
              numpy_helper.from_array(np.array([o, 4 * c, kk, kk2], np.int64), f"{base}_s2d_wshape")]
    # (targets.int8.LAYOUT_OPS: the ops weight_bits and stored_weight look through)
    nodes = [helper.make_node("Pad", [wname, consts[0].name], [f"{base}_s2d_w0"],
                              name=f"{base}_s2d_wpad", mode="constant"),
             helper.make_node("Reshape", [f"{base}_s2d_w0", consts[1].name], [f"{base}_s2d_w1"],
                              name=f"{base}_s2d_wsplit"),
             helper.make_node("Transpose", [f"{base}_s2d_w1"], [f"{base}_s2d_w2"],
                              name=f"{base}_s2d_wperm", perm=[0, 3, 5, 1, 2, 4]),
             helper.make_node("Reshape", [f"{base}_s2d_w2", consts[2].name], [f"{base}_s2d_w"],
                              name=f"{base}_s2d_wshape")]
    return consts, nodes


def _readers(graph) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            out[i] = out.get(i, 0) + 1
    return out


def _stem(node, inputs, prod, readers, inits):
    """For a conv on the graph input, ``(node whose input 0 becomes the SpaceToDepth output,
    weight initializer name)``: the conv itself in fp32, or in a QDQ graph the QuantizeLinear
    of the image whose codes reach only this conv, with the int8 weights behind a per-output-
    channel (axis 0) or per-tensor DequantizeLinear. Else ``None``."""
    from onnx import helper

    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = node.input[1]
    if w not in inits:  # QDQ: int8 weights through a DequantizeLinear
        dq = prod.get(w)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
        if inits[dq.input[1]].size > 1 and axis != 0:
            return None
        w = dq.input[0]
    if readers.get(w, 0) != 1:  # a weight shared with another node: leave it
        return None
    if node.input[0] in inputs:
        return node, w
    dq = prod.get(node.input[0])
    q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inputs and \
            readers.get(q.output[0]) == 1 and readers.get(dq.output[0]) == 1:
        return q, w
    return None


def space_to_depth_stem(model) -> dict[str, list[str]]:
    """Rewrite, in place, each conv of ``model`` (an ``onnx.ModelProto``, fp32 or QDQ) that
    reads the graph input and qualifies (module docstring). Returns ``{conv name: [the Pad
    and SpaceToDepth nodes put before it]}``; the conv keeps its name and output. In a QDQ
    graph they go before the image's QuantizeLinear: its scale and zero point stay, and a
    zero pad quantizes to the zero point, as QLinearConv's own padding does."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes = {i.name: tuple(d.dim_value if d.HasField("dim_value") else None
                            for d in i.type.tensor_type.shape.dim) for i in graph.input}
    prod = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    inputs = {i.name for i in graph.input} - set(inits)  # the graph inputs no initializer fills
    done: dict[str, list[str]] = {}
    front = []
    for idx, node in enumerate(graph.node):
        found = _stem(node, inputs, prod, readers, inits)
        if found is None:
            continue
        feeder, wname = found
        src = feeder.input[0]
        if len(shapes[src]) != 4:
            continue
        plan = _plan(node, inits[wname], shapes[src][2:])
        if plan is None:
            continue
        (pt, pl, pb, pr), k2 = plan
        base = node.name or f"stem{idx}"
        added, feed = [], src
        if any((pt, pl, pb, pr)):
            pads = numpy_helper.from_array(np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64),
                                           f"{base}_s2d_pads")
            graph.initializer.append(pads)
            added.append(helper.make_node("Pad", [feed, pads.name], [f"{base}_s2d_padded"],
                                          name=f"{base}_s2d_pad", mode="constant"))
            feed = f"{base}_s2d_padded"
        added.append(helper.make_node("SpaceToDepth", [feed], [f"{base}_s2d"],
                                      name=f"{base}_s2d", blocksize=2))
        feeder.input[0] = f"{base}_s2d"
        if wname == node.input[1]:  # fp32: the kernel itself is rearranged
            for t in graph.initializer:
                if t.name == wname:
                    t.CopyFrom(numpy_helper.from_array(_s2d_kernel(inits[wname], k2), t.name))
        else:  # int8: stored as quantized; rearranged by constant nodes the session folds
            consts, layout_nodes = _layout_nodes(wname, inits[wname].shape, k2, base)
            graph.initializer.extend(consts)
            front += layout_nodes
            dq = prod[node.input[1]]
            dq.input[0] = layout_nodes[-1].output[0]
        for v in [v for v in graph.value_info if v.name in (wname, node.input[1])]:
            graph.value_info.remove(v)  # the weight's old shape
        keep = [a for a in node.attribute if a.name not in
                ("strides", "pads", "kernel_shape", "dilations", "auto_pad", "group")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("strides", [1, 1]),
                                      helper.make_attribute("pads", [0, 0, 0, 0]),
                                      helper.make_attribute("kernel_shape", list(k2))])
        front += added
        done[node.name] = [n.name for n in added]
    if done:  # the new nodes read only the graph input: at the front, the order stays valid
        nodes = front + [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return done
