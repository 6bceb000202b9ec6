"""Measured device cost of a bundle: ``profile(bundle) -> DeviceProfile`` (a JSON file).

::

    bundle ─► Device (torch-free runtime) ─► one image of the bundle's input size
        ×runs:  symbols(x) ─[head ms]─► compress ─► pack ─[coder ms]─► payload bytes
    ─► p50 / p95 of head, coder (coding + framing) and encode ms, peak RSS, payload bytes
    ─► DeviceProfile ─► device_profile.json ─► latency model / sweep / planner

The latency model's default device is a GFLOP/s constant; a profile replaces it with what
this machine measured for this head: ``encode_ms_p50`` directly, or ``device_gflops``
(head FLOPs / head time) to scale to other cuts of the same model. Peak RSS is the
process's high-water mark (``getrusage``), so it includes whatever the caller imported
before; ``splitter profile`` imports only the device runtime.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from splitter.errors import BundleError

__all__ = ["DeviceProfile", "profile", "load_profile", "save_profile", "sample_image"]

SCHEMA = "splitter.device_profile/1"


class DeviceProfile(BaseModel):
    """One bundle's device side, timed on this machine at batch 1."""

    model_config = ConfigDict(extra="forbid")

    schema_id: str = Field(SCHEMA, description="format of this file")
    model: str
    cut: str
    kind: str = Field(description="bottleneck kind")
    input_shape: list[int] = Field(description="(C, H, W) of one image")
    head_int8: bool = Field(description="head.onnx is the int8 head")
    threads: int | None = Field(description="onnxruntime intra-op threads (None: all cores)")
    runs: int
    head_ms_p50: float
    head_ms_p95: float
    coder_ms_p50: float = Field(description="entropy coding + payload framing")
    coder_ms_p95: float
    encode_ms_p50: float = Field(description="the whole device step, image tensor -> bytes")
    encode_ms_p95: float
    coder_fraction: float = Field(description="coder_ms_p50 / encode_ms_p50")
    peak_rss_mb: float = Field(description="the process's peak resident memory")
    payload_bytes: int = Field(description="payload of the profiled image")
    head_macs: int | None = Field(None, description="the head's MACs (server manifest costs; None without)")
    device_gflops: float | None = Field(None, description="2 * head_macs / head_ms_p50: this "
                                                          "machine's effective rate for the latency model")
    machine: str = Field(description="processor and OS the profile was measured on")
    onnxruntime: str
    created: str = Field(description="UTC time of the measurement")


def sample_image(shape: tuple[int, ...] | list[int], mean, std, seed: int = 0) -> np.ndarray:
    """A natural-looking ``(C, H, W)`` float32 image (gradients, soft blobs, mild noise),
    normalised with ``mean``/``std``: entropy coders see smooth content, not white noise."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx * (k + 1) + yy * (2 - k) / 2))
                    for k in range(c)])
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        img += rng.uniform(-0.3, 0.3, (c, 1, 1)) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    m = np.asarray(mean, np.float32)[:c, None, None]
    s = np.asarray(std, np.float32)[:c, None, None]
    return ((img - m) / s).astype(np.float32)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {platform.system()} {platform.release()}"


def profile(bundle, *, threads: int | None = 1, runs: int = 50, warmup: int = 5,
            image: np.ndarray | str | Path | None = None) -> DeviceProfile:
    """Time ``bundle``'s device side (a loaded bundle or a directory) on one image.

    ``image``: a ``(C, H, W)`` preprocessed array, an image file (preprocessed with the
    manifest's transform), or None for :func:`sample_image`. Heads and coders run ``warmup``
    times, then ``runs`` timed times.
    """
    from importlib import metadata

    from splitter.deploy.runtime import load_bundle

    if runs < 1:
        raise BundleError(f"runs must be >= 1, got {runs}")
    if isinstance(bundle, (str, Path)):
        bundle = load_bundle(bundle)
    device = bundle.device(threads=threads)
    m = device.manifest
    if image is None:
        x = sample_image(m.input.shape, m.preprocess.mean, m.preprocess.std)
    elif isinstance(image, (str, Path)):
        x = device.preprocess(image)
    else:
        x = np.asarray(image, dtype=np.float32)
    x = device.check_input(x)
    for _ in range(warmup):
        device.pack(device.compress(device.symbols(x)))
    head, code = [], []
    data = b""
    for _ in range(runs):
        t0 = time.perf_counter()
        sym = device.symbols(x)
        t1 = time.perf_counter()
        data = device.pack(device.compress(sym))
        t2 = time.perf_counter()
        head.append((t1 - t0) * 1e3)
        code.append((t2 - t1) * 1e3)
    total = np.add(head, code)
    server_half = getattr(bundle, "server_half", None)
    costs = server_half.manifest.costs if server_half is not None else None
    macs = int(costs["encoder_macs"]) if costs and costs.get("encoder_macs") else None
    p = {name: (float(np.percentile(v, 50)), float(np.percentile(v, 95)))
         for name, v in (("head", head), ("coder", code), ("encode", total))}
    try:
        ort_version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort_version = "unknown"
    return DeviceProfile(
        model=m.model, cut=m.cut.name, kind=m.bottleneck.kind, input_shape=list(m.input.shape),
        head_int8=getattr(m, "int8", None) is not None, threads=threads, runs=runs,
        head_ms_p50=p["head"][0], head_ms_p95=p["head"][1],
        coder_ms_p50=p["coder"][0], coder_ms_p95=p["coder"][1],
        encode_ms_p50=p["encode"][0], encode_ms_p95=p["encode"][1],
        coder_fraction=p["coder"][0] / p["encode"][0] if p["encode"][0] > 0 else 0.0,
        peak_rss_mb=_peak_rss_mb(), payload_bytes=len(data), head_macs=macs,
        device_gflops=(2 * macs / (p["head"][0] * 1e-3) / 1e9) if macs and p["head"][0] > 0 else None,
        machine=_machine(), onnxruntime=ort_version,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def save_profile(prof: DeviceProfile, path: str | Path) -> Path:
    """Write ``prof`` as JSON (via a temporary file: a reader never sees half of it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(prof.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
    return path


def load_profile(path: str | Path) -> DeviceProfile:
    """Read a device profile; :class:`BundleError` names the file when it is not one."""
    from pydantic import ValidationError

    try:
        return DeviceProfile.model_validate_json(Path(path).read_text())
    except FileNotFoundError as e:
        raise BundleError(f"no device profile at {path}; write one with `splitter profile "
                          f"BUNDLE -o {path}`", file=str(path)) from e
    except ValidationError as e:
        raise BundleError(f"{path} is not a device profile ({e.errors()[0]['msg']}); write it "
                          f"again with `splitter profile`", file=str(path)) from e
