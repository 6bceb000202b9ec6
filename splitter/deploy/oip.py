"""Open Inference Protocol v2 (KServe / Triton REST): message models and the binary tensor extension.

::

    POST /v2/models/{name}/infer
      body = JSON header [+ binary section]      Inference-Header-Content-Length: len(JSON)
        ─► parse_request ─► InferenceRequest + {input name: raw binary bytes}
        ─► bytes_elements(input) ─► [payload bytes, ...]        (BYTES: JSON base64 or binary)
      outputs {name: ndarray} ─► encode_response ─► JSON [+ binary section], headers

BYTES in the binary section: each element is a little-endian uint32 length and that many
bytes (Triton's layout). In the JSON form a BYTES element is a string; a payload is
arbitrary bytes, so it travels base64-encoded there (as MLServer's ``base64`` content type).

Outputs go in the binary section when the request asks (``parameters.binary_data`` on the
output, or ``binary_data_output`` on the request; ``tritonclient`` does by default), else as
a flat JSON list. Errors are ``{"error": "..."}`` with an HTTP status, as the protocol says.

Why hand-written: the protocol's only Python implementations live inside servers (Triton,
MLServer, KServe) that cannot be imported as a library without their runtime; this module
is the message layer alone, with every length checked before anything is sliced.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ProtocolError", "RequestInput", "RequestOutput", "InferenceRequest",
           "ResponseOutput", "InferenceResponse", "MetadataTensor", "ModelMetadata",
           "ServerMetadata", "parse_request", "bytes_elements", "encode_response", "DATATYPES",
           "HEADER_LENGTH"]

HEADER_LENGTH = "inference-header-content-length"

DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64",
             "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8",
             "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL"}


class ProtocolError(Exception):
    """A request that breaks the protocol: answered ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestInput(_Open):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Open):
    name: str
    parameters: dict[str, Any] | None = None

    @property
    def binary(self) -> bool | None:
        return None if self.parameters is None else self.parameters.get("binary_data")


class InferenceRequest(_Open):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(default_factory=dict, description="what runs: provider, "
                                       "batching, bundle (beyond the protocol's fields)")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, dict[str, bytes]]:
    """Body (+ the ``Inference-Header-Content-Length`` header) -> request and binary inputs.

    The binary section is cut into consecutive pieces, one per input that declares
    ``parameters.binary_data_size``, in the order of ``inputs``; the sizes must add up to
    the section exactly.
    """
    if header_length is None:
        head, rest = body, b""
    else:
        if not header_length.strip().isdigit():
            raise ProtocolError(f"Inference-Header-Content-Length is not a number: {header_length!r}")
        n = int(header_length)
        if n > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {n} exceeds the body's {len(body)} bytes")
        head, rest = body[:n], body[n:]
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"the inference header is not JSON ({e}); send the request as JSON, "
                            f"binary tensors after it with Inference-Header-Content-Length") from e
    try:
        req = InferenceRequest.model_validate(obj)
    except ValidationError as e:
        first = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise ProtocolError(f"not an inference request: {first}") from e
    binary: dict[str, bytes] = {}
    pos = 0
    for inp in req.inputs:
        size = (inp.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {inp.name!r}: binary_data_size must be a count of bytes")
        if pos + size > len(rest):
            raise ProtocolError(f"input {inp.name!r}: binary_data_size {size} runs past the "
                                f"{len(rest) - pos} bytes left in the body")
        binary[inp.name] = rest[pos:pos + size]
        pos += size
    if pos != len(rest):
        raise ProtocolError(f"{len(rest) - pos} bytes after the binary tensors that no input "
                            f"declares (binary_data_size)")
    return req, binary


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise ProtocolError(f"shape {shape} has a negative dimension")
        n *= d
    return n


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for d in data:
        out.extend(_flatten(d))
    return out


def bytes_elements(inp: RequestInput, raw: bytes | None, *, max_elements: int) -> list[bytes]:
    """The elements of a BYTES input: from its binary section (``raw``) or its JSON data (base64)."""
    if inp.datatype != "BYTES":
        raise ProtocolError(f"input {inp.name!r} must be BYTES (the payload bytes), not {inp.datatype}")
    n = _count(inp.shape)
    if not 1 <= n <= max_elements:
        raise ProtocolError(f"input {inp.name!r} has shape {inp.shape}: send 1 to {max_elements} payloads")
    if raw is not None:
        out, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(f"input {inp.name!r}: binary BYTES element {len(out)} has a "
                                    f"truncated length prefix")
            (size,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if size > len(raw) - pos:
                raise ProtocolError(f"input {inp.name!r}: BYTES element {len(out)} declares {size} "
                                    f"bytes, {len(raw) - pos} are left")
            out.append(raw[pos:pos + size])
            pos += size
    else:
        if inp.data is None:
            raise ProtocolError(f"input {inp.name!r} has neither data nor binary_data_size")
        out = []
        for i, e in enumerate(_flatten(inp.data)):
            if not isinstance(e, str):
                raise ProtocolError(f"input {inp.name!r} element {i}: a BYTES element in JSON is a "
                                    f"base64 string")
            try:
                out.append(base64.b64decode(e, validate=True))
            except (binascii.Error, ValueError) as err:
                raise ProtocolError(f"input {inp.name!r} element {i} is not base64 ({err}); in JSON "
                                    f"send the payload base64-encoded, or use the binary extension") from err
    if len(out) != n:
        raise ProtocolError(f"input {inp.name!r} has shape {inp.shape} ({n} elements) but holds {len(out)}")
    return out


def encode_response(resp: InferenceResponse, tensors: dict[str, np.ndarray],
                    binary: set[str]) -> tuple[bytes, dict[str, str]]:
    """Fill ``resp.outputs`` from ``tensors`` (in order); those named in ``binary`` go in the
    binary section. Returns the body and the headers to send with it."""
    chunks: list[bytes] = []
    outputs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = DATATYPES.get(str(arr.dtype))
        if dt is None:
            raise ProtocolError(f"output {name!r} has dtype {arr.dtype}, which the protocol has no "
                                f"type for", status=500)
        out = ResponseOutput(name=name, shape=list(arr.shape), datatype=dt)
        if name in binary:
            data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            out.parameters = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            out.data = arr.reshape(-1).tolist()
        outputs.append(out)
    resp.outputs = outputs
    head = resp.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(len(head))}
