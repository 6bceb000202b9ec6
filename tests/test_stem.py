"""targets.stem: the space-to-depth stem rewrite is exact in fp32, bit-exact once quantized,
and leaves every conv it cannot rewrite exactly alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from targets.int8 import _quantize, _session, prepared, quantize_head
from targets.stem import space_to_depth_stem


def _head(cin=3, k=7, pads=(3, 3, 3, 3), size=(32, 32), stride=2, out=16, seed=0) -> bytes:
    """image -> Conv (the stem) -> Relu -> Conv 1x1 -> features, random weights and biases."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((out, cin, k, k)).astype(np.float32) / k
    b0 = rng.standard_normal(out).astype(np.float32) * 0.1
    w1 = rng.standard_normal((8, out, 1, 1)).astype(np.float32) / 4
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w0", "b0"], ["c0"], name="stem", kernel_shape=[k, k],
                          strides=[stride, stride], pads=list(pads)),
         helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
         helper.make_node("Conv", ["r0", "w1"], ["features"], name="pw", kernel_shape=[1, 1])],
        "head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", cin, *size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, "h", "w"])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(b0, "b0"),
         numpy_helper.from_array(w1, "w1")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _images(cin, size, n=6, seed=1):
    return np.random.default_rng(seed).uniform(-2, 2, (n, cin, *size)).astype(np.float32)


def _rewritten(fp32: bytes) -> tuple[bytes, dict]:
    m = onnx.load_from_string(fp32)
    done = space_to_depth_stem(m)
    return m.SerializeToString(), done


# (kernel, pads t/l/b/r, H x W): ResNet's 7x7 stem, timm's TF-"same" 3x3 (pads only at the
# end), odd sizes that need an extra zero row/column, an even kernel
CASES = [(7, (3, 3, 3, 3), (32, 32)), (3, (0, 0, 1, 1), (32, 32)), (3, (1, 1, 1, 1), (33, 31)),
         (7, (3, 3, 3, 3), (31, 30)), (4, (1, 1, 1, 1), (30, 30)), (5, (0, 0, 0, 0), (21, 22))]


@pytest.mark.parametrize("k,pads,size", CASES)
def test_rewrite_is_exact_in_fp32_and_bit_exact_in_int8(k, pads, size):
    fp32 = _head(k=k, pads=pads, size=size)
    s2d, done = _rewritten(fp32)
    assert list(done) == ["stem"]
    ops = [n.op_type for n in onnx.load_from_string(s2d).graph.node]
    assert ops[ops.index("SpaceToDepth") + 1] == "Conv" and ("Pad" in ops) == any(done["stem"][:-1])
    stem = next(n for n in onnx.load_from_string(s2d).graph.node if n.name == "stem")
    attrs = {a.name: helper.get_attribute_value(a) for a in stem.attribute}
    assert attrs["strides"] == [1, 1] and attrs["kernel_shape"] == [-(-k // 2)] * 2
    x = _images(3, size)
    a = _session(fp32, 1).run(None, {"image": x})[0]
    b = _session(s2d, 1).run(None, {"image": x})[0]
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    # in the int8 head: the same integers, so the very same outputs
    q = _quantize(prepared(fp32), _images(3, size, n=8, seed=2), exclude=[], method="percentile",
                  percentile=99.99, per_channel=True, reduce_range=False, activation="uint8")
    q2, done = _rewritten(q)
    assert list(done) == ["stem"]
    ya, yb = (_session(m, 1).run(None, {"image": x})[0] for m in (q, q2))
    assert np.array_equal(ya, yb)
    assert not np.allclose(ya, a, rtol=0, atol=1e-6)  # it did quantize
    m = onnx.load_from_string(q2)
    prod = {o: n for n in m.graph.node for o in n.output}
    quant = prod[prod[next(n for n in m.graph.node if n.name == "stem").input[0]].input[0]]
    assert quant.op_type == "QuantizeLinear" and quant.input[0] == "stem_s2d"


@pytest.mark.parametrize("kw", [dict(stride=1), dict(cin=8), dict(k=4, pads=(1, 1, 1, 1), size=(31, 31))],
                         ids=["stride-1", "8-channels", "trailing-row-unread"])
def test_convs_it_cannot_rewrite_exactly_are_left_alone(kw):
    fp32 = _head(**kw)
    s2d, done = _rewritten(fp32)
    assert done == {}
    assert onnx.load_from_string(s2d).graph == onnx.load_from_string(fp32).graph


def test_quantize_head_uses_it_unless_the_stem_stays_fp32():
    fp32 = _head(size=(32, 32))
    cal = _images(3, (32, 32), n=8)
    int8, rep = quantize_head(fp32, cal, min_top1=0.0, timing_runs=1)
    assert rep.stem_space_to_depth == ["stem"]
    q = onnx.load_from_string(int8)
    assert [n.name for n in q.graph.node if n.op_type in ("Pad", "SpaceToDepth")
            and n.input[0] in ("image", "stem_s2d_padded")] == ["stem_s2d_pad", "stem_s2d"]
    # GPTQ ran first, on the 7x7 stem, and the file stores those int8 weights as they are
    # (the session folds their new layout): weight bits exactly a quarter of fp32
    prod = {o: n for n in q.graph.node for o in n.output}
    dq = prod[next(n for n in q.graph.node if n.name == "stem").input[1]]
    stored = dq.input[0]
    while stored not in {t.name for t in q.graph.initializer}:
        stored = prod[stored].input[0]
    w = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == stored))
    assert w.shape == (16, 3, 7, 7) and w.dtype == np.int8
    assert rep.weight_bits_ratio == 0.25
    _, kept = quantize_head(fp32, cal, min_top1=0.0, keep_fp32=("stem",), rounding="nearest",
                            timing_runs=1)
    assert kept.stem_space_to_depth == [] and "stem" in kept.fp32_nodes
