"""int8 device head: ``head.onnx`` (fp32) ─► static QDQ quantization ─► parity and speed report.

::

    head.onnx (fp32) ──┬─► onnxruntime quantize_static (QDQ, per-channel int8 weights,
    calibration images ┘     activations from the calibration images; symbol tail kept fp32)
                          ─► targets.rounding: GPTQ re-rounds the int8 conv weights on the
                             calibration images (same scales, same graph)
                          ─► targets.stem: a 3-channel stride-2 stem computed as SpaceToDepth
                             + a stride-1 conv on 12 channels (same integers) ─► head.int8.onnx
    eval images ─► fp32 head ─► symbols ─┬─► identical %, max |diff|
                ─► int8 head ─► symbols ─┘─► tail (fp32, caller's) ─► top-1 agreement
    fp32 and int8 heads, batch 1, N threads ─► median latency ─► which is faster
                                                   ─► Int8Report

What stays exact. A head ends in the bottleneck's symbol computation: for ``crbq`` a
per-sample min/max, an affine map, ``Round``, ``Clip`` and a ``Cast`` to uint8, with the
quantization parameters written into the symbols themselves; for ``entropy`` a ``Round``.
Those nodes are integer arithmetic on floats: a QuantizeLinear/DequantizeLinear pair inside
them would change the symbols' meaning (the parameter bytes crbq writes would no longer
decode), so every node that feeds no weighted op (Conv, Gemm, MatMul) downstream, the
*symbol tail*, is kept in fp32 through ``nodes_to_exclude`` whenever the head's output is
an integer tensor. A head that outputs float features (``identity``, a plain cut) has no
exact tail: all of it is quantized, its last residual add included. ``keep_fp32`` can add the
``stem`` (the first weighted op(s)), the ``last`` weighted op(s) (the layer whose output
the symbols are made from) and the ``depthwise`` convs (nine weights per channel, folded
batch norm: the layers int8 weights hurt most, and the ones int8 kernels speed up least).

The quantizer itself is onnxruntime's (``onnxruntime.quantization.quantize_static``); this
module only chooses its inputs and measures the result.

What decides parity (measured on pretrained EfficientNet-Lite0 cut after ``blocks.1``,
held-out crops of the bundled photos, see tests/test_int8.py): the int8 *weights*. With
16-bit activations and round-to-nearest int8 weights top-1 agreement stayed at 91.7% (60
crops); with 8-bit activations and 16-bit weights it reached 98.3%; the calibration method
(min-max, percentile, entropy) moved it by at most one image in 60. Per-conv weight error
is under 1%, yet the cut features moved by 7.4%: the error is in how the convs' outputs
cancel, so rounding that targets each conv's output on real inputs (GPTQ, sequential,
against the fp32 output; :mod:`targets.rounding`) lowers it, and correcting each conv's
int32 bias for the mean output shift left (bias correction) lowers it a little more. On 200
held-out crops top-1 agreement was 94-95 % with round-to-nearest weights, 97.0-97.5 % with
GPTQ + bias correction on 32 calibration crops and 98.0 % (196/200, crbq and plain cut) on
96; the test's 60 crops: 59/60. About 14 of the 200 crops have a top-1/top-2 logit gap under
0.06, which any perturbation may flip, so agreement at this level moves by an image or two
between equally good heads. Default: percentile (99.999, asymmetric), uint8 activations,
per-channel int8 weights rounded by GPTQ with bias correction, nothing but the symbol tail
in fp32; weights exactly 1/4 of the fp32 bits. Calibrate on about 100 real crops.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from splitter.errors import BundleError

__all__ = ["Int8Report", "quantize_head", "check_int8", "int8_head", "load_calibration",
           "split_tail", "symbol_tail", "weighted_nodes", "prepared", "stored_weight",
           "weight_bits", "head_latency_ms", "METHODS", "KEEP", "ROUNDINGS"]

METHODS = ("percentile", "entropy", "minmax", "distribution")
KEEP = ("stem", "last", "depthwise")
ROUNDINGS = ("gptq", "nearest")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_MIN_TOP1 = 0.98


class Int8Report(BaseModel):
    """The int8 head measured against the fp32 head it was made from (in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="activation calibration: percentile, entropy, minmax, distribution")
    percentile: float | None = Field(None, description="kept percentile of |activation| (percentile method)")
    per_channel: bool
    weight_rounding: Literal["nearest", "gptq"] = Field(
        "nearest", description="int8 weights rounded to nearest, or by GPTQ on the calibration "
                               "images with each conv's int32 bias then corrected for its mean "
                               "output shift (targets.rounding)")
    reduce_range: bool
    activation_type: str
    weight_type: str
    n_calibration: int = Field(description="calibration images")
    n_eval: int = Field(description="images the parity below was measured on")
    eval_is_calibration: bool = Field(description="parity measured on the calibration images themselves")
    fp32_nodes: list[str] = Field(description="nodes left in fp32 (the symbol tail of an integer "
                                              "head, and keep_fp32)")
    keep_fp32: list[str]
    stem_space_to_depth: list[str] = Field(
        default_factory=list, description="int8 stem convs run in their space-to-depth form, "
                                          "same integers (targets.stem; not with keep_fp32 'stem')")
    symbols_identical: float = Field(description="fraction of int8-head symbols equal to the fp32 head's")
    symbols_max_abs_diff: float
    top1_agreement: float | None = Field(
        None, description="fraction of eval images whose top-1 after the fp32 tail agrees (None: no tail)")
    min_top1: float = Field(description="the threshold top1_agreement must reach (int8_min_top1)")
    weight_bits_fp32: int = Field(description="bits of the weighted ops' weight tensors, fp32 head")
    weight_bits_int8: int = Field(description="the same weights in the int8 head")
    weight_bits_ratio: float
    head_bytes_fp32: int
    head_bytes_int8: int
    threads: int
    latency_ms_fp32: float = Field(description="median head time, batch 1, onnxruntime CPU")
    latency_ms_int8: float
    speedup: float = Field(description="latency_ms_fp32 / latency_ms_int8")
    faster: Literal["int8", "fp32"]
    passed: bool


# -- graph queries ------------------------------------------------------------------------
def _producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def weighted_nodes(model) -> list[str]:
    """Names of the weighted ops (Conv, Gemm, MatMul, ...) in topological order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED]


def symbol_tail(model) -> list[str]:
    """Nodes that feed no weighted op: the bottleneck's symbol computation, kept exact."""
    graph = model.graph
    prod = _producers(graph)
    body: set[str] = set()
    stack = [n for n in graph.node if n.op_type in WEIGHTED]
    while stack:
        n = stack.pop()
        if n.name in body:
            continue
        body.add(n.name)
        stack.extend(prod[i] for i in n.input if i in prod)
    return [n.name for n in graph.node if n.name not in body]


def _integer_output(model) -> bool:
    """Whether the head's first output is an integer tensor (the symbols of a coder)."""
    import onnx

    elem = model.graph.output[0].type.tensor_type.elem_type
    return elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                        onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _first_and_last(model) -> tuple[list[str], list[str]]:
    """Weighted ops fed by no other weighted op (stem) and feeding none (last)."""
    graph = model.graph
    prod = _producers(graph)
    cons: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def reaches(node, direction) -> bool:
        seen, stack = set(), [node]
        while stack:
            cur = stack.pop()
            nxt = ([prod[i] for i in cur.input if i in prod] if direction == "up"
                   else [c for o in cur.output for c in cons.get(o, [])])
            for m in nxt:
                if m.name in seen:
                    continue
                if m.op_type in WEIGHTED:
                    return True
                seen.add(m.name)
                stack.append(m)
        return False

    w = [n for n in graph.node if n.op_type in WEIGHTED]
    return [n.name for n in w if not reaches(n, "up")], [n.name for n in w if not reaches(n, "down")]


def _depthwise(model) -> list[str]:
    """Convs with one input channel per group (``group`` > 1 and weight ``(C, 1, k, k)``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1 and n.input[1] in inits and \
                numpy_helper.to_array(inits[n.input[1]]).shape[1] == 1:
            out.append(n.name)
    return out


LAYOUT_OPS = ("Reshape", "Transpose", "Pad")  # on stored int8 weights (targets.stem)


def _stored(name: str | None, inits: dict, prod: dict):
    while name is not None and name not in inits:
        p = prod.get(name)
        name = p.input[0] if p is not None and p.op_type in ("DequantizeLinear", *LAYOUT_OPS) else None
    return inits.get(name) if name is not None else None


def stored_weight(model, node):
    """The initializer a weighted op's weights are stored in: its weight input itself, or
    behind a DequantizeLinear and any layout ops on the stored int8 tensor (targets.stem);
    ``None`` when the weights are computed (not a constant)."""
    inits = {t.name: t for t in model.graph.initializer}
    return _stored(node.input[1] if len(node.input) > 1 else None, inits, _producers(model.graph))


def weight_bits(model) -> int:
    """Bits of the weight tensors the weighted ops read, as stored (:func:`stored_weight`)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}  # once, not once per weighted op
    prod = _producers(model.graph)
    total = 0
    for n in model.graph.node:
        t = _stored(n.input[1], inits, prod) if n.op_type in WEIGHTED and len(n.input) > 1 else None
        if t is not None:
            bits = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize * 8
            total += int(np.prod(numpy_helper.to_array(t).shape)) * bits
    return total


# -- running ------------------------------------------------------------------------------
def _session(data: bytes, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _run(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed != x.shape[0]:  # a static-batch head: one at a time
        return np.concatenate([sess.run(None, {name: x[i:i + fixed]})[0]
                               for i in range(0, x.shape[0], fixed)])
    return sess.run(None, {name: x})[0]


def head_latency_ms(heads: dict[str, bytes], shape: Sequence[int], *, threads: int = 1,
                    runs: int = 30, warmup: int = 3, stat: str = "median") -> dict[str, float]:
    """Milliseconds per batch-1 call of each ONNX head (``stat``: ``median`` or ``min`` of
    ``runs``), timed round-robin so that load from other processes falls on all alike."""
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    sessions = {k: _session(v, threads) for k, v in heads.items()}
    for s in sessions.values():
        for _ in range(warmup):
            _run(s, x)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            _run(s, x)
            times[k].append((time.perf_counter() - t0) * 1e3)
    pick = min if stat == "min" else statistics.median
    return {k: pick(v) for k, v in times.items()}


class _Reader:
    """``CalibrationDataReader`` over ``(N, C, H, W)`` images, one sample at a time."""

    def __init__(self, name: str, images: np.ndarray):
        self._it = iter([{name: images[i:i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # onnxruntime >= 1.17 may call it
        pass


def _calibration_options(method: str, percentile: float):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise BundleError(f"int8 calibration method must be one of {METHODS}, not {method!r}")
    cm = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
          "minmax": CalibrationMethod.MinMax, "distribution": CalibrationMethod.Distribution}[method]
    extra = {}
    if method == "percentile":  # asymmetric ranges: a ReLU6 output would waste half of uint8
        extra = {"CalibPercentile": percentile, "CalibTensorRangeSymmetric": False}
    return cm, extra


def _quantize(fp32: bytes, calibration: np.ndarray, *, exclude: list[str], method: str,
              percentile: float, per_channel: bool, reduce_range: bool, activation: str) -> bytes:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load_from_string(fp32)
    name = model.graph.input[0].name
    cm, extra = _calibration_options(method, percentile)
    act = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}[activation]
    if activation == "uint16":  # 16-bit Q/DQ before opset 21 is onnxruntime's contrib op
        extra = {**extra, "UseQDQContribOps": True}
    with tempfile.TemporaryDirectory(prefix="splitter-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        cwd = os.getcwd()
        os.chdir(tmp)  # the calibrator writes its augmented model to the working directory
        try:
            quantize_static(str(src), str(dst), _Reader(name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=act,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                            calibrate_method=cm, extra_options=extra)
        finally:
            os.chdir(cwd)
        return dst.read_bytes()


def prepared(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` as onnxruntime's quantizer wants its input: ``quant_pre_process``
    (onnxruntime's own step for this; basic graph optimizations, constants folded).

    Why it matters: the TorchScript exporter shares equal initializers (the zero biases of
    batch norms folded at initialisation) through ``Identity`` nodes; ``quantize_static``
    then leaves those convs a float bias, onnxruntime cannot fuse them into integer kernels,
    and such an "int8" ResNet-50 head to ``layer1`` (crbq) ran at 20.6 ms against 11.7 ms in
    fp32, one thread (6.9 ms once prepared). Symbolic shape inference is skipped: it fails on the
    dynamo exporter's heads, which carry their shapes already.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="splitter-int8-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "prepared.onnx"
        src.write_bytes(onnx_bytes)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst.read_bytes()


def quantize_head(onnx_bytes: bytes, calibration: np.ndarray, *,
                  tail: Callable[[np.ndarray], np.ndarray] | None = None,
                  eval_inputs: np.ndarray | None = None, min_top1: float = DEFAULT_MIN_TOP1,
                  method: str = "percentile", percentile: float = 99.999,
                  per_channel: bool = True, reduce_range: bool = False,
                  activation: str = "uint8", keep_fp32: Sequence[str] = (),
                  rounding: str = "gptq", threads: int = 1,
                  timing_runs: int = 30) -> tuple[bytes, Int8Report]:
    """Quantize a fp32 ONNX head; return the int8 ONNX bytes and their :class:`Int8Report`.

    ``calibration``: ``(N, C, H, W)`` float32 real images, preprocessed as the head expects.
    ``tail``: symbols ``(B, *S)`` -> outputs ``(B, K)`` (the fp32 server side), used for the
    top-1 agreement; without it ``passed`` judges the symbols alone (identical fraction
    >= ``min_top1``). ``eval_inputs`` (default: the calibration images) drive the parity.
    ``keep_fp32``: any of ``"stem"``, ``"last"`` (see the module docstring). ``rounding``:
    ``"gptq"`` (default) re-rounds the int8 conv weights to minimise each conv's output error
    on the calibration images and corrects each int32 bias for the mean shift left
    (:mod:`targets.rounding`); ``"nearest"`` keeps onnxruntime's.
    Never raises on a low parity; :func:`check_int8` does.
    """
    import onnx

    if rounding not in ROUNDINGS:
        raise BundleError(f"int8 weight rounding must be one of {ROUNDINGS}, not {rounding!r}")
    bad = [k for k in keep_fp32 if k not in KEEP]
    if bad:
        raise BundleError(f"keep_fp32 takes {KEEP}, not {bad}")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or not np.isfinite(calibration).all() or len(calibration) == 0:
        raise BundleError(f"int8 calibration must be finite (N, C, H, W) images, got shape "
                          f"{calibration.shape}; pass real preprocessed images (e.g. 32 or more)")
    ready = prepared(onnx_bytes)  # the quantizer's input; parity and speed are against onnx_bytes
    model = onnx.load_from_string(ready)
    want = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    if list(calibration.shape[1:]) != want:
        raise BundleError(f"int8 calibration images have shape {calibration.shape[1:]}; the head "
                          f"takes {tuple(want)}")
    stem, last = _first_and_last(model)
    keep = (stem if "stem" in keep_fp32 else []) + (last if "last" in keep_fp32 else []) + \
        (_depthwise(model) if "depthwise" in keep_fp32 else [])
    exact = _integer_output(model)  # float features (identity, plain) need no exact tail
    exclude = (symbol_tail(model) if exact else []) + list(dict.fromkeys(keep))
    int8 = _quantize(ready, calibration, exclude=exclude, method=method,
                     percentile=percentile, per_channel=per_channel,
                     reduce_range=reduce_range, activation=activation)
    if rounding == "gptq":
        from targets.rounding import refine_int8_weights

        q = onnx.load_from_string(int8)
        refine_int8_weights(model, q, calibration, threads=threads, bias=True)
        int8 = q.SerializeToString()
    s2d: dict[str, list[str]] = {}
    if "stem" not in keep_fp32:  # a 3-channel int8 stem is slow; the same integers on 12 are not
        from targets.stem import space_to_depth_stem

        q = onnx.load_from_string(int8)
        s2d = space_to_depth_stem(q)
        int8 = q.SerializeToString() if s2d else int8

    evals = calibration if eval_inputs is None else np.ascontiguousarray(eval_inputs, np.float32)
    s32, s8 = _session(onnx_bytes, threads), _session(int8, threads)
    ref = np.concatenate([_run(s32, evals[i:i + 8]) for i in range(0, len(evals), 8)])
    got = np.concatenate([_run(s8, evals[i:i + 8]) for i in range(0, len(evals), 8)])
    identical = float((ref == got).mean())
    diff = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
    top1 = None
    if tail is not None:
        a = np.asarray(tail(ref)).reshape(len(evals), -1).argmax(1)
        b = np.asarray(tail(got)).reshape(len(evals), -1).argmax(1)
        top1 = float((a == b).mean())
    ms = head_latency_ms({"fp32": onnx_bytes, "int8": int8}, want, threads=threads, runs=timing_runs)
    q = onnx.load_from_string(int8)
    bits32, bits8 = weight_bits(model), weight_bits(q)
    score = top1 if top1 is not None else identical
    report = Int8Report(
        method=method, percentile=percentile if method == "percentile" else None,
        per_channel=per_channel, weight_rounding=rounding, reduce_range=reduce_range,
        activation_type=activation,
        weight_type="int8", n_calibration=len(calibration), n_eval=len(evals),
        eval_is_calibration=eval_inputs is None, fp32_nodes=exclude, keep_fp32=list(keep_fp32),
        stem_space_to_depth=list(s2d),
        symbols_identical=identical, symbols_max_abs_diff=diff, top1_agreement=top1,
        min_top1=min_top1, weight_bits_fp32=bits32, weight_bits_int8=bits8,
        weight_bits_ratio=bits8 / max(bits32, 1), head_bytes_fp32=len(onnx_bytes),
        head_bytes_int8=len(int8), threads=threads, latency_ms_fp32=ms["fp32"],
        latency_ms_int8=ms["int8"], speedup=ms["fp32"] / ms["int8"],
        faster="int8" if ms["int8"] < ms["fp32"] else "fp32", passed=score >= min_top1)
    return int8, report


def check_int8(report: Int8Report) -> None:
    """Raise :class:`BundleError` naming ``int8_min_top1`` when the int8 head misses it."""
    if report.passed:
        return
    what = (f"top-1 agreement {report.top1_agreement:.2%}" if report.top1_agreement is not None
            else f"identical symbols {report.symbols_identical:.2%}")
    raise BundleError(
        f"the int8 head's {what} with the fp32 pipeline on {report.n_eval} images is below "
        f"int8_min_top1={report.min_top1:.2%} (CLI --int8-min-top1). Nothing was written. "
        f"Calibrate with more real images (about 100 crops), try int8_method='entropy' or keep_fp32=('stem',), "
        f"lower int8_min_top1, or export without int8.", file="head.onnx")


# -- bundle side --------------------------------------------------------------------------
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_calibration(data, preprocess) -> np.ndarray:
    """Calibration images as ``(N, C, H, W)`` float32.

    ``data``: an array or tensor already preprocessed, a ``.npy`` file holding one, or a
    directory of image files (JPEG/PNG/WebP), preprocessed with ``preprocess`` (a manifest
    :class:`~targets.manifest.Preprocess`, the model's own eval transform).
    """
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            from splitter.deploy.preprocess import preprocess as prep

            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BundleError(f"{path} holds no {'/'.join(IMAGE_SUFFIXES)} images; pass a "
                                  f"folder of real images or a .npy (N, C, H, W) array",
                                  file=str(path))
            data = np.stack([prep(f, preprocess) for f in files])
        elif path.suffix == ".npy" and path.is_file():
            data = np.load(path, allow_pickle=False)
        else:
            raise BundleError(f"calibration {path} is neither a folder of images nor a .npy "
                              f"file", file=str(path))
    arr = np.asarray(data, dtype=np.float32)
    want = tuple(preprocess.input_size)
    if arr.ndim == len(want):
        arr = arr[None]
    if arr.shape[1:] != want or not np.isfinite(arr).all():
        raise BundleError(f"calibration images must be finite (N, {', '.join(map(str, want))}), "
                          f"got {arr.shape}")
    return np.ascontiguousarray(arr)


def _first(out):
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values())))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out


def split_tail(split) -> Callable[[np.ndarray], np.ndarray]:
    """The split's fp32 server side as symbols ``(B, *S)`` numpy -> first output numpy."""
    import torch

    def tail(symbols: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = []
            for i in range(0, len(symbols), 8):
                s = torch.from_numpy(np.ascontiguousarray(symbols[i:i + 8]))
                out.append(_first(split.tail(split._through_coder(s))).float().numpy())
            return np.concatenate(out)

    return tail


def int8_head(split, head: bytes, calibration, *, min_top1: float = DEFAULT_MIN_TOP1,
              **options) -> tuple[bytes, Int8Report]:
    """The int8 version of ``head`` (the fp32 ``head.onnx`` exported from ``split``).

    ``calibration``: anything :func:`load_calibration` takes. Parity is measured on those
    images against ``split``'s fp32 tail; below ``min_top1`` :class:`BundleError` is raised.
    ``options`` go to :func:`quantize_head` (``method``, ``keep_fp32``, ``threads``, ...).
    """
    from targets.bundle import preprocess_of

    images = load_calibration(calibration, preprocess_of(split.graph))
    int8, report = quantize_head(head, images, tail=split_tail(split), min_top1=min_top1, **options)
    check_int8(report)
    return int8, report
