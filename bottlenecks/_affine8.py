"""Per-sample 8-bit affine quantization whose parameters travel as exact bytes.

Bottleneck quantization (Matsubara & Levorato 2021) and codec tiling (Alvar & Bajić
2021) map each sample's latent onto 0..255 with its own min and max. The min and the
step must reach the server, yet ``encode`` has to stay a pure torch graph (ONNX has no
bitcast) returning one integer tensor. So the parameters are chosen on a grid that
integers describe exactly, and written as five leading bytes with float arithmetic
that is exact below 2**24::

    step  = 2 ** (e / 256)          e: int16, |e| <= 25600   (steps 2**-100 .. 2**100)
    x̂     = (q + m) * step          m: int24, |m| <  2**23,   q: uint8
    bytes = [e + 32768 (2 bytes, big-endian), m + 2**23 (3 bytes), q_0, ..., q_{n-1}]

``e`` rounds the step up by at most 0.27% over (max - min) / 254, so the range always
fits in 0..255; ``m = floor(min / step)``. The step is also kept >= max|x| / 2**22 so
that ``m`` and ``q + m`` stay exact in float32.
"""

from __future__ import annotations

import torch

__all__ = ["HEADER", "quantize", "dequantize", "check_header"]

HEADER = 5
E_LIMIT = 25600
M_LIMIT = 2**23 - 1


def quantize(y: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` float -> ``(B, 5 + n)`` uint8: parameters then codes. Exportable."""
    y = y.float()
    mn = y.amin(dim=1, keepdim=True)
    mx = y.amax(dim=1, keepdim=True)
    mag = torch.maximum(mn.abs(), mx.abs())
    need = torch.maximum((mx - mn) / 254.0, mag / 2.0**22).clamp_min(2.0**-100)
    e = torch.ceil(torch.log2(need) * 256.0).clamp(-E_LIMIT, E_LIMIT)
    step = torch.pow(2.0, e / 256.0)
    m = torch.floor(mn / step).clamp(-M_LIMIT, M_LIMIT)
    q = torch.round(y / step - m).clamp(0, 255)
    eu = e + 32768.0
    b0 = torch.floor(eu / 256.0)
    mu = m + 2.0**23
    b2 = torch.floor(mu / 65536.0)
    r = mu - 65536.0 * b2
    b3 = torch.floor(r / 256.0)
    head = torch.cat([b0, eu - 256.0 * b0, b2, b3, r - 256.0 * b3], dim=1)
    return torch.cat([head, q], dim=1).to(torch.uint8)


def _params(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = s[:, :HEADER].to(torch.int64)
    e = h[:, 0] * 256 + h[:, 1] - 32768
    m = h[:, 2] * 65536 + h[:, 3] * 256 + h[:, 4] - 2**23
    return e, m


def dequantize(s: torch.Tensor) -> torch.Tensor:
    """``(B, 5 + n)`` uint8 -> ``(B, n)`` float32: ``(q + m) * 2**(e/256)``."""
    e, m = _params(s)
    step = torch.pow(2.0, e.float() / 256.0)[:, None]
    return (s[:, HEADER:].to(torch.int64) + m[:, None]).float() * step


def check_header(s: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every sample's parameters are ones :func:`quantize` writes."""
    if s.dim() != 2 or s.shape[1] < HEADER or s.dtype != torch.uint8:
        raise ValueError(f"8-bit symbols must be (B, >= {HEADER}) uint8, got "
                         f"{tuple(s.shape)} {s.dtype}")
    e, m = _params(s)
    if bool((e.abs() > E_LIMIT).any()) or bool((m.abs() > M_LIMIT).any()):
        raise ValueError("corrupted 8-bit quantization header (step or offset out of range)")
