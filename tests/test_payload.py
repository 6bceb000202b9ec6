"""The payload format: exact framing round trips, and the server never trusts a payload.

Hypothesis throws well over 10,000 malformed payloads at ``Split.decode``; each raises
``PayloadError`` before the tail runs, with a bounded heap peak (work done, not time), and
none makes the server allocate beyond its limits.
"""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import splitter
from splitter.deploy import payload
from splitter.errors import ConfigError, PayloadError

KINDS = sorted(payload.KIND_IDS)
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def identity_split():
    return splitter.split(_tiny_model(), "1", bottleneck="identity", input_shape=(3, 16, 16))


@pytest.fixture(scope="module")
def good(identity_split):
    return identity_split.encode(torch.randn(2, 3, 16, 16))  # two samples: the long form


@pytest.fixture(scope="module")
def good_one(identity_split):
    data = identity_split.encode(torch.randn(1, 3, 16, 16))  # one sample: the short form
    assert data[3] & payload.SHORT
    return data


# -- framing -------------------------------------------------------------------------------

@given(
    kind=st.sampled_from(KINDS),
    spatial=st.lists(st.integers(1, 70_000), min_size=0, max_size=4).map(tuple),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_pack_unpack_round_trip(kind, spatial, data):
    n = payload.STREAMS[kind]
    batch = data.draw(st.integers(1, 4))
    strings = [[data.draw(st.binary(max_size=300)) for _ in range(n)] for _ in range(batch)]
    lim = payload.Limits(max_dim=1 << 17, max_symbols=1 << 70)
    p = payload.unpack(payload.pack(kind, spatial, strings), lim)
    assert (p.kind, p.spatial, p.strings) == (kind, spatial, strings)
    # The receiver's dims: one sample goes short, anything else stays long; both read back.
    data = payload.pack(kind, spatial, strings, expected=spatial)
    assert bool(data[3] & payload.SHORT) == (batch == 1)
    p = payload.unpack(data, lim, expected=spatial)
    assert (p.kind, p.spatial, p.strings) == (kind, spatial, strings)


def test_header_is_small():
    # One sample of a 24x56x56 entropy latent coded in 1,000 bytes: 11 bytes of header.
    data = payload.pack("entropy", (24, 56, 56), [[b"x" * 1000]])
    assert payload.header_size(data) == 11
    assert payload.header_size(payload.pack("hyperprior", (192, 16, 16), [[b"a" * 900, b"b" * 60]])) <= 16
    # Short form, when the receiver knows the dims: magic, version, kind; hyperprior adds
    # the y length (2 bytes for 900).
    dims = (24, 56, 56)
    short = payload.pack("entropy", dims, [[b"x" * 1000]], expected=dims)
    assert payload.header_size(short, expected=dims) == 4 and len(short) == 1004
    short = payload.pack("hyperprior", dims, [[b"a" * 900, b"b" * 60]], expected=dims)
    assert payload.header_size(short, expected=dims) == 6
    # Other dims than the receiver's: the long form, which says them.
    assert not payload.pack("entropy", dims, [[b"x"]], expected=(24, 28, 28))[3] & payload.SHORT


def test_short_form_needs_the_receivers_dims():
    data = payload.pack("entropy", (8, 4, 4), [[b"xyz"]], expected=(8, 4, 4))
    with pytest.raises(PayloadError, match="leaves its symbol dims out"):
        payload.unpack(data)
    with pytest.raises(PayloadError, match="exceeds the limit"):
        payload.unpack(data, payload.Limits(max_string=2), expected=(8, 4, 4))


def test_identity_round_trip_is_exact(identity_split):
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(identity_split.decode(identity_split.encode(x)), identity_split(x))
        one = identity_split.decode(identity_split.encode(x[0]))  # a single sample works too
        assert torch.equal(one, identity_split(x[:1]))
    assert one.shape == (1, 10)


# -- hostile payloads ------------------------------------------------------------------------

def _flip(data: bytes, pos: int, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[pos] ^= 1 << bit
    return bytes(flipped)


# What rejecting a payload may cost, in Python heap allocated beyond what it held before:
# a fixed allowance (the exception, its traceback, the parsed header) plus the payload's
# own size once. Asserted as work done, never as time (a loaded runner is not a bad parser).
REJECT_HEAP = 32 * 1024  # measured: at most 3.5 KiB above the payload size


def _must_reject(split, data: bytes, limits: payload.Limits | None = None) -> None:
    """``split.decode(data)`` raises PayloadError, the tail never runs, and the heap peak
    while rejecting stays within ``REJECT_HEAP + len(data)``."""
    ran: list[int] = []
    hook = split.tail.register_forward_pre_hook(lambda *_: ran.append(1))
    outer = tracemalloc.is_tracing()  # a caller may be measuring too: share its trace
    if not outer:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        with pytest.raises(PayloadError):
            split.decode(data, limits)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        hook.remove()
        if not outer:
            tracemalloc.stop()
    assert not ran, "a rejected payload reached the tail"
    assert peak <= REJECT_HEAP + len(data), f"rejecting {len(data)} bytes peaked at {peak:,} B of heap"


@given(cut=st.integers(0, 10_000))
@settings(FUZZ, max_examples=2000)
def test_truncated(identity_split, good, cut):
    _must_reject(identity_split, good[: cut % len(good)])


@given(extra=st.binary(min_size=1, max_size=64))
@settings(FUZZ, max_examples=2000)
def test_trailing_bytes(identity_split, good, extra):
    _must_reject(identity_split, good + extra)


@given(cut=st.integers(0, 10_000), extra=st.binary(min_size=1, max_size=64))
@settings(FUZZ, max_examples=1000)
def test_short_form_truncated_or_extended(identity_split, good_one, cut, extra):
    _must_reject(identity_split, good_one[: cut % len(good_one)])
    _must_reject(identity_split, good_one + extra)


@given(junk=st.binary(max_size=512))
@settings(FUZZ, max_examples=3000)
def test_foreign_bytes(identity_split, junk):
    if junk[:2] == payload.MAGIC:
        junk = b"XX" + junk[2:]
    _must_reject(identity_split, junk)


@given(pos=st.integers(0, 10), bit=st.integers(0, 7))
@settings(FUZZ, max_examples=2000)
def test_bit_flip_in_header_or_lengths(identity_split, good, pos, bit):
    # Every header byte and the first length field: a flip must be detected.
    _must_reject(identity_split, _flip(good, pos, bit))


@given(pos=st.integers(0, 3), bit=st.integers(0, 7))
@settings(FUZZ, max_examples=500)
def test_bit_flip_in_short_header(identity_split, good_one, pos, bit):
    _must_reject(identity_split, _flip(good_one, pos, bit))


@given(pos=st.integers(0, 100_000), bit=st.integers(0, 7))
@settings(FUZZ, max_examples=2000)
def test_bit_flip_anywhere_never_crashes(identity_split, good, pos, bit):
    try:
        out = identity_split.decode(_flip(good, pos % len(good), bit))
    except PayloadError:
        return
    assert out.shape == (2, 10)  # a flip inside raw float data is still a valid payload


@given(
    batch=st.integers(0, 2**35), dims=st.lists(st.integers(0, 2**35), max_size=6),
    length=st.integers(0, 2**35), kind=st.integers(0, 255), version=st.integers(0, 255),
)
@settings(FUZZ, max_examples=2000)
def test_declared_sizes_are_checked_before_allocation(identity_split, batch, dims, length, kind, version):
    def varint(n):
        return payload._varint(n)

    data = (payload.MAGIC + bytes([version, kind]) + varint(batch) + bytes([len(dims)])
            + b"".join(varint(d) for d in dims) + varint(length) + b"\0" * 16)
    limits = payload.Limits(max_bytes=1 << 16, max_batch=8, max_dim=1024, max_symbols=1 << 14,
                            max_string=1 << 15)
    tracemalloc.start()
    try:
        _must_reject(identity_split, data, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # nothing near the declared sizes was allocated


def test_oversized_payload_rejected_without_parsing(identity_split, good):
    with pytest.raises(PayloadError, match="exceeds the limit"):
        identity_split.decode(good, payload.Limits(max_bytes=len(good) - 1))


def test_wrong_kind_rejected(identity_split):
    other = payload.pack("crbq", (4, 8, 8), [[b"\0" * 10]])
    with pytest.raises(PayloadError, match="crbq"):
        identity_split.decode(other)


def test_wrong_symbol_shape_rejected(identity_split):
    other = payload.pack("identity", (5, 8, 8), [[b"\0" * (5 * 64 * 4)]])
    with pytest.raises(PayloadError, match="do not fit"):
        identity_split.decode(other)


def test_plain_split_has_no_coder():
    s = splitter.split(_tiny_model(), "1", input_shape=(3, 16, 16))
    with pytest.raises(splitter.errors.CutError, match="bottleneck="):
        s.encode(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("bad", [dict(max_bytes=0), dict(max_batch=-1), dict(max_dim=1.5),
                                 dict(max_string=True), dict(max_symbols="64")])
def test_limits_must_be_positive_integers(bad):
    with pytest.raises(ConfigError, match=f"positive integers.*{next(iter(bad))}"):
        payload.Limits(**bad)
    assert payload.Limits(max_bytes=1 << 20).max_bytes == 1 << 20
