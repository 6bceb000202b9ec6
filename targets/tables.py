"""The bottleneck's state, split by side: ``server/tables.safetensors`` and ``device/coder.safetensors``.

::

    export:   bottleneck.state_dict() − encoder.* ──► server/tables.safetensors (metadata: kind)
              device_state(bottleneck)           ──► device/coder.safetensors  (no decoder, no tail)
    load:     server: manifest.bottleneck (kind, options, shapes) ──► bottlenecks.create(...)
                      ──► load_state_dict(tables.safetensors): all but encoder.*, nothing else
              device: coder.safetensors ──► numpy tables (splitter.deploy.device, no torch)

The server rebuilds the module for ``decompress``; its main encoder stays at its initial
values (it runs inside ``head.onnx`` on the device, and the server never calls it). The
device gets the entropy model's CDF tables (``entropy``), nothing (``identity``, ``crbq``,
``jpeg``, ``webp``: their coder has no state), or for ``hyperprior`` its ``coder_state()``:
the hyper-encoder and -decoder layer by layer, the z medians and both entropy models'
tables, which its numpy coder (``splitter.deploy.coder.HyperCoder``) runs; never the main
encoder (inside ``head.onnx``) nor the decoder. safetensors is a JSON header and raw bytes: loading
runs no pickle. Importing this module loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bottlenecks.spec import BottleneckSpec
from splitter.errors import BundleError

if TYPE_CHECKING:
    import torch

__all__ = ["BuiltBottleneck", "spec_of", "save_tables", "load_bottleneck", "device_state",
           "save_device_tables"]


class BuiltBottleneck(BottleneckSpec):
    """The one :class:`~bottlenecks.spec.BottleneckSpec` (kind, mode, validated options) plus
    the shapes it was built for: everything ``bottlenecks.create`` needs to rebuild the module."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    layout: str

    def create_args(self) -> dict[str, Any]:
        return dict(self.options, in_shape=self.in_shape, layout=self.layout,
                    out_shape=self.out_shape, mode=self.mode)


def spec_of(split) -> BuiltBottleneck:
    """The built bottleneck of ``split``, as ``splitter.compile.bottleneck`` created it."""
    bn = split.bottleneck
    options = {k: v for k, v in split.options.items() if k != "layout"}
    for k, v in options.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise BundleError(f"bottleneck option {k}={v!r} cannot be written to a manifest; use "
                              f"plain numbers and strings as options", file="manifest.json")
    return BuiltBottleneck(kind=bn.kind, mode="replace" if split.mode == "replace" else "insert",
                           options=options, in_shape=tuple(bn.in_shape),
                           out_shape=tuple(bn.out_shape), layout=bn.layout)


_DEVICE_ONLY = ("encoder.",)  # the main encoder runs inside head.onnx; the server never needs it


def save_tables(bottleneck: torch.nn.Module, path: str | Path) -> None:
    """The server's state: every tensor of ``bottleneck.state_dict()`` but the main encoder's
    (contiguous copies) to ``path``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in bottleneck.state_dict().items()
             if not k.startswith(_DEVICE_ONLY)}
    # One metadata key: safetensors orders several at random, and the file should hash the same.
    save_file(state, str(path), metadata={"format": f"splitter-tables-1 {bottleneck.kind}"})


_DEVICE_SIDE = {  # kind -> state_dict prefixes its device coder reads (none: stateless coder)
    "entropy": ("entropy_bottleneck._quantized_cdf", "entropy_bottleneck._offset",
                "entropy_bottleneck._cdf_length"),
}


def device_state(bottleneck: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the device's coder needs (see the module doc): the bottleneck's ``coder_state()``
    where it has one (hyperprior), else a part of its ``state_dict()``."""
    if hasattr(bottleneck, "coder_state"):
        return {k: v.contiguous().clone() for k, v in bottleneck.coder_state().items()}
    prefixes = _DEVICE_SIDE.get(bottleneck.kind, ())
    return {k: v.detach().cpu().contiguous().clone() for k, v in bottleneck.state_dict().items()
            if k.startswith(prefixes)}


def save_device_tables(bottleneck: torch.nn.Module, path: str | Path) -> None:
    """:func:`device_state` to ``path`` (safetensors; an empty file for stateless coders)."""
    from safetensors.torch import save_file

    save_file(device_state(bottleneck), str(path),
              metadata={"format": f"splitter-coder-1 {bottleneck.kind}"})


def load_bottleneck(spec: BottleneckSpec, data: bytes | str | Path,
                    name: str = "tables.safetensors") -> torch.nn.Module:
    """Rebuild the bottleneck from ``spec`` and load ``data`` (file bytes or a path) into it.

    Strict: every tensor but the main encoder's (which the server never runs) must be there
    with its shape, and nothing else. No pickle runs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes
    from safetensors.torch import load_file

    import bottlenecks

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
        missing, unexpected = bn.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:3]
        raise BundleError(f"{name} does not fit the {spec.kind!r} bottleneck the manifest "
                          f"describes: {' '.join(first)[:500]}", file=name) from e
    missing = [k for k in missing if not k.startswith(_DEVICE_ONLY)]
    if missing or unexpected:
        raise BundleError(f"{name} does not fit the {spec.kind!r} bottleneck the manifest "
                          f"describes: missing {missing[:5]}, unexpected {list(unexpected)[:5]}",
                          file=name)
    return bn.eval()
