"""The device head as ONNX: ``head.onnx`` maps an image batch to the bottleneck's symbols.

::

    image (B, C, H, W) float32 ──► head.onnx ──► symbols (B, *S) integer (or float for identity)

Exporters are tried in order, and the first that works is recorded in the manifest:

1. ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), batch
   dimension dynamic, then static;
2. ``torchscript``: ``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``, then static.

Weights are stored inside the file (no external data), so one file is the whole head.
The same function exports the tail (``targets.tail``): "head" names the first user.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import torch
from torch import nn

from splitter.errors import BundleError
from targets.manifest import OnnxExport  # the record; defined there so the device needs no torch

__all__ = ["OnnxExport", "export_onnx", "export_head", "EXPORTERS", "frozen"]

EXPORTERS = ("dynamo", "torchscript")
MAX_BATCH = 1024  # upper bound of the dynamic batch dimension


def placeholder_name(module: nn.Module) -> str:
    graph = getattr(module, "graph", None)
    if graph is not None:
        names = [n.name for n in graph.nodes if n.op == "placeholder"]
        if len(names) == 1:
            return names[0]
    import inspect

    return next(iter(inspect.signature(module.forward).parameters))


def _dynamo(module, example, path, input_name, output_names, dynamic, program=None):
    shapes = {placeholder_name(module): {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dynamic else None
    if program is not None:  # already exported (with its own dynamic shapes): reuse it
        module, shapes = program, None
    # The exporter reports progress on stdout; the caller prints its own summary.
    with redirect_stdout(io.StringIO()):
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[input_name],
                                    output_names=output_names, dynamic_shapes=shapes,
                                    verbose=False, optimize=True)
        program.save(os.fspath(path), external_data=False)


def _torchscript(module, example, path, input_name, output_names, dynamic, program=None):
    axes = {n: {0: "batch"} for n in [input_name, *output_names]} if dynamic else None
    torch.onnx.export(module, (example,), os.fspath(path), dynamo=False, input_names=[input_name],
                      output_names=output_names, dynamic_axes=axes, opset_version=17,
                      do_constant_folding=True)


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path, *, input_name: str,
                output_names: list[str], exporter: str = "auto", dynamic_batch: bool = True,
                program: torch.export.ExportedProgram | None = None) -> OnnxExport:
    """Export ``module(example)`` to ``path`` (weights inside); returns what worked.

    ``exporter`` is ``"auto"`` (dynamo, then torchscript), ``"dynamo"`` or ``"torchscript"``.
    ``program``: ``torch.export.export(module, ...)`` when the caller already has it; the
    dynamo exporter then starts from it (its batch is dynamic iff ``dynamic_batch``).
    Raises :class:`~splitter.errors.BundleError` listing every failure when none works.
    """
    import onnx

    order = list(EXPORTERS) if exporter == "auto" else [exporter]
    if any(e not in EXPORTERS for e in order):
        raise BundleError(f"exporter must be 'auto' or one of {EXPORTERS}, not {exporter!r}")
    path = Path(path)
    attempts: dict[str, str] = {}
    module = module.eval()
    for name in order:
        fn = _dynamo if name == "dynamo" else _torchscript
        for dynamic in ([True, False] if dynamic_batch else [False]):
            tag = f"{name}{'' if dynamic else ' (static batch)'}"
            reuse = program if dynamic == dynamic_batch else None
            # A fixed batch is 1: the runtime then feeds any batch one sample at a time.
            ex = example if dynamic else example[:1]
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    fn(module, ex, path, input_name, output_names, dynamic, reuse)
                proto = onnx.load(os.fspath(path), load_external_data=False)
                onnx.checker.check_model(proto)
            except Exception as e:  # noqa: BLE001 - each failure is recorded, then the next try
                attempts[tag] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                path.unlink(missing_ok=True)
                continue
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
            return OnnxExport(exporter=name, dynamic_batch=dynamic, batch=int(ex.shape[0]),
                              opset=opset, attempts=attempts)
    tried = "; ".join(f"{k}: {v}" for k, v in attempts.items())
    raise BundleError(f"no ONNX exporter could export {type(module).__name__} ({tried}). Split at "
                      f"another layer, or make the failing op exportable.", file=path.name)


@contextmanager
def frozen(*modules: nn.Module | None):
    """Parameters of ``modules`` with ``requires_grad=False`` for the duration (restored after).

    An exporter that traces (torchscript) refuses to bake a tensor that requires grad into
    the graph as a constant, which is what a parameter the traced module reads but does not
    register becomes (the head reads the bottleneck's entropy-model medians that way).
    """
    params = {id(p): p for m in modules if m is not None for p in m.parameters()}
    flags = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(False)
        yield
    finally:
        for k, p in params.items():
            p.requires_grad_(flags[k])


def export_head(split, path: str | Path, *, exporter: str = "auto") -> OnnxExport:
    """``split.head`` (image -> symbols) to ``path``.

    The example batch has two samples: torch.export specialises a dimension of size 1, so a
    batch-1 example could never give a dynamic batch axis.
    """
    g = split.graph
    dynamic = g.frontend != "export"  # a torch.export-traced graph is fixed to its batch of 1
    example = torch.randn(2 if dynamic else 1, *g.input_shape, generator=torch.Generator().manual_seed(0))
    with frozen(split.head, split.bottleneck):
        return export_onnx(split.head, example, path, input_name="image", output_names=["symbols"],
                           exporter=exporter, dynamic_batch=dynamic)
