"""A Triton Inference Server model repository for a bundle's server half.

::

    DIR/
    ├── NAME/                  ensemble: payload ─► NAME_decode ─► symbols ─► NAME_tail ─► outputs
    │   ├── config.pbtxt
    │   └── 1/                 (empty: Triton wants a version directory)
    ├── NAME_decode/           Python backend: payload bytes ─► unpack + entropy decode ─► symbols
    │   ├── config.pbtxt
    │   └── 1/ model.py  manifest.json  tables.safetensors
    └── NAME_tail/             onnxruntime_onnx: symbols (N, *S) ─► the model's outputs
        ├── config.pbtxt
        └── 1/ model.onnx      (the bundle's tail.onnx, byte for byte)

The ensemble's input ``payload`` is BYTES ``[-1]`` (one payload an element, each one or
more samples); its outputs are the tail's, named as in the manifest. Every model has
``max_batch_size: 0``: a payload may hold several samples, so the batch dimension is the
decoder's output, not Triton's request count. The decoder needs this package (``splitter``,
with its coder dependencies) in the Python backend's environment; it verifies the tables
against the manifest's sha256 before loading them, and a bad payload fails its request
only. ``model.py``'s ``load`` / ``decode`` functions take no Triton import, so they can be
run (and are tested) without Triton.

Why ``config.pbtxt`` is written by hand: it is protobuf text format of Triton's
``ModelConfig``, whose schema ships with ``tritonclient[grpc]`` only; the writer below emits
the handful of fields these three models use, and the tests parse the result with that
schema when it is installed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from splitter.errors import BundleError

__all__ = ["write_repository", "pbtxt", "TRITON_TYPES", "MODEL_PY"]

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16",
                "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16",
                "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}

_ENUMS = re.compile(r"^(TYPE_[A-Z0-9]+|KIND_[A-Z]+)$")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str) and _ENUMS.match(v):
        return v
    return json.dumps(str(v))


def pbtxt(fields: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of ``fields``: dicts are messages, lists repeated fields."""
    pad = "  " * indent
    lines = []
    for key, v in fields.items():
        if isinstance(v, dict):
            lines += [f"{pad}{key} {{", pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += [f"{pad}{key} {{", pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [ {', '.join(_value(x) for x in v)} ]")
        else:
            lines.append(f"{pad}{key}: {_value(v)}")
    return "\n".join(line for line in lines if line)


def _triton_type(dtype: str) -> str:
    try:
        return TRITON_TYPES[dtype]
    except KeyError:
        raise BundleError(f"Triton has no type for {dtype}", file="tail.onnx") from None


def _onnx_io(onnx_bytes: bytes) -> tuple[tuple[str, str, list[int]], list[tuple[str, str, list[int]]]]:
    """(name, dtype, dims) of tail.onnx's input and outputs; -1 for symbolic dims."""
    import onnx
    from onnx import helper

    g = onnx.load_model_from_string(onnx_bytes).graph
    init = {i.name for i in g.initializer}

    def info(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return v.name, str(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims

    inputs = [info(v) for v in g.input if v.name not in init]
    if len(inputs) != 1:
        raise BundleError(f"tail.onnx has {len(inputs)} inputs; a tail takes the symbols only",
                          file="tail.onnx")
    return inputs[0], [info(v) for v in g.output]


def write_repository(server_half, out_dir: str | Path, *, name: str | None = None,
                     instance_kind: str | None = None, overwrite: bool = False) -> Path:
    """Write a Triton model repository serving ``server_half`` (a loaded bundle: ``.manifest``
    and ``.read(file)``) into ``out_dir``; returns ``out_dir``.

    ``name``: the ensemble's model name (default: the bundle's model, made Triton-safe);
    ``instance_kind``: ``"KIND_GPU"`` / ``"KIND_CPU"`` for the tail (default: Triton picks).
    """
    half = getattr(server_half, "server_half", None) or server_half  # a Bundle, or its server half
    m = half.manifest
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name or m.model)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BundleError(f"{out} exists and is not empty; pass an empty or new directory "
                              f"(or --overwrite)", file=str(out))
        shutil.rmtree(out)
    tail_onnx = half.read("tail.onnx")
    (in_name, in_dtype, in_dims), onnx_outs = _onnx_io(tail_onnx)
    sym_type = _triton_type(m.symbols.dtype)
    if in_dtype != m.symbols.dtype:
        raise BundleError(f"tail.onnx takes {in_dtype}, the manifest's symbols are {m.symbols.dtype}",
                          file="tail.onnx")
    sym_dims = [-1, *m.symbols.shape] if m.export.tail.dynamic_batch else in_dims
    outs = [{"name": n, "data_type": _triton_type(dt), "dims": dims if not m.export.tail.dynamic_batch
             else [-1, *dims[1:]]} for n, dt, dims in onnx_outs]
    payload_in = {"name": "payload", "data_type": "TYPE_STRING", "dims": [-1]}
    symbols = {"name": "symbols", "data_type": sym_type, "dims": sym_dims}

    dec, tail = f"{name}_decode", f"{name}_tail"
    files: dict[str, bytes | str] = {
        f"{dec}/config.pbtxt": pbtxt({
            "name": dec, "backend": "python", "max_batch_size": 0,
            "input": [payload_in], "output": [symbols],
            "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        }) + "\n",
        f"{dec}/1/model.py": MODEL_PY,
        f"{dec}/1/manifest.json": (Path(half.path) / "manifest.json").read_bytes(),
        f"{dec}/1/tables.safetensors": half.read("tables.safetensors"),
        f"{tail}/config.pbtxt": pbtxt({
            "name": tail, "platform": "onnxruntime_onnx", "max_batch_size": 0,
            "input": [{"name": in_name, "data_type": sym_type, "dims": sym_dims}],
            "output": outs,
            **({"instance_group": [{"kind": instance_kind, "count": 1}]} if instance_kind else {}),
        }) + "\n",
        f"{tail}/1/model.onnx": tail_onnx,
        f"{name}/config.pbtxt": pbtxt({
            "name": name, "platform": "ensemble", "max_batch_size": 0,
            "input": [payload_in], "output": outs,
            "ensemble_scheduling": {"step": [
                {"model_name": dec, "model_version": -1,
                 "input_map": {"key": "payload", "value": "payload"},
                 "output_map": {"key": "symbols", "value": "symbols"}},
                {"model_name": tail, "model_version": -1,
                 "input_map": {"key": in_name, "value": "symbols"},
                 "output_map": [{"key": o["name"], "value": o["name"]} for o in outs]},
            ]},
        }) + "\n",
    }
    for rel, data in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    (out / name / "1").mkdir(parents=True, exist_ok=True)
    return out


MODEL_PY = '''"""Triton Python backend: splitter payload bytes -> symbols, for the tail model after it.

    payload (BYTES [-1]) -> splitter.deploy.payload.unpack (limits) -> entropy decode
    -> symbols (N, *S), every payload's samples in order

Needs the splitter package in this Python environment. load() and decode() take no Triton
import: they run (and are tested) without Triton.
"""

import hashlib
import json
import os

import numpy as np


def load(version_dir):
    """The decoder for the bundle whose manifest.json and tables.safetensors are in version_dir."""
    from splitter.deploy.server import SymbolDecoder
    from targets.manifest import Manifest

    with open(os.path.join(version_dir, "manifest.json"), "rb") as f:
        manifest = Manifest.model_validate(json.loads(f.read()))
    with open(os.path.join(version_dir, "tables.safetensors"), "rb") as f:
        tables = f.read()
    want = manifest.files["tables.safetensors"].sha256
    if hashlib.sha256(tables).hexdigest() != want:
        raise RuntimeError("tables.safetensors does not match its sha256 in manifest.json; "
                           "write the Triton repository again with splitter export --triton")
    return SymbolDecoder(manifest, tables)


def decode(decoder, payloads):
    """payloads: array of bytes objects, any shape -> symbols (N, *S) as numpy."""
    parts = [decoder.decode_symbols(bytes(p)).numpy() for p in np.asarray(payloads, dtype=object).reshape(-1)]
    if not parts:
        raise ValueError("no payload in the request")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class TritonPythonModel:
    def initialize(self, args):
        self.decoder = load(os.path.join(args["model_repository"], args["model_version"]))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                payloads = pb_utils.get_input_tensor_by_name(request, "payload").as_numpy()
                out = pb_utils.Tensor("symbols", decode(self.decoder, payloads))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as e:  # a bad payload fails its own request only
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"bad payload: {e}")))
        return responses
'''
