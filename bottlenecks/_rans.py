"""Entropy coding of integer symbols under CompressAI's tables, hardened for the network.

Two coders share CompressAI's tables (``_quantized_cdf`` / ``_cdf_length`` / ``_offset``,
16-bit precision) and its value mapping (symbols outside a table's range become an escape
bin plus their value in 4-bit pieces). Which one codes a stream is fixed by its number of
symbols ``n``, which both sides know:

- ``n <= SMALL_STREAM``: :func:`_small_encode`, a byte-wise rANS written here (32-bit state,
  ``L = 2**23``, byte renormalisation) that starts from state 0 and flushes only the
  significant bytes of its final state, so a stream costs its information content rounded
  up to a byte, plus about one byte. CompressAI's coder flushes a 64-bit state in 32-bit
  words (at least 8 bytes), which for a 128-symbol latent coded in 6 bytes of information
  more than doubles the payload. Hand-written for that reason; it is pure Python, hence the
  size bound.
- larger streams: CompressAI's C++ ``RansEncoder``/``RansDecoder``, through the guards below.

CompressAI's ``RansEncoder``/``RansDecoder`` (``compressai.ans``) are fast and exact, but
they trust their input:

- the decoder reads 32-bit words past the end of a short or corrupted string, as many
  as the symbols it is asked for (and a bypass-coded escape can ask for ~15x the bits it
  was given);
- the encoder loops without end on a symbol whose escape value needs more than 28 bits,
  and overruns its output buffer for fewer than 6 symbols.

So every kind with an entropy model goes through :func:`encode` / :func:`decode`, which

1. bound the symbols (``|s| <= limit``) before the encoder sees them;
2. hand the C++ coder only streams of more than ``SMALL_STREAM`` symbols, so its buffer
   overrun for fewer than 6 cannot occur;
3. check a string's length against what ``n`` symbols can possibly cost, then decode
   (the C++ coder from a zero-padded copy long enough for any bit pattern, bound in
   :func:`_pad_for`), so reads stay inside memory we own and time is O(n + len(string));
4. range-check the decoded symbols and re-encode them: a string that does not re-encode
   to itself byte for byte was not written by :func:`encode`, and is rejected.

Any string therefore either raises ``ValueError`` or decodes to in-range symbols whose
encoding it is; nothing crashes or hangs. (The byte-wise coder has no redundancy, so many
corrupted strings are valid encodings of other symbols: integrity is the transport's job.)
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import torch
from compressai import ans

__all__ = ["SYMBOL_LIMIT", "SMALL_STREAM", "Tables", "encode", "decode", "resize_tables_on_load"]

SYMBOL_LIMIT = 2**15  # |latent symbol| bound: escapes then need <= 5 nibbles
SMALL_STREAM = 4096  # streams of at most this many symbols use the byte-wise coder

_PREC = 16  # CompressAI's entropy_coder_precision: every table row sums to 2**16
_L = 1 << 23  # lower bound of the normalised state; the state stays below 2**31
_NIB = 1 << (_PREC - 4)  # an escape nibble is a uniform symbol of frequency 2**12
_MAX_NIBBLES = 6  # escape values below 2**24; SYMBOL_LIMIT-bounded values need <= 5


@dataclass(frozen=True)
class Tables:
    """One entropy model's coder tables as the C++ coder wants them (plain lists)."""

    cdf: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, model: torch.nn.Module) -> Tables:
        """Read ``_quantized_cdf``, ``_cdf_length``, ``_offset`` of a CompressAI entropy model.

        Cached on the model until a buffer is replaced (``update()``) or written in place
        (``load_state_dict``): a Gaussian table is ~200k ints, too many to list per call.
        """
        bufs = (model._quantized_cdf, model._cdf_length, model._offset)
        if any(b.numel() == 0 for b in bufs):
            raise ValueError("entropy coder tables are empty; call bottleneck.update() after "
                             "training (or load a state dict that has them)")
        key = tuple((b.data_ptr(), b._version) for b in bufs)
        cached = model.__dict__.get("_coder_tables")
        if cached is None or cached[0] != key:
            cdf, lengths, offsets = bufs
            lengths = lengths.reshape(-1).tolist()
            rows = [row[:n] for row, n in zip(cdf.tolist(), lengths)]  # the coder reads no further
            cached = (key, cls(rows, lengths, offsets.reshape(-1).tolist()))
            model.__dict__["_coder_tables"] = cached
        return cached[1]


# -- the byte-wise coder for short streams ---------------------------------------------------
def _bins(symbols: list[int], indexes: list[int], tables: Tables) -> list[tuple[int, int]]:
    """(start, frequency) of every coded step, in decoding order (escapes add nibbles)."""
    steps = []
    for s, i in zip(symbols, indexes):
        cdf, top = tables.cdf[i], tables.lengths[i] - 2  # bin ``top`` is the escape
        v = s - tables.offsets[i]
        raw = -1
        if v < 0:
            raw, v = -2 * v - 1, top
        elif v >= top:
            raw, v = 2 * (v - top), top
        freq = cdf[v + 1] - cdf[v]
        if freq <= 0:
            raise ValueError(f"coder table {i} gives bin {v} no probability; the tables are corrupt")
        steps.append((cdf[v], freq))
        if raw >= 0:
            nibbles = (raw.bit_length() + 3) // 4
            steps.append((nibbles * _NIB, _NIB))
            steps += [(((raw >> (4 * j)) & 15) * _NIB, _NIB) for j in range(nibbles)]
    return steps


def _small_encode(symbols: list[int], indexes: list[int], tables: Tables) -> bytes:
    x, out = 0, bytearray()
    for start, freq in reversed(_bins(symbols, indexes, tables)):
        x_max = (_L >> _PREC << 8) * freq
        while x >= x_max:
            out.append(x & 0xFF)
            x >>= 8
        x = ((x // freq) << _PREC) + x % freq + start
    out.reverse()
    return x.to_bytes((x.bit_length() + 7) // 8, "big") + bytes(out)


def _small_decode(data: bytes, indexes: list[int], tables: Tables) -> list[int]:
    """Decode; the caller checks the result re-encodes to ``data``."""
    mask, pos, end, x = (1 << _PREC) - 1, 0, len(data), 0

    def refill() -> None:  # the encoder's emissions, read back; the flush first
        nonlocal x, pos
        while x < _L and pos < end:
            x = (x << 8) | data[pos]
            pos += 1

    def step(start: int, freq: int) -> None:
        nonlocal x
        x = freq * (x >> _PREC) + (x & mask) - start
        refill()

    refill()
    out = []
    for i in indexes:
        cdf, top = tables.cdf[i], tables.lengths[i] - 2
        v = bisect_right(cdf, x & mask, 0, top + 1) - 1
        step(cdf[v], cdf[v + 1] - cdf[v])
        if v == top:
            nibbles, raw = (x & mask) // _NIB, 0
            step(nibbles * _NIB, _NIB)
            if nibbles > _MAX_NIBBLES:
                raise ValueError("corrupted rANS string: escape value too long")
            for j in range(nibbles):
                nib = (x & mask) // _NIB
                step(nib * _NIB, _NIB)
                raw |= nib << (4 * j)
            v = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + top
        out.append(v + tables.offsets[i])
    if x != 0 or pos != end:
        raise ValueError("corrupted rANS string: the coder state does not end where it began")
    return out


def _encode_lists(symbols: list[int], indexes: list[int], tables: Tables) -> bytes:
    """The one place that picks the coder: by the symbol count, which both sides know."""
    if len(indexes) <= SMALL_STREAM:
        return _small_encode(symbols, indexes, tables)
    return ans.RansEncoder().encode_with_indexes(symbols, indexes, tables.cdf, tables.lengths,
                                                 tables.offsets)


def encode(symbols: torch.Tensor, indexes: torch.Tensor, tables: Tables,
           limit: int = SYMBOL_LIMIT) -> bytes:
    """Integer symbols ``(n,)`` coded with table ``indexes[k]`` each -> one rANS string."""
    s = symbols.reshape(-1).to(torch.int64)
    if s.numel() and int(s.abs().max()) > limit:
        raise ValueError(f"symbol magnitude {int(s.abs().max())} exceeds the coder limit {limit}; "
                         f"the latent is out of range (check the bottleneck's input scale)")
    return _encode_lists(s.tolist(), indexes.reshape(-1).to(torch.int64).tolist(), tables)


def max_string_bytes(n: int) -> int:
    """Longest string :func:`encode` writes for ``n`` symbols within the limit.

    A symbol costs at most 16 bits (frequency >= 1 of 2**16) plus an escape of at most
    6 nibbles (count + 5 raw nibbles for |s| < 2**18); the flush adds two words (the
    byte-wise coder: at most 4 bytes).
    """
    return 5 * n + (4 if n <= SMALL_STREAM else 16)


def _pad_for(n: int, nbytes: int) -> int:
    """Zero bytes after a string so that decoding any bit pattern stays in bounds.

    Per symbol the decoder reads <= 1 word for the symbol; an escape then reads a run of
    0xF count nibbles (<= 9 from its state, then 8 per all-ones word; a zero pad word ends
    it), each adding 15 raw nibbles to read. Over ``n`` symbols and ``B`` input bytes that
    is < 92n + 17B + 8 bytes; 128 per symbol and 24 per byte leave a margin.
    """
    return 24 * nbytes + 128 * n + 64


def decode(string: bytes, indexes: torch.Tensor, tables: Tables,
           limit: int = SYMBOL_LIMIT) -> torch.Tensor:
    """Inverse of :func:`encode`: one string -> int32 symbols ``(n,)``; ``ValueError`` if malformed."""
    if not isinstance(string, (bytes, bytearray)):
        raise ValueError(f"expected bytes, got {type(string).__name__}")
    string = bytes(string)
    idx = indexes.reshape(-1).to(torch.int64).tolist()
    n = len(idx)
    if n <= SMALL_STREAM:
        if len(string) > max_string_bytes(n):
            raise ValueError(f"rANS string of {len(string)} bytes cannot hold {n} symbols "
                             f"(at most {max_string_bytes(n)})")
        values = _small_decode(string, idx, tables)
    else:
        if len(string) < 8 or len(string) % 4 or len(string) > max_string_bytes(n):
            raise ValueError(f"rANS string of {len(string)} bytes cannot hold {n} symbols "
                             f"(valid: a multiple of 4 in [8, {max_string_bytes(n)}])")
        values = ans.RansDecoder().decode_with_indexes(string + bytes(_pad_for(n, len(string))),
                                                       idx, tables.cdf, tables.lengths,
                                                       tables.offsets)
    # Range first: CompressAI's encoder would loop on an out-of-range escape.
    if values and max(map(abs, values)) > limit:
        raise ValueError("corrupted rANS string: decoded symbols out of range")
    if _encode_lists(values, idx, tables) != string:
        raise ValueError("corrupted rANS string: it does not re-encode to itself")
    return torch.tensor(values, dtype=torch.int32)


def resize_tables_on_load(module: torch.nn.Module) -> None:
    """Let ``load_state_dict`` fill coder tables that are still empty in ``module``.

    CompressAI's entropy models keep their CDFs in buffers that are empty until
    ``update()``; a plain ``load_state_dict`` then fails on the size mismatch (CompressAI
    works around it in ``CompressionModel.load_state_dict``). This hook resizes each empty
    buffer to the incoming tensor's shape first.
    """

    def hook(state_dict, prefix, *_):
        for name, buf in list(module.named_buffers()):
            key = prefix + name
            if key in state_dict and buf.numel() == 0 and state_dict[key].numel() > 0:
                owner = module.get_submodule(name.rpartition(".")[0])
                leaf = name.rpartition(".")[2]
                owner._buffers[leaf] = torch.empty_like(state_dict[key], device=buf.device)

    module._register_load_state_dict_pre_hook(hook)
