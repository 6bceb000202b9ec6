"""The device side of a bundle: ``Device.encode(image batch) -> payload bytes``, without torch.

::

    image (B, C, H, W) ─► check (shape, dtype, finite) ─► head.onnx (onnxruntime) ─► symbols
    ─► coder (per kind, numpy: coder.py rANS/ANS, hyperprior's integer h_a/h_s, raw bytes,
       Pillow JPEG/WebP) ─► payload.pack ─► bytes

Imports numpy, onnxruntime, Pillow, safetensors' numpy loader and constriction, never torch:
``pip install sc2-splitter`` (no extras) is enough to run it. Its coder writes the very bytes
the torch bottleneck's ``compress`` writes (the export's parity check compares them on
every export). A ``hyperprior`` bundle's coder runs its hyper-encoder and -decoder
(``h_a``, ``h_s``) in numpy integer arithmetic (``coder.HyperCoder``, the code the torch
bottleneck's ``compress`` and ``decompress`` run too), so no kind needs torch.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from splitter.deploy import coder, payload
from splitter.deploy.runtime import _NP_DTYPES, _run, _session
from splitter.errors import BundleError, InputShapeError, InputValueError

if TYPE_CHECKING:
    from splitter.deploy.runtime import Bundle
    from targets.device_manifest import View as DeviceManifest

__all__ = ["Device"]

_AFFINE_HEADER = 5  # bottlenecks._affine8.HEADER: the per-sample range bytes before the codes


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - whatever numpy refuses
        raise InputValueError(f"cannot read the input as an array ({type(x).__name__}: {e}); "
                              f"pass a numpy array (B, C, H, W) or use encode_images") from None


class Device:
    """Device side: ``encode(image batch) -> payload bytes`` with the ONNX head.

    ``bundle``: a loaded bundle with a device half (the export directory or its ``device/``).
    """

    def __init__(self, bundle: Bundle, *, threads: int | None = None):
        half = bundle._half("device")
        m: DeviceManifest = half.manifest
        self.manifest = m
        self.kind = m.bottleneck.kind
        self._sess = _session(half.read("head.onnx"), half.prefix + "head.onnx", threads)
        self._compress = _coder_for(m, half.read("coder.safetensors"), half.prefix)
        self._spatial = tuple(m.symbols.spatial)  # the server's too: one sample goes short form
        self._symbols = (tuple(m.symbols.shape), np.dtype(_NP_DTYPES[m.symbols.dtype]))

    # -- input ------------------------------------------------------------------------------
    def check_input(self, x) -> np.ndarray:
        """``(B, C, H, W)`` or ``(C, H, W)`` floats -> contiguous float32 ``(B, C, H, W)``.

        Raises before any compute: :class:`InputShapeError` for a wrong rank, channel count
        or size, :class:`InputValueError` for a non-float dtype or a NaN/inf value.
        """
        arr = _as_array(x)
        want = tuple(self.manifest.input.shape)
        if arr.ndim == len(want):
            arr = arr[None]
        shape = "(B, " + ", ".join(map(str, want)) + ")"
        if arr.ndim != len(want) + 1 or arr.shape[0] == 0:
            raise InputShapeError(f"input has shape {tuple(arr.shape)}; this bundle's head takes "
                                  f"{shape} or one sample {tuple(want)}")
        if arr.shape[1] != want[0]:
            raise InputShapeError(f"input has {arr.shape[1]} channels, this bundle's head takes "
                                  f"{want[0]} {shape}; convert the image "
                                  f"({'RGB' if want[0] == 3 else 'grayscale' if want[0] == 1 else 'channels'}) "
                                  f"or use encode_images, which does")
        if tuple(arr.shape[2:]) != want[1:]:
            raise InputShapeError(f"input is {'x'.join(map(str, arr.shape[2:]))}, this bundle's head "
                                  f"takes {'x'.join(map(str, want[1:]))} {shape}; resize and crop "
                                  f"it (encode_images applies the manifest's preprocessing)")
        if arr.dtype.kind != "f":
            raise InputValueError(f"input dtype {arr.dtype} is not floating point; the head takes "
                                  f"normalised float32 (use preprocess() or encode_images for "
                                  f"image files and 8-bit pixels)")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        finite = np.isfinite(arr)
        if not finite.all():
            bad = sorted({int(i) for i in np.argwhere(~finite)[:, 0]})
            raise InputValueError(f"input has {int((~finite).sum())} NaN/inf values (samples "
                                  f"{bad[:8]}); the payload would be meaningless: fix or drop "
                                  f"those samples")
        return arr

    # -- the two steps ---------------------------------------------------------------------
    def symbols(self, x) -> np.ndarray:
        """``(B, C, H, W)`` or ``(C, H, W)`` float -> symbols ``(B, *S)`` from head.onnx."""
        arr = self.check_input(x)
        info = self.manifest.export.head
        return _run(self._sess, arr, info.dynamic_batch, info.batch)[0]

    def compress(self, symbols: np.ndarray) -> list[list[bytes]]:
        """Symbols ``(B, *S)`` -> ``strings[sample][stream]``, as the bottleneck's ``compress``."""
        s = np.asarray(symbols)
        shape, dtype = self._symbols
        if tuple(s.shape[1:]) != shape or s.dtype != dtype:
            raise InputShapeError(f"symbols of shape {tuple(s.shape)} {s.dtype} are not this "
                                  f"bundle's (B, {', '.join(map(str, shape))}) {dtype}")
        return self._compress(s)

    def pack(self, strings: list[list[bytes]]) -> bytes:
        """``compress``'s strings -> payload bytes (the short form for one sample)."""
        return payload.pack(self.kind, self._spatial, strings, expected=self._spatial)

    def encode(self, x) -> bytes:
        """Image batch -> payload bytes: ``pack(compress(symbols(x)))`` (head, coding, framing)."""
        return self.pack(self.compress(self.symbols(x)))

    # -- image files -------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """An image file or PIL image -> ``(C, H, W)`` float32 with the model's preprocessing."""
        from splitter.deploy.preprocess import preprocess

        return preprocess(image, self.manifest.preprocess)

    def encode_images(self, images: list) -> bytes:
        """Image files (or PIL images) -> one payload holding them all."""
        return self.encode(np.stack([self.preprocess(im) for im in images]))


# -- the coder of each kind, built from the manifest and coder.safetensors ----------------------
def _coder_for(m: DeviceManifest, data: bytes, prefix: str):
    """``symbols (B, *S) -> strings[sample][stream]`` for the bundle's kind."""
    name = prefix + "coder.safetensors"
    try:
        from safetensors.numpy import load

        state = load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types on bad bytes
        raise BundleError(f"{name} is not a readable safetensors file: {e}", file=name) from e
    kind = m.bottleneck.kind
    if kind == "entropy":
        try:
            tables = coder.Tables(state["entropy_bottleneck._quantized_cdf"],
                                  state["entropy_bottleneck._cdf_length"],
                                  state["entropy_bottleneck._offset"])
        except (KeyError, ValueError) as e:
            raise BundleError(f"{name} does not hold the entropy model's coder tables ({e}); "
                              f"export the bundle again", file=name) from e
        k = m.symbols.shape[0]
        idx = np.broadcast_to(np.arange(k).reshape(k, *[1] * (len(m.symbols.shape) - 1)),
                              m.symbols.shape).reshape(-1)
        return lambda s: [[coder.encode(row, idx, tables)] for row in s]
    if kind == "crbq":
        return lambda s: [[row.tobytes()] for row in s]
    if kind == "identity":
        def raw(s: np.ndarray) -> list[list[bytes]]:
            s = s.astype(s.dtype.newbyteorder("<"), copy=False)  # wire order is little-endian
            return [[row.tobytes()] for row in s]
        return raw
    if kind in ("jpeg", "webp"):
        return _image_coder(kind, m.coder.image_size, m.coder.quality, name)
    if kind == "hyperprior":
        return _hyper_coder(m, state, name)
    raise BundleError(f"the device runtime has no coder for bottleneck kind {kind!r}; is this "
                      f"splitter older than the one that exported the bundle?", file=name)


def _image_coder(kind: str, size: list[int] | None, quality: int | None, name: str):
    """Pillow, with the options ``bottlenecks.codec`` uses (the parity check compares bytes)."""
    from PIL import Image

    if not size or quality is None:
        raise BundleError(f"the manifest gives no image size or quality for {kind}; export the "
                          f"bundle again", file=name)
    fmt, options = ("JPEG", {"quality": quality}) if kind == "jpeg" else \
        ("WEBP", {"quality": quality, "method": 4})
    hh, ww = size

    def compress(s: np.ndarray) -> list[list[bytes]]:
        out = []
        for row in s:
            buf = io.BytesIO()
            Image.fromarray(row[_AFFINE_HEADER:].reshape(hh, ww), mode="L").save(buf, format=fmt, **options)
            out.append([row[:_AFFINE_HEADER].tobytes() + buf.getvalue()])
        return out

    return compress


def _hyper_coder(m: DeviceManifest, state: dict, name: str):
    """hyperprior: h_a, h_s and both entropy models in numpy (see ``coder.HyperCoder``)."""
    if len(m.symbols.shape) != 3:
        raise BundleError(f"a hyperprior's symbols are (K, h, w), not {m.symbols.shape}; export "
                          f"the bundle again", file=name)
    try:
        hc = coder.HyperCoder(state)
        hc.z_shape(tuple(m.symbols.shape))
        if hc.h_a[0].cin != m.symbols.shape[0]:
            raise ValueError(f"h_a takes {hc.h_a[0].cin} channels, the symbols have "
                             f"{m.symbols.shape[0]}")
    except (KeyError, ValueError) as e:
        raise BundleError(f"{name} does not hold the hyperprior's integer coder state ({e}); "
                          f"bundles written before the torch-free hyperprior coder must be "
                          f"exported again", file=name) from e
    return lambda s: [hc.encode(row) for row in s]
