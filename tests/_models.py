"""Small models shared by several test files."""

from __future__ import annotations

import torch


class BatchInt(torch.nn.Module):
    """``B = x.shape[0]`` read after the cut: the tail must take it from the wire."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        b = x.shape[0]
        y = self.body(self.stem(x))
        return y.reshape(b, -1)
