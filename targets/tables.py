"""The bottleneck's state in ``tables.safetensors``: entropy-coder tables and every weight.

::

    export:   bottleneck.state_dict() ──► tables.safetensors   (metadata: kind)
    load:     manifest.bottleneck (kind, options, shapes) ──► bottlenecks.create(...)
              ──► load_state_dict(tables.safetensors, strict=True)

Both sides need the module for the coder: the device for ``compress`` (CDF tables), the
server for ``decompress``. Rebuilding it from a name and options, then loading tensors from
safetensors (a JSON header and raw bytes), runs no pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

import bottlenecks
from splitter.errors import BundleError

__all__ = ["BottleneckSpec", "spec_of", "save_tables", "load_bottleneck"]


class BottleneckSpec(BaseModel):
    """Everything ``bottlenecks.create`` needs to rebuild the module with the same shapes."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    options: dict[str, Any] = Field(default_factory=dict, description="the kind's own options (channels, ...)")
    in_shape: list[int]
    out_shape: list[int]
    layout: str
    in_layout: str | None = Field(None, description="'nchw' when the bottleneck replaces the head")

    def create_args(self) -> dict[str, Any]:
        args = dict(self.options, in_shape=tuple(self.in_shape), layout=self.layout,
                    out_shape=tuple(self.out_shape))
        if self.in_layout is not None:
            args["in_layout"] = self.in_layout
        return args


def spec_of(split) -> BottleneckSpec:
    """The spec of ``split.bottleneck`` as ``splitter.compile.bottleneck`` created it."""
    bn = split.bottleneck
    options = {k: v for k, v in split.options.items() if k != "layout"}
    for k, v in options.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise BundleError(f"bottleneck option {k}={v!r} cannot be written to a manifest; use "
                              f"plain numbers and strings as options", file="manifest.json")
    return BottleneckSpec(kind=bn.kind, options=options, in_shape=list(bn.in_shape),
                          out_shape=list(bn.out_shape), layout=bn.layout,
                          in_layout="nchw" if split.mode == "replace" else None)


def save_tables(bottleneck: torch.nn.Module, path: str | Path) -> None:
    """Every tensor of ``bottleneck.state_dict()`` (contiguous copies) to ``path``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in bottleneck.state_dict().items()}
    # One metadata key: safetensors orders several at random, and the file should hash the same.
    save_file(state, str(path), metadata={"format": f"splitter-tables-1 {bottleneck.kind}"})


def load_bottleneck(spec: BottleneckSpec, data: bytes | str | Path,
                    name: str = "tables.safetensors") -> torch.nn.Module:
    """Rebuild the bottleneck from ``spec`` and load ``data`` (file bytes or a path) into it.

    Strict: every tensor must be there with its shape. No pickle runs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes
    from safetensors.torch import load_file

    try:
        bn = bottlenecks.create(spec.kind, **spec.create_args())
    except (KeyError, ValueError, TypeError) as e:
        raise BundleError(f"cannot rebuild the {spec.kind!r} bottleneck from the manifest: {e}. "
                          f"Is this splitter older than the one that exported the bundle?",
                          file="manifest.json") from e
    try:
        state = load_bytes(data) if isinstance(data, bytes) else load_file(str(data))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{name} is not a readable safetensors file: {e}", file=name) from e
    try:
        bn.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:3]
        raise BundleError(f"{name} does not fit the {spec.kind!r} bottleneck the manifest "
                          f"describes: {' '.join(first)[:500]}", file=name) from e
    return bn.eval()
