"""The server tail (symbols -> model output): ``tail.pt2`` for torch, ``tail.onnx`` for the runtime.

::

    symbols (B, *S) ──► [bottleneck.decode ─► rest of the model] ──► output(s): a tensor,
                        a tuple, or a dict (ONNX outputs named by its keys)
                        tail.pt2  = torch.export.export(split.tail) + torch.export.save
                        tail.onnx = the same graph through targets.onnx_head.export_onnx

Why the runtime serves ``tail.onnx`` and never loads ``tail.pt2`` (checked in torch 2.15's
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``):

- ``torch.export.load``'s own docstring: "uses pickle under the hood to load models. Never
  load data from an untrusted source."
- every archive holds ``data/sample_inputs/model.pt``, a ``torch.save`` pickle, and
  ``load_pt2`` always deserialises it: ``torch.load(weights_only=True)``, falling back to
  ``weights_only=False`` (arbitrary code) when that fails;
- weights are raw bytes described by JSON, but each entry carries a ``use_pickle`` flag read
  from the file itself: an edited archive turns on ``torch.load(weights_only=False)``;
  custom and opaque constants go through ``pickle.loads``;
- even the JSON graph is not inert: symbolic shape strings are parsed by ``sympy.sympify``,
  which evaluates them.

So the pt2 format is not pickle-free, and rebuilding the tail from its JSON would still run
the deserializer's sympify. ONNX is protobuf: onnxruntime parses it and runs no Python, so
the tail is exported to ONNX too and the runtime runs that. ``tail.pt2`` stays in the bundle
(hashed in the manifest) for trusted torch consumers: ``torch.export.load``, AOTInductor.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from pydantic import BaseModel

from splitter.errors import BundleError
from targets.manifest import OnnxExport, Pt2Export
from targets.onnx_head import MAX_BATCH, export_onnx, frozen, placeholder_name

__all__ = ["Pt2Export", "TailExport", "export_tail", "tail_output_names", "output_structure",
           "flat_outputs"]


class TailExport(BaseModel):
    pt2: Pt2Export
    onnx: OnnxExport


def output_structure(output) -> str:
    """``"tensor"``, ``"tuple"`` (or list) or ``"dict"`` (string keys) of tensors."""
    if isinstance(output, torch.Tensor):
        return "tensor"
    if isinstance(output, (tuple, list)) and output and all(isinstance(t, torch.Tensor) for t in output):
        return "tuple"
    if (isinstance(output, dict) and output and all(isinstance(k, str) and k for k in output)
            and all(isinstance(t, torch.Tensor) for t in output.values())):
        return "dict"
    raise BundleError(f"the tail returns {type(output).__name__}; a bundle needs a tensor, a "
                      f"tuple of tensors or a dict of tensors with string keys", file="tail.onnx")


def tail_output_names(output) -> list[str]:
    """``["output"]`` for one tensor, ``["output_0", ...]`` for a tuple, the keys of a dict."""
    structure = output_structure(output)
    if structure == "tensor":
        return ["output"]
    if structure == "tuple":
        return [f"output_{i}" for i in range(len(output))]
    return list(output)


def flat_outputs(output) -> list[torch.Tensor]:
    """The output's tensors in :func:`tail_output_names` order."""
    output_structure(output)
    if isinstance(output, torch.Tensor):
        return [output]
    return list(output.values()) if isinstance(output, dict) else list(output)


class _Flat(torch.nn.Module):
    """The tail with its outputs as a flat tuple, so every exporter names them the same way."""

    def __init__(self, tail: torch.nn.Module):
        super().__init__()
        self.tail = tail

    def forward(self, symbols: torch.Tensor):
        return tuple(flat_outputs(self.tail(symbols)))


def _export_pt2(tail, symbols: torch.Tensor, path: Path, dynamic: bool):
    """``tail.pt2``; returns its record and the ExportedProgram (the ONNX export reuses it)."""
    attempts: dict[str, str] = {}
    for dyn in ([True, False] if dynamic else [False]):
        shapes = {placeholder_name(tail): {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dyn else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(tail, (symbols if dyn else symbols[:1],), dynamic_shapes=shapes)
                torch.export.save(ep, os.fspath(path))
            return Pt2Export(dynamic_batch=dyn, attempts=attempts), ep
        except Exception as e:  # noqa: BLE001 - recorded, then the static retry
            attempts["dynamic" if dyn else "static"] = f"{type(e).__name__}: {str(e)[:300]}"
    raise BundleError(f"torch.export could not export the tail: {attempts}", file=path.name)


def export_tail(split, out_dir: str | Path, *, exporter: str = "auto") -> TailExport:
    """Write ``tail.pt2`` and ``tail.onnx`` for ``split.tail`` into ``out_dir``."""
    out_dir = Path(out_dir)
    g = split.graph
    dynamic = g.frontend != "export"  # a torch.export-traced graph is fixed to its batch of 1
    x = torch.randn(2 if dynamic else 1, *g.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        symbols = split.head(x)
        out = split.tail(symbols)
    names = tail_output_names(out)
    with frozen(split.tail, split.bottleneck):
        pt2, program = _export_pt2(split.tail, symbols, out_dir / "tail.pt2", dynamic)
        tail = split.tail
        if output_structure(out) == "dict":  # ONNX has no dicts: the outputs, named by their keys
            tail, program = _Flat(split.tail).eval(), None
        onnx_info = export_onnx(tail, symbols, out_dir / "tail.onnx", input_name="symbols",
                                output_names=names, exporter=exporter,
                                dynamic_batch=pt2.dynamic_batch, program=program)
    return TailExport(pt2=pt2, onnx=onnx_info)
