"""Feature compression with an image codec (Alvar & Bajić 2021): ``jpeg`` and ``webp``.

::

    device   x ─► to_nchw (B, C, H, W) ─► per-sample min/max → uint8 ─► tile the C maps
             into one rows·H × cols·W grayscale image ─► symbols uint8 (B, 5 + rows·H·cols·W)
             symbols ─► compress: 5 parameter bytes + Pillow JPEG/WebP at ``quality``
    server   string ─► Pillow decode ─► symbols' ─► untile ─► (q + m)·step ─► from_nchw ─► x̂

No learned layers: every channel at the cut is coded. The tile grid is the one whose
image is closest to square (token sequences, N x 1 maps, become vertical strips).

These codecs are lossy inside ``compress``, so unlike the entropy-coded kinds
``decompress(compress(s)) != s``. The guarantee is the server's: what it decodes from
the bytes is exactly ``decode(decompress(compress(encode(x))))``, the same as an
in-process pass through the codec (Pillow decoding is deterministic). Training runs the
real codec in ``forward`` and passes the gradient straight through it.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from bottlenecks import _affine8
from bottlenecks._common import check_spatial, check_strings, resolve_mode, straight_through
from bottlenecks._layers import nchw_shape
from bottlenecks.base import Bottleneck, BottleneckOutput, from_nchw, register, to_nchw

__all__ = ["ImageCodec", "JPEG", "WebP", "tile_grid"]


def tile_grid(c: int, h: int, w: int) -> tuple[int, int]:
    """(rows, cols) of C tiles of h x w: the most square image, then the fewest blank tiles."""
    def score(cols: int) -> tuple[float, int]:
        rows = -(-c // cols)
        return abs(math.log(rows * h / (cols * w))), rows * cols - c

    cols = min(range(1, c + 1), key=score)
    return -(-c // cols), cols


class ImageCodec(Bottleneck):
    """Base for the Pillow codecs; subclasses set ``format``. Option: ``quality`` (1..100)."""


    format = "JPEG"

    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw",
                 out_shape: tuple[int, ...] | None = None, channels: int | None = None,
                 quality: int = 75):
        super().__init__(in_shape, layout, out_shape)
        if resolve_mode(self.in_shape, out_shape, "insert") != "insert":
            raise ValueError(f"{self.kind} cannot replace the head; use bottleneck='entropy' "
                             f"for mode='replace'")
        self.c, self.h, self.w = nchw_shape(self.in_shape, layout)
        if channels is not None and int(channels) != self.c:
            raise ValueError(f"{self.kind} codes all {self.c} channels at the cut (channels="
                             f"{channels} given); for channel reduction use bottleneck='crbq'")
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"{self.kind}: quality must be in 1..100, got {quality}")
        self.quality = int(quality)
        self.rows, self.cols = tile_grid(self.c, self.h, self.w)
        self.image_size = (self.rows * self.h, self.cols * self.w)  # (height, width)
        if max(self.image_size) > 16383:
            raise ValueError(f"{self.kind}: tiled image {self.image_size} exceeds 16383 pixels "
                             f"a side; cut at a smaller tensor")

    def extra_repr(self) -> str:
        return f"quality={self.quality}, tiles={self.rows}x{self.cols}, image={self.image_size}"

    # -- tiling --------------------------------------------------------------------------------
    def _tile(self, q: torch.Tensor) -> torch.Tensor:
        """(B, C·H·W) codes -> (B, rows·H·cols·W) image, blank tiles 0."""
        b = q.shape[0]
        q = q.view(b, self.c, self.h, self.w)
        blank = self.rows * self.cols - self.c
        if blank:
            q = torch.cat([q, q.new_zeros(b, blank, self.h, self.w)], dim=1)
        q = q.view(b, self.rows, self.cols, self.h, self.w).permute(0, 1, 3, 2, 4)
        return q.reshape(b, -1)

    def _untile(self, img: torch.Tensor) -> torch.Tensor:
        b = img.shape[0]
        t = img.view(b, self.rows, self.h, self.cols, self.w).permute(0, 1, 3, 2, 4)
        return t.reshape(b, self.rows * self.cols, self.h * self.w)[:, : self.c].reshape(b, -1)

    # -- the interface -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> uint8 (B, 5 + rows·H·cols·W): parameters, then the tile image."""
        s = _affine8.quantize(to_nchw(x, self.layout).flatten(1))
        return torch.cat([s[:, : _affine8.HEADER], self._tile(s[:, _affine8.HEADER:])], dim=1)

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 5 + rows·H·cols·W) -> (B, *in_shape)."""
        s = torch.cat([symbols[:, : _affine8.HEADER], self._untile(symbols[:, _affine8.HEADER:])], 1)
        y = _affine8.dequantize(s).view(-1, self.c, self.h, self.w)
        return from_nchw(y, self.layout)

    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """Features through the real codec; identity gradient; no likelihoods."""
        with torch.no_grad():
            s = self.encode(x)
            x_hat = self.decode(self.decompress(self.compress(s), self.spatial(s)))
        return BottleneckOutput(straight_through(x, x_hat), {})

    def spatial(self, symbols: torch.Tensor) -> tuple[int, ...]:
        """The feature map (C, H, W) the image tiles."""
        return (self.c, self.h, self.w)

    def _n(self) -> int:
        return _affine8.HEADER + self.image_size[0] * self.image_size[1]

    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        if symbols.dtype != torch.uint8 or tuple(symbols.shape[1:]) != (self._n(),):
            raise ValueError(f"{self.kind}: symbols must be uint8 (B, {self._n()}), got "
                             f"{tuple(symbols.shape)} {symbols.dtype}")
        out = []
        for s in symbols.cpu().numpy():
            img = Image.fromarray(s[_affine8.HEADER:].reshape(self.image_size), mode="L")
            buf = io.BytesIO()
            img.save(buf, format=self.format, **self._options())
            out.append([s[: _affine8.HEADER].tobytes() + buf.getvalue()])
        return out

    def _options(self) -> dict:
        return {"quality": self.quality}

    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        strings = check_strings(strings, self.n_streams)
        check_spatial(spatial, (self.c, self.h, self.w))
        rows = []
        for i, (s,) in enumerate(strings):
            if len(s) <= _affine8.HEADER:
                raise ValueError(f"{self.kind}: sample {i} is too short ({len(s)} bytes)")
            rows.append(np.concatenate([np.frombuffer(s[: _affine8.HEADER], np.uint8),
                                        self._read_image(s[_affine8.HEADER:], i)]))
        out = torch.from_numpy(np.stack(rows))
        _affine8.check_header(out)
        return out

    def _read_image(self, data: bytes, i: int) -> np.ndarray:
        """Decode one image, checking format and size from its header before any pixels."""
        hh, ww = self.image_size
        try:
            with Image.open(io.BytesIO(data), formats=[self.format]) as im:
                if im.size != (ww, hh):
                    raise ValueError(f"{self.kind}: sample {i} is a {im.size[0]}x{im.size[1]} "
                                     f"image, expected {ww}x{hh}")
                im.load()
                arr = np.asarray(im if im.mode == "L" else im.convert("L"), dtype=np.uint8)
        except ValueError:
            raise
        except Exception as e:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ...
            raise ValueError(f"{self.kind}: sample {i} is not a valid {self.format} image "
                             f"({type(e).__name__}: {e})") from None
        return arr.reshape(-1)


@register("jpeg")
class JPEG(ImageCodec):
    format = "JPEG"


@register("webp")
class WebP(ImageCodec):
    format = "WEBP"

    def _options(self) -> dict:
        return {"quality": self.quality, "method": 4}
