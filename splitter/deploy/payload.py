"""The payload: what the device sends the server. Binary, versioned, no pickle.

::

    offset  size        field
    0       2           magic  b"SP"
    2       1           version (2)
    3       1           kind id (``WIRE`` in bottlenecks/wire.py), plus SHORT (0x80) for the short form
    long form:
    4       varint      batch size B            (1 .. limits.max_batch)
    .       1           D, number of symbol dims (0 .. 4)
    .       D varints   symbol dims per sample   (each 1 .. limits.max_dim)
    then, for each of the B samples, for each of the kind's S streams:
    .       varint      length L                 (0 .. limits.max_string)
    .       L           the coded string
    short form (one sample whose symbol dims are the ones the receiver expects):
    4       for each stream but the last: varint length L, then L bytes of string
    .       the last stream's string: every byte up to the end of the payload

Varints are unsigned LEB128 (7 bits a byte, at most 5 bytes). The header of a one-sample
long-form payload is 6 + D + Σ len(varint(dim)) + len(varint(L)) bytes: 11 for a 24×56×56
latent. The short form, which :func:`encode_symbols` writes whenever it can, is 4 bytes
(plus a length varint per extra stream); the receiver supplies the dims it was built for.

The server treats a payload as untrusted: :func:`unpack` checks every field against
:class:`Limits` and against the bytes actually present *before* slicing anything, returns
views into the input only, and rejects trailing bytes. Any violation raises
:class:`~splitter.errors.PayloadError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bottlenecks.wire import WIRE
from splitter.errors import ConfigError, PayloadError

__all__ = ["MAGIC", "VERSION", "KIND_IDS", "STREAMS", "Limits", "Payload", "pack", "unpack",
           "header_size", "encode_symbols", "decode_strings"]

MAGIC = b"SP"
VERSION = 2
SHORT = 0x80  # kind-byte flag: one sample, the receiver's dims, last string runs to the end
# read from the kinds' wire table (bottlenecks/wire.py: no torch, no pydantic)
KIND_IDS = {name: wire_id for name, (wire_id, _) in WIRE.items()}
KIND_NAMES = {v: k for k, v in KIND_IDS.items()}
STREAMS = {name: streams for name, (_, streams) in WIRE.items()}
MAX_DIMS = 4


@dataclass(frozen=True)
class Limits:
    """Bounds the server enforces before allocating anything for a payload (a dataclass, not a
    pydantic model: this module is on the device's import path)."""

    max_bytes: int = 64 << 20  # whole payload
    max_batch: int = 1024  # samples in one payload
    max_dim: int = 1 << 16  # any one symbol dimension
    max_symbols: int = 1 << 26  # symbols per sample (product of dims)
    max_string: int = 64 << 20  # one coded string

    def __post_init__(self):
        bad = {k: v for k, v in vars(self).items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(f"payload limits must be positive integers, got {bad}; pass e.g. "
                              f"Limits(max_bytes=1 << 20)")


@dataclass(frozen=True)
class Payload:
    kind: str
    spatial: tuple[int, ...]
    strings: list[list[bytes]]  # [sample][stream]

    @property
    def batch(self) -> int:
        return len(self.strings)


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pack(kind: str, spatial: tuple[int, ...], strings: list[list[bytes]], *,
         expected: tuple[int, ...] | None = None) -> bytes:
    """Frame ``strings[sample][stream]`` with the header. ``spatial``: symbol dims per sample.

    ``expected``: the dims the receiver was built for. A single sample with exactly those
    dims is written in the short form, which leaves them (and its last length) out.
    """
    if kind not in KIND_IDS:
        raise ValueError(f"unknown payload kind {kind!r}")
    if len(spatial) > MAX_DIMS:
        raise ValueError(f"at most {MAX_DIMS} symbol dims, got {spatial}")
    n = STREAMS[kind]
    for i, sample in enumerate(strings):
        if len(sample) != n:
            raise ValueError(f"sample {i}: kind {kind} has {n} streams, got {len(sample)}")
    spatial = tuple(int(d) for d in spatial)
    if len(strings) == 1 and expected is not None and spatial == tuple(expected):
        *framed, last = strings[0]
        parts = [MAGIC, bytes([VERSION, KIND_IDS[kind] | SHORT])]
        for s in framed:
            parts += [_varint(len(s)), bytes(s)]
        return b"".join([*parts, bytes(last)])
    parts = [MAGIC, bytes([VERSION, KIND_IDS[kind]]), _varint(len(strings)), bytes([len(spatial)])]
    parts += [_varint(d) for d in spatial]
    for sample in strings:
        for s in sample:
            parts += [_varint(len(s)), bytes(s)]
    return b"".join(parts)


def header_size(data: bytes, expected: tuple[int, ...] | None = None) -> int:
    """Bytes of ``data`` that are framing (everything but the coded strings)."""
    p = unpack(data, expected=expected)
    return len(data) - sum(len(s) for sample in p.strings for s in sample)


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise PayloadError(f"payload truncated reading {what} at byte {self.pos}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self, what: str, limit: int) -> int:
        value = 0
        for shift in range(0, 35, 7):
            b = self.byte(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if value > limit:
                    raise PayloadError(f"{what} = {value} exceeds the limit {limit}")
                return value
        raise PayloadError(f"{what}: varint longer than 5 bytes at byte {self.pos}")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:  # checked before slicing: no over-read, no allocation
            raise PayloadError(f"payload truncated: {what} needs {n} bytes, "
                               f"{len(self.data) - self.pos} left")
        s = self.data[self.pos:self.pos + n].tobytes()
        self.pos += n
        return s


def unpack(data: bytes, limits: Limits | None = None, *, kind: str | None = None,
           expected: tuple[int, ...] | None = None) -> Payload:
    """Parse and validate a payload; ``kind`` (when given) must match the header's kind.

    ``expected``: the symbol dims this receiver was built for; a short-form payload, which
    leaves its dims out, has exactly these (and cannot be read without them).
    """
    lim = limits or Limits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > lim.max_bytes:
        raise PayloadError(f"payload of {len(data)} bytes exceeds the limit of {lim.max_bytes}")
    r = _Reader(bytes(data) if isinstance(data, memoryview) else data)
    if len(data) < 2 or r.take(2, "magic") != MAGIC:
        raise PayloadError("not a splitter payload (bad magic); was it produced by Split.encode?")
    version = r.byte("version")
    if version != VERSION:
        raise PayloadError(f"payload version {version} is not supported (this build reads {VERSION})")
    kid = r.byte("kind")
    short, kid = bool(kid & SHORT), kid & ~SHORT
    if kid not in KIND_NAMES:
        raise PayloadError(f"unknown payload kind id {kid}")
    got = KIND_NAMES[kid]
    if kind is not None and got != kind:
        raise PayloadError(f"payload is for a {got!r} bottleneck, this server decodes {kind!r}")
    if short:
        return _unpack_short(r, got, expected, lim)
    batch = r.varint("batch", lim.max_batch)
    if batch == 0:
        raise PayloadError("payload holds no sample")
    ndim = r.byte("dims")
    if ndim > MAX_DIMS:
        raise PayloadError(f"payload declares {ndim} symbol dims; at most {MAX_DIMS}")
    spatial = tuple(r.varint(f"dim {i}", lim.max_dim) for i in range(ndim))
    if any(d == 0 for d in spatial):
        raise PayloadError(f"payload declares an empty symbol dim: {spatial}")
    count = 1
    for d in spatial:
        count *= d
    if count > lim.max_symbols:
        raise PayloadError(f"{count} symbols per sample exceed the limit {lim.max_symbols}")
    n = STREAMS[got]
    # Each string needs at least one length byte: reject impossible batch sizes up front.
    if batch * n > len(data) - r.pos:
        raise PayloadError(f"payload truncated: {batch} samples × {n} streams do not fit "
                           f"in {len(data) - r.pos} bytes")
    strings: list[list[bytes]] = []
    for i in range(batch):
        sample = []
        for j in range(n):
            length = r.varint(f"length of sample {i} stream {j}", lim.max_string)
            sample.append(r.take(length, f"sample {i} stream {j}"))
        strings.append(sample)
    if r.pos != len(data):
        raise PayloadError(f"{len(data) - r.pos} trailing bytes after the last string")
    return Payload(got, spatial, strings)


def _unpack_short(r: _Reader, kind: str, expected: tuple[int, ...] | None, lim: Limits) -> Payload:
    if expected is None:
        raise PayloadError("short-form payload leaves its symbol dims out; decode it with the "
                           "split or bundle it was made for")
    *framed, last = range(STREAMS[kind])
    sample = [r.take(r.varint(f"length of stream {j}", lim.max_string), f"stream {j}") for j in framed]
    rest = len(r.data) - r.pos
    if rest > lim.max_string:
        raise PayloadError(f"length of stream {last} = {rest} exceeds the limit {lim.max_string}")
    sample.append(r.take(rest, f"stream {last}"))
    return Payload(kind, tuple(expected), [sample])


def encode_symbols(bottleneck, symbols, expected: tuple[int, ...] | None = None) -> bytes:
    """Device side: entropy-code a batch of symbols with ``bottleneck`` and frame them.

    ``expected``: the symbol dims the server was built for (short form when they match).
    """
    return pack(bottleneck.kind, bottleneck.spatial(symbols), bottleneck.compress(symbols),
                expected=expected)


def decode_strings(bottleneck, p: Payload):
    """Server side: a validated payload's strings -> symbols; any decoder failure on these
    untrusted bytes is reported as :class:`PayloadError`."""
    try:
        return bottleneck.decompress(p.strings, p.spatial)
    except PayloadError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the decoder raises, the payload is at fault
        raise PayloadError(f"payload strings do not decode: {type(e).__name__}: {e}") from e
