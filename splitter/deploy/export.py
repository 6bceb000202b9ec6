"""``splitter.export(split, out_dir)``: write the two bundle halves, then check them against the split.

::

    split ─► targets.bundle.stage ─► .out.staging-XXXX/device/{head.onnx, coder.safetensors}
                                                      server/{tail.onnx, tail.pt2, tables.safetensors}
          ─► parity: the staged device + server runtimes vs the in-process split on ≥ 32 inputs
             (symbols, the device coder's bytes vs the torch bottleneck's, every output)
          ─► device/manifest.json, server/manifest.json (hashes; parity on the server's)
          ─► rename to out_dir ─► load_bundle(out_dir)

Nothing appears at ``out_dir`` unless every file was written and the check ran; a failed
export leaves ``out_dir`` as it was. A bundle already at ``out_dir`` is replaced only with
``overwrite=True`` (CLI ``--overwrite``), and then atomically (renamed over, never half-written).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from splitter.deploy.runtime import Bundle, BundleHalf, load_bundle
from splitter.errors import BundleError
from targets.bundle import check_target, commit, is_export, make_staging_dir, stage, write_manifest
from targets.manifest import DEVICE_DIR, SERVER_DIR, Parity
from targets.tail import flat_outputs

__all__ = ["export", "check_parity", "check_out_dir"]

MIN_IDENTICAL = 0.9999  # integer symbols: ONNX and torch must round the same way
FLOAT_RTOL = 1e-4  # float symbols (identity kind): kernels differ in the last bits, and a
# value next to a rounding boundary of the symbol dtype may land one ulp away (fp16: 1e-3)
MIN_TOP1 = 0.99


def _criteria(integer: bool, rtol: float) -> str:
    sym = (f"symbols identical >= {MIN_IDENTICAL:.2%}" if integer else
           f"symbols within {rtol:.3g} x max|symbol|")
    return (f"server decodes what the split's own coder does, {sym}, "
            f"top-1 agreement with split.decode(split.encode(x)) >= {MIN_TOP1:.0%}")


def _costs(split) -> dict[str, Any] | None:
    try:
        return split.costs.model_dump(mode="json")
    except ImportError:  # splitter.compile.costs not installed in this build
        return None


def _culprit(p: Parity) -> str:
    """The file a failed check points at: the coder's tables, the head, else the tail."""
    if not p.coder_matches_split:
        return f"{DEVICE_DIR}/coder.safetensors"
    if not p.symbols_close:
        return f"{DEVICE_DIR}/head.onnx"
    return f"{SERVER_DIR}/tail.onnx"


def check_parity(split, bundle: Bundle, inputs: torch.Tensor | None = None, *, n: int = 32,
                 batch: int = 8, threads: int | None = None) -> Parity:
    """Run ``bundle`` and ``split`` on the same inputs and compare symbols, bytes, outputs.

    ``inputs`` is ``(N, *input_shape)``; by default ``n`` seeded random images. The device's
    torch-free coder must write byte for byte what the split's bottleneck writes from the same
    symbols, and the server must decode them as the bottleneck does. Outputs (a tensor, a
    tuple or a dict) are compared one by one; top-1 is read from the first.
    """
    g = split.graph
    if inputs is None:
        inputs = torch.randn(n, *g.input_shape, generator=torch.Generator().manual_seed(0))
    inputs = inputs.detach().float()
    if g.frontend == "export":  # its graph is fixed to the traced batch of one
        batch = 1
    if inputs.dim() == len(g.input_shape):
        inputs = inputs.unsqueeze(0)
    device, server = bundle.device(threads=threads), bundle.server(threads=threads)
    bn = split.bottleneck
    same = total = agree = 0
    sym_diff = feat_err = 0.0
    out_err: dict[str, float] = {}
    lossless = matches = True
    integer, scale, rtol = True, 0.0, FLOAT_RTOL
    names = [o.name for o in server.manifest.outputs]
    with torch.no_grad():
        for i in range(0, inputs.shape[0], batch):
            x = inputs[i:i + batch]
            ref_sym = split.head(x)
            sym_np = device.symbols(x.numpy())
            sym = torch.from_numpy(sym_np)
            integer = not ref_sym.dtype.is_floating_point
            if not integer:
                rtol = max(FLOAT_RTOL, torch.finfo(ref_sym.dtype).eps)
            scale = max(scale, float(ref_sym.double().abs().max()))
            same += int((ref_sym == sym).sum())
            total += ref_sym.numel()
            sym_diff = max(sym_diff, float((ref_sym.double() - sym.double()).abs().max()))
            feat_err = max(feat_err, float((bn.decode(ref_sym) - bn.decode(sym)).abs().max()))
            strings = bn.compress(sym)
            matches &= device.compress(sym_np) == strings  # torch-free coder, same bytes
            data = device.encode(x.numpy())
            decoded = server.decode_symbols(data)
            lossless &= torch.equal(decoded, sym)  # False by design for jpeg/webp
            # The bottleneck rebuilt from the manifest and tables must code exactly as the
            # split's own does (same tables, same framing).
            mine = bn.decompress(strings, tuple(bn.spatial(sym))).to(decoded.dtype)
            matches &= torch.equal(decoded, mine)
            # The reference is the split's own bytes path; for a lossless coder it is split(x).
            got = flat_outputs(server.decode(data))
            ref = flat_outputs(split.decode(split.encode(x)))
            for name, a, b in zip(names, got, ref):
                err = float((a.float() - b.float()).abs().max())
                out_err[name] = max(out_err.get(name, 0.0), err)
            agree += int((got[0].reshape(len(x), -1).argmax(1)
                          == ref[0].reshape(len(x), -1).argmax(1)).sum())
    identical, top1 = same / max(total, 1), agree / inputs.shape[0]
    close = identical >= MIN_IDENTICAL if integer else sym_diff <= rtol * max(scale, 1.0)
    return Parity(n_inputs=int(inputs.shape[0]), symbols_identical=identical,
                  symbols_max_abs_diff=sym_diff, feature_max_abs_error=feat_err,
                  output_max_abs_error=max(out_err.values(), default=0.0),
                  outputs_max_abs_error=out_err, top1_agreement=top1, coder_lossless=lossless,
                  coder_matches_split=matches, symbols_close=close,
                  passed=matches and close and top1 >= MIN_TOP1,
                  criteria=_criteria(integer, rtol))


def _int8(split, staging: Path, device_m, calibration, min_top1: float, options):
    """Swap the staged fp32 head for its int8 version (:mod:`targets.int8`); the manifest
    with the new digest and the :class:`~targets.int8.Int8Report`."""
    from targets.bundle import replace_file
    from targets.int8 import int8_head

    if calibration is None:
        raise BundleError("int8=True needs calibration= real images ((N, C, H, W) array, .npy "
                          "or a folder of images; CLI --calibration DATA)", file="device/head.onnx")
    data, report = int8_head(split, (staging / DEVICE_DIR / "head.onnx").read_bytes(),
                             calibration, min_top1=min_top1, **(options or {}))
    device_m = replace_file(staging / DEVICE_DIR, device_m, "head.onnx", data)
    return device_m.model_copy(update={"int8": report})


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Raise :class:`BundleError` before any work when exporting to ``out_dir`` would replace
    a bundle without ``overwrite`` or anything that is not a bundle (never replaced)."""
    out_dir = Path(out_dir)
    check_target(out_dir)
    if not overwrite and out_dir.is_dir() and is_export(out_dir):
        raise BundleError(f"{out_dir} already holds a bundle; pass overwrite=True "
                          f"(CLI: --overwrite) to replace it, or export to another directory "
                          f"(nothing was written)", file=str(out_dir))


def export(split, out_dir: str | Path, inputs: torch.Tensor | None = None, *,
           exporter: str = "auto", strict: bool = True, threads: int | None = None,
           overwrite: bool = False, int8: bool = False, calibration: Any = None,
           int8_min_top1: float = 0.98, int8_options: dict[str, Any] | None = None) -> Bundle:
    """Write ``split`` as a bundle in ``out_dir`` and return it, loaded and verified.

    Two halves, each with its own ``manifest.json``: ``device/`` holds ``head.onnx``
    (image -> symbols) and ``coder.safetensors`` (only what the device's coder reads);
    ``server/`` holds ``tail.onnx`` and ``tail.pt2`` (symbols -> output) and
    ``tables.safetensors`` (the bottleneck's state). ``load_bundle`` opens the directory or
    either half alone. ``inputs`` (``(N, C, H, W)``, default 32 random) drive the
    parity check recorded in the manifest; with ``strict`` a failed check raises
    :class:`~splitter.errors.BundleError` and writes nothing. ``exporter``: ``"auto"``
    (dynamo, then torchscript), ``"dynamo"`` or ``"torchscript"``. A bundle already at
    ``out_dir`` raises :class:`~splitter.errors.BundleError` unless ``overwrite``; a directory
    that is not a bundle is never replaced.

    ``int8``: after the fp32 bundle passes its check, quantize ``head.onnx`` (static QDQ,
    :mod:`targets.int8`) calibrated on ``calibration`` (``(N, C, H, W)`` preprocessed images,
    a ``.npy`` file or a folder of images); ``device/manifest.json`` records the parity and
    the measured fp32 vs int8 head latency (``int8.faster``). A top-1 agreement with the fp32
    pipeline below ``int8_min_top1`` raises :class:`~splitter.errors.BundleError` and writes
    nothing. ``int8_options`` go to :func:`targets.int8.quantize_head`.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite)
    split.eval()
    staging = make_staging_dir(out_dir)
    try:
        device_m, server_m = stage(split, staging, exporter=exporter, costs=_costs(split))
        staged = Bundle(staging, BundleHalf(staging / DEVICE_DIR, device_m, f"{DEVICE_DIR}/"),
                        BundleHalf(staging / SERVER_DIR, server_m, f"{SERVER_DIR}/"))
        parity = check_parity(split, staged, inputs, threads=threads)
        if strict and not parity.passed:
            raise BundleError(f"the exported bundle does not match the split ({parity.criteria}): "
                              f"{parity.model_dump()}. Nothing was written; pass strict=False to "
                              f"keep it anyway.", file=_culprit(parity))
        if int8:
            device_m = _int8(split, staging, device_m, calibration, int8_min_top1, int8_options)
        write_manifest(device_m, staging / DEVICE_DIR)
        write_manifest(server_m.model_copy(update={"parity": parity}), staging / SERVER_DIR)
        check_out_dir(out_dir, overwrite=overwrite)  # again: one may have appeared meanwhile
        commit(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out_dir)
