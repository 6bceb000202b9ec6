"""identity: send the cut tensor as it is (fp32) or halved (fp16): the no-compression baseline.

::

    x (B, *S) ──encode──► x as fp32|fp16 ──compress──► raw little-endian bytes per sample
    bytes ──decompress──► (B, *S) ──decode──► x.float()
"""

from __future__ import annotations

import numpy as np
import torch

from bottlenecks.base import Bottleneck, BottleneckOutput, register

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}


@register("identity")
class Identity(Bottleneck):


    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw", dtype: str = "fp32",
                 out_shape: tuple[int, ...] | None = None):
        if out_shape is not None and tuple(out_shape) != tuple(in_shape):
            raise ValueError("identity cannot replace a head (mode='replace'): it has no encoder; "
                             "use 'entropy' or 'crbq'")
        super().__init__(in_shape, layout, out_shape)
        if dtype not in _DTYPES:
            raise ValueError(f"identity dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
        self.dtype = _DTYPES[dtype]

    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        # fp16 rounding in training too, so the tail sees what the server will see.
        return BottleneckOutput(x + (x.to(self.dtype).to(x.dtype) - x).detach(), {})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        return symbols.to(torch.float32)

    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        arr = symbols.detach().cpu().contiguous().numpy()
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)  # wire order is little-endian
        return [[arr[i].tobytes()] for i in range(arr.shape[0])]

    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        np_dtype = np.dtype(np.float16 if self.dtype == torch.float16 else np.float32).newbyteorder("<")
        count = int(np.prod(spatial)) if spatial else 1
        want = count * np_dtype.itemsize
        rows = []
        for i, sample in enumerate(strings):
            if len(sample) != 1 or len(sample[0]) != want:  # checked before any allocation
                raise ValueError(f"sample {i}: expected one string of {want} bytes, got "
                                 f"{[len(s) for s in sample]}")
            rows.append(np.frombuffer(sample[0], dtype=np_dtype))
        arr = np.stack(rows).astype(np_dtype.newbyteorder("="))
        return torch.from_numpy(arr.reshape(len(strings), *spatial))
