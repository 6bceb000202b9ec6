"""The entropy coder both halves share: integer symbols + coder tables -> one string. numpy only.

::

    symbols s (n,) int, table indexes i (n,) ──► v = s − offset[i]; bin = v, or the escape bin
        n <= SMALL_STREAM : byte-wise rANS, written here (below)            ──► bytes
        n >  SMALL_STREAM : constriction's AnsCoder, one Categorical per table ──► 32-bit words (LE)
    decode: the same choice by n (both sides know it) ─► symbols ─► range check ─► re-encode == string

    hyperprior (HyperCoder): symbols ─► h_a, h_s in exact integer arithmetic ─► z string
                             (factorized tables) + y string (Gaussian tables by scale index)

No torch: the device runtime imports this, and so does ``bottlenecks._rans`` (the torch
face the bottleneck modules use), so the device and the server run the same code on the
same tables and the bytes are identical by construction. A leaf like
:mod:`splitter.deploy.payload`: anyone may import it.

Tables are CompressAI's (``_quantized_cdf`` / ``_cdf_length`` / ``_offset``): 16-bit CDF
rows whose last bin is an escape; a value outside a row's range is coded as the escape bin
plus its magnitude in 4-bit pieces (a count, then the nibbles, low first).

Short streams (``n <= SMALL_STREAM``): a byte-wise rANS (32-bit state, ``L = 2**23``) that
starts from state 0 and flushes only the significant bytes of its final state, so a stream
costs its information rounded up to a byte, plus about one. Hand-written because no coder
we know of flushes that little: word-based coders (constriction, CompressAI) flush at least
4-8 bytes, which more than doubles a 128-symbol latent coded in 6 bytes. It is pure Python,
hence the size bound.

Long streams (``n > SMALL_STREAM``), format ``ans32``: constriction's ``AnsCoder`` (a
maintained Rust ANS coder; 64-bit state, 32-bit words, wheels for x86 and ARM). Symbols are
coded grouped by table (tables in ascending order, positions in raster order within a
table), each group with one ``Categorical`` built from that table's 16-bit frequencies
(``perfect=False``); then every escape in raster order as 4-bit symbols under
``Uniform(16)`` (its nibble count, 0..6, then its nibbles). The words are written
little-endian. This replaced CompressAI's C++ coder, which only torch could reach.

Decoding is hardened for untrusted strings: lengths are checked against what ``n``
symbols can cost, escapes are bounded, decoded symbols are range-checked and must
re-encode to the very string given, so any string either raises ``ValueError`` or decodes
to in-range symbols whose encoding it is, in time O(n + len(string)).

The hyperprior's coder (:class:`HyperCoder`) runs its small side network here too, in
integers, so that the scale indexes both ends derive agree bit for bit on any machine (its
docstring says how); the torch bottleneck calls it for ``compress`` and ``decompress``.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

__all__ = ["SYMBOL_LIMIT", "SMALL_STREAM", "FORMAT", "Tables", "encode", "decode",
           "max_string_bytes", "HYPER_FRAC", "HyperCoder"]

SYMBOL_LIMIT = 2**15  # |latent symbol| bound: escapes then need <= 5 nibbles
SMALL_STREAM = 4096  # streams of at most this many symbols use the byte-wise coder
FORMAT = "rans8<=4096+ans32"  # recorded in both manifests; a change here is a new wire format

_PREC = 16  # CompressAI's entropy_coder_precision: every table row sums to 2**16
_L = 1 << 23  # lower bound of the normalised state; the state stays below 2**31
_NIB = 1 << (_PREC - 4)  # an escape nibble is a uniform symbol of frequency 2**12
_MAX_NIBBLES = 6  # escape values below 2**24; SYMBOL_LIMIT-bounded values need <= 5


class Tables:
    """One entropy model's coder tables: ``cdf`` (T, L) int, ``lengths`` (T,), ``offsets`` (T,).

    Row ``t`` holds ``lengths[t]`` CDF values from 0 to 2**16; its last bin is the escape.
    Rows are checked once here (monotone, every bin > 0), so a bad table fails on load.
    """

    def __init__(self, cdf, lengths, offsets):
        cdf = np.asarray(cdf, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if cdf.ndim != 2 or cdf.shape[0] == 0 or len(lengths) != cdf.shape[0] or len(offsets) != cdf.shape[0]:
            raise ValueError(f"coder tables do not fit together: cdf {cdf.shape}, lengths "
                             f"{lengths.shape}, offsets {offsets.shape}; call bottleneck.update() "
                             f"after training (or load a state dict that has them)")
        if lengths.min() < 3 or lengths.max() > cdf.shape[1]:
            raise ValueError("coder table lengths out of range; the tables are corrupt")
        self.rows = [row[:n] for row, n in zip(cdf.tolist(), lengths.tolist())]
        for t, row in enumerate(self.rows):
            if row[0] != 0 or row[-1] != 1 << _PREC or any(b <= a for a, b in zip(row, row[1:])):
                raise ValueError(f"coder table {t} is not a 16-bit CDF with every bin > 0; "
                                 f"the tables are corrupt")
        self.cdf = self.rows  # CompressAI's name for them
        self.lengths = lengths
        self.offsets = offsets
        self._models: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def model(self, t: int):
        """constriction ``Categorical`` of table ``t`` (its bins' 16-bit frequencies)."""
        m = self._models.get(t)
        if m is None:
            import constriction

            freqs = np.diff(np.asarray(self.rows[t], dtype=np.float64))
            m = constriction.stream.model.Categorical(freqs, perfect=False)
            self._models[t] = m
        return m


def _check_indexes(indexes, tables: Tables) -> np.ndarray:
    idx = np.asarray(indexes).reshape(-1).astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= len(tables)):
        raise ValueError(f"table indexes must be in 0..{len(tables) - 1}")
    return idx


# -- the byte-wise coder for short streams ---------------------------------------------------
def _bins(symbols: list[int], indexes: list[int], tables: Tables) -> list[tuple[int, int]]:
    """(start, frequency) of every coded step, in decoding order (escapes add nibbles)."""
    steps = []
    rows, lengths, offsets = tables.rows, tables.lengths.tolist(), tables.offsets.tolist()
    for s, i in zip(symbols, indexes):
        cdf, top = rows[i], lengths[i] - 2  # bin ``top`` is the escape
        v = s - offsets[i]
        raw = -1
        if v < 0:
            raw, v = -2 * v - 1, top
        elif v >= top:
            raw, v = 2 * (v - top), top
        steps.append((cdf[v], cdf[v + 1] - cdf[v]))
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
    rows, lengths, offsets = tables.rows, tables.lengths.tolist(), tables.offsets.tolist()

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
        cdf, top = rows[i], lengths[i] - 2
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
        out.append(v + offsets[i])
    if x != 0 or pos != end:
        raise ValueError("corrupted rANS string: the coder state does not end where it began")
    return out


# -- constriction for long streams ------------------------------------------------------------
def _groups(idx: np.ndarray) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
    """Positions sorted by table (stable; ``None`` when ``idx`` is sorted already, as a
    per-channel factorized prior's is), and (table, start, stop) of each group, ascending."""
    order = None
    if idx.size > 1 and not (idx[1:] >= idx[:-1]).all():
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
    starts = np.flatnonzero(idx[1:] != idx[:-1]) + 1
    bounds = [0, *starts.tolist(), len(idx)]
    return order, [(int(idx[a]), a, b) for a, b in zip(bounds, bounds[1:])]


def _nibble_symbols(raw: np.ndarray) -> np.ndarray:
    """Escape magnitudes -> [count, nibbles (low first)] per escape, flattened, int32."""
    out: list[int] = []
    for r in raw.tolist():
        count = (r.bit_length() + 3) // 4
        out.append(count)
        out += [(r >> (4 * j)) & 15 for j in range(count)]
    return np.asarray(out, dtype=np.int32)


def _long_encode(s: np.ndarray, idx: np.ndarray, tables: Tables) -> bytes:
    import constriction

    order, groups = _groups(idx)
    sorted_s = s if order is None else s[order]
    coder = constriction.stream.stack.AnsCoder()
    chunks, escapes = [], False
    for t, a, b in groups:  # per table: offsets and ranges are scalars, no gathers
        v = sorted_s[a:b] - int(tables.offsets[t])
        top = int(tables.lengths[t]) - 2
        outside = bool(v.min() < 0 or v.max() >= top)
        escapes |= outside
        chunks.append((t, np.where((v < 0) | (v >= top), top, v) if outside else v))
    if escapes:  # in raster order, decoded last, so pushed first
        top = tables.lengths[idx] - 2
        v = s - tables.offsets[idx]
        neg, esc = v < 0, (v < 0) | (v >= top)
        raw = np.where(neg, -2 * v - 1, 2 * (v - top))[esc]
        coder.encode_reverse(_nibble_symbols(raw), constriction.stream.model.Uniform(16))
    for t, bins in reversed(chunks):
        coder.encode_reverse(bins.astype(np.int32), tables.model(t))
    return coder.get_compressed().astype("<u4", copy=False).tobytes()


def _long_decode(data: bytes, idx: np.ndarray, tables: Tables) -> np.ndarray:
    """Decode; the caller checks the result re-encodes to ``data``."""
    import constriction

    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        order, groups = _groups(idx)
        sorted_bins = np.empty(len(idx), dtype=np.int64)
        for t, a, b in groups:
            sorted_bins[a:b] = coder.decode(tables.model(t), b - a)
        if order is None:
            bins = sorted_bins
        else:
            bins = np.empty_like(sorted_bins)
            bins[order] = sorted_bins
        top = tables.lengths[idx] - 2
        v = bins.copy()
        esc = np.flatnonzero(bins == top)
        if esc.size:
            uniform = constriction.stream.model.Uniform(16)
            for p in esc.tolist():
                count = int(coder.decode(uniform))
                if count > _MAX_NIBBLES:
                    raise ValueError("corrupted rANS string: escape value too long")
                nibs = coder.decode(uniform, count) if count else np.zeros(0, np.int64)
                raw = sum(int(n) << (4 * j) for j, n in enumerate(nibs.tolist()))
                v[p] = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + int(top[p])
    except ValueError:
        raise
    except Exception as e:  # constriction raises its own types on invalid data
        raise ValueError(f"corrupted rANS string: {type(e).__name__}: {e}") from None
    return v + tables.offsets[idx]


# -- the interface ------------------------------------------------------------------------------
def _encode_checked(s: np.ndarray, idx: np.ndarray, tables: Tables) -> bytes:
    """The one place that picks the coder: by the symbol count, which both sides know."""
    if len(idx) <= SMALL_STREAM:
        return _small_encode(s.tolist(), idx.tolist(), tables)
    return _long_encode(s, idx, tables)


def encode(symbols, indexes, tables: Tables, limit: int = SYMBOL_LIMIT) -> bytes:
    """Integer symbols ``(n,)`` coded with table ``indexes[k]`` each -> one string."""
    s = np.asarray(symbols).reshape(-1).astype(np.int64, copy=False)
    idx = _check_indexes(indexes, tables)
    if s.shape != idx.shape:
        raise ValueError(f"{s.size} symbols but {idx.size} table indexes")
    if s.size and max(-int(s.min()), int(s.max())) > limit:
        raise ValueError(f"symbol magnitude {int(np.abs(s).max())} exceeds the coder limit {limit}; "
                         f"the latent is out of range (check the bottleneck's input scale)")
    return _encode_checked(s, idx, tables)


def max_string_bytes(n: int) -> int:
    """Longest string :func:`encode` writes for ``n`` symbols within the limit.

    A symbol costs at most 16 bits under a 16-bit table (24 under constriction's 24-bit
    requantisation) plus an escape of at most 7 nibbles (count + 6 raw); the byte-wise
    coder's flush adds at most 4 bytes, constriction's at most two words.
    """
    return 5 * n + 4 if n <= SMALL_STREAM else 7 * n + 16


def decode(string: bytes, indexes, tables: Tables, limit: int = SYMBOL_LIMIT) -> np.ndarray:
    """Inverse of :func:`encode`: one string -> int32 symbols ``(n,)``; ``ValueError`` if malformed."""
    if not isinstance(string, (bytes, bytearray)):
        raise ValueError(f"expected bytes, got {type(string).__name__}")
    string = bytes(string)
    idx = _check_indexes(indexes, tables)
    n = len(idx)
    if n <= SMALL_STREAM:
        if len(string) > max_string_bytes(n):
            raise ValueError(f"rANS string of {len(string)} bytes cannot hold {n} symbols "
                             f"(at most {max_string_bytes(n)})")
        values = np.asarray(_small_decode(string, idx.tolist(), tables), dtype=np.int64)
    else:
        if len(string) < 4 or len(string) % 4 or len(string) > max_string_bytes(n):
            raise ValueError(f"ANS string of {len(string)} bytes cannot hold {n} symbols "
                             f"(valid: a multiple of 4 in [4, {max_string_bytes(n)}])")
        values = _long_decode(string, idx, tables)
    if values.size and int(np.abs(values).max()) > limit:
        raise ValueError("corrupted rANS string: decoded symbols out of range")
    if _encode_checked(values, idx, tables) != string:
        raise ValueError("corrupted rANS string: it does not re-encode to itself")
    return values.astype(np.int32)


# -- the hyperprior's side network (h_a, h_s), in exact integer arithmetic ---------------------
HYPER_FRAC = 16  # activations are integers X standing for X / 2**16
_WFRAC = 20  # weights, and the LeakyReLU slope, are integers W standing for W / 2**20
_F64_EXACT = 2**50  # integer dot products below this are exact in float64 in any order (with margin)
_I64_EXACT = 2**62


def _fixed(a, frac: int) -> np.ndarray:
    """``round(a * 2**frac)`` as int64: scaling by a power of two is exact, ``round`` is
    half-to-even, so every IEEE machine gets the same integers from the same float32s."""
    return np.round(np.asarray(a, dtype=np.float64) * float(2**frac)).astype(np.int64)


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    """``floor(a / 2**k + 1/2)`` on int64 (an arithmetic shift): exact."""
    return (a + (1 << (k - 1))) >> k if k else a


def _dot(cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``cols (n, m) @ w.T`` for int64 ``w (o, m)``, exactly.

    When ``max|cols| * max_o sum|w[o]|`` is below 2**50, every partial sum any BLAS can form
    (any order, blocking or FMA) is an integer below 2**53, so float64 holds it exactly and
    the fast path gives the true integer result; above, numpy's int64 matmul (exact, slower).
    """
    if cols.size == 0 or w.size == 0:
        return np.zeros((cols.shape[0], w.shape[0]), dtype=np.int64)
    bound = int(np.abs(cols).max()) * int(np.abs(w).sum(axis=1).max())
    if bound < _F64_EXACT:
        return (cols.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64)
    if bound < _I64_EXACT:
        return cols @ w.T
    raise ValueError("hyperprior: the hyper network's activations overflow exact integer "
                     "arithmetic (weights or latents far out of range); check the bottleneck")


class _Conv:
    """One ``Conv2d`` / ``ConvTranspose2d`` (groups 1, zero padding) on integer maps.

    ``geometry``: (transposed, stride_h, stride_w, pad_h, pad_w, out_pad_h, out_pad_w). A
    transposed conv runs as its equivalent: zeros between the inputs, padding ``k - 1 - p``
    (plus the output padding after), the kernel flipped with its in/out channels swapped.
    """

    def __init__(self, weight, bias, geometry):
        g = [int(v) for v in np.asarray(geometry).reshape(-1)]
        if len(g) != 7 or min(g[1:3]) < 1 or min(g[3:]) < 0:
            raise ValueError(f"bad conv geometry {g}")
        self.transposed, self.stride, self.pad, self.out_pad = bool(g[0]), g[1:3], g[3:5], g[5:7]
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim != 4:
            raise ValueError(f"conv weight of shape {w.shape} is not 4-d")
        if self.transposed:
            w = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
        self.cout, self.cin, self.kh, self.kw = w.shape
        if self.transposed and (self.pad[0] >= self.kh or self.pad[1] >= self.kw):
            raise ValueError("transposed conv padding must be below its kernel size")
        self.w = _fixed(w, _WFRAC).reshape(self.cout, -1)
        b = np.zeros(self.cout) if bias is None else np.asarray(bias).reshape(-1)
        if b.shape != (self.cout,):
            raise ValueError(f"conv bias of shape {b.shape} does not fit {self.cout} outputs")
        self.b = _fixed(b, HYPER_FRAC + _WFRAC)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        _, h, w = shape
        hw = [(n - 1) * s - 2 * p + k + o if self.transposed else (n + 2 * p - k) // s + 1
              for n, s, p, k, o in zip((h, w), self.stride, self.pad, (self.kh, self.kw), self.out_pad)]
        return (self.cout, *hw)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] != self.cin:
            raise ValueError(f"conv takes {self.cin} channels, got {x.shape[0]}")
        (sh, sw), (ph, pw) = self.stride, self.pad
        if self.transposed:
            c, h, w = x.shape
            up = np.zeros((c, (h - 1) * sh + 1, (w - 1) * sw + 1), dtype=np.int64)
            up[:, ::sh, ::sw] = x
            x, (sh, sw) = up, (1, 1)
            qh, qw = self.kh - 1 - ph, self.kw - 1 - pw
            pads = ((0, 0), (qh, qh + self.out_pad[0]), (qw, qw + self.out_pad[1]))
        else:
            pads = ((0, 0), (ph, ph), (pw, pw))
        x = np.pad(x, pads)
        win = np.lib.stride_tricks.sliding_window_view(x, (self.kh, self.kw), axis=(1, 2))
        win = win[:, ::sh, ::sw]  # (C, Ho, Wo, kh, kw)
        ho, wo = win.shape[1:3]
        cols = win.transpose(1, 2, 0, 3, 4).reshape(ho * wo, -1)
        acc = _dot(cols, self.w) + self.b
        return np.ascontiguousarray(_shift(acc, _WFRAC).T).reshape(self.cout, ho, wo)


class _Leaky:
    """``LeakyReLU``: negatives times the slope (an integer over 2**20), rounded."""

    def __init__(self, slope):
        self.slope = int(_fixed(np.asarray(slope).reshape(-1)[0], _WFRAC))

    def out_shape(self, shape):
        return shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size and int(np.abs(x).max()) * abs(self.slope) >= _I64_EXACT:
            raise ValueError("hyperprior: the hyper network's activations overflow exact "
                             "integer arithmetic; check the bottleneck")
        return np.where(x < 0, _shift(x * self.slope, _WFRAC), x)


def _layers(state: dict, prefix: str) -> list:
    """``{prefix}.{i}.weight/bias/geometry`` (a conv) or ``{prefix}.{i}.negative_slope``, i = 0, 1, ..."""
    out = []
    while True:
        key = f"{prefix}.{len(out)}"
        if f"{key}.geometry" in state:
            out.append(_Conv(state[f"{key}.weight"], state.get(f"{key}.bias"), state[f"{key}.geometry"]))
        elif f"{key}.negative_slope" in state:
            out.append(_Leaky(state[f"{key}.negative_slope"]))
        else:
            break
    if not out:
        raise KeyError(f"{prefix}.0.geometry")
    return out


def _run_layers(layers: list, x: np.ndarray) -> np.ndarray:
    for layer in layers:
        x = layer(x)
    return x


class HyperCoder:
    """The mean-scale hyperprior's coder: symbols ``(K, h, w)`` <-> ``[y string, z string]``.

    ::

        s ─► h_a ─► z ─► ẑ = round(z − median) ─► factorized tables (one per channel) ─► z string
                         ẑ + median ─► h_s ─► scales, means
        r = s − round(means) ─► Gaussian tables, index = nearest table scale ─► y string

    **Why exact.** The decoder must derive the same table index and rounded mean for every
    symbol from ``ẑ`` as the encoder did, or the y string decodes to wrong symbols. Float
    h_s on two machines (or in torch and onnxruntime) can differ in the last bit, and a
    scale or mean that lands on a table boundary or a half-integer then flips: about one
    symbol in a million. So ``h_a`` and ``h_s`` run here in integers: weights are
    ``round(w * 2**20)``, activations integers over ``2**HYPER_FRAC`` (2**16), each layer's
    accumulator is requantised with an exact shift, LeakyReLU multiplies by an integer
    slope; the scale index is a comparison of integers with ``floor(boundary * 2**16)``.
    Integer sums are order-free, and the float64 matmul used for speed is exact below
    2**53 (checked per layer, int64 otherwise: :func:`_dot`), so every machine, BLAS and
    thread count gets the same integers. The torch bottleneck (``bottlenecks.hyperprior``)
    calls this very class for ``compress`` and ``decompress``, so the device (numpy only),
    the in-process split and the server write and read identical bytes by construction.
    The integer net is the trained float net up to weight rounding (2**-20) and activation
    rounding (2**-16): it picks the same table scale as float h_s for nearly every symbol;
    where it does not, only the rate moves, never the symbols.

    ``state``: numpy arrays, as ``MeanScaleHyperprior.coder_state()`` writes them (the
    device's ``coder.safetensors``): ``hyper_encoder.*`` / ``hyper_decoder.*`` layers,
    ``entropy_bottleneck.medians`` and both entropy models' tables (``entropy_bottleneck.*``
    for z, ``gaussian_conditional.*`` plus its ``scale_table`` for y). ``z_tables`` /
    ``y_tables``: already-built :class:`Tables` of the same arrays, to skip rebuilding them.
    """

    def __init__(self, state: dict, z_tables: Tables | None = None, y_tables: Tables | None = None):
        self.h_a = _layers(state, "hyper_encoder")
        self.h_s = _layers(state, "hyper_decoder")
        self.medians = _fixed(np.asarray(state["entropy_bottleneck.medians"]).reshape(-1, 1, 1), HYPER_FRAC)
        self.z_tables = z_tables or Tables(*(state[f"entropy_bottleneck.{n}"]
                                             for n in ("_quantized_cdf", "_cdf_length", "_offset")))
        self.y_tables = y_tables or Tables(*(state[f"gaussian_conditional.{n}"]
                                             for n in ("_quantized_cdf", "_cdf_length", "_offset")))
        t = np.asarray(state["gaussian_conditional.scale_table"], dtype=np.float64).reshape(-1)
        if len(t) != len(self.y_tables) or len(t) < 2 or not (t[1:] > t[:-1]).all():
            raise ValueError(f"scale table of {len(t)} scales does not fit {len(self.y_tables)} "
                             f"Gaussian coder tables (or is not ascending)")
        # index = how many boundaries (geometric means of neighbours) lie below the scale
        self.thresholds = np.floor(np.sqrt(t[:-1] * t[1:]) * float(2**HYPER_FRAC)).astype(np.int64)
        if len(self.medians) != len(self.z_tables) or self.h_a[0].cin * 2 != self.h_s[-1].cout:
            raise ValueError("hyperprior coder state does not fit together (z medians, z tables, "
                             "h_a input and h_s output channels)")

    def z_shape(self, latent: tuple[int, ...]) -> tuple[int, int, int]:
        shape = tuple(latent)
        for layer in self.h_a:
            shape = layer.out_shape(shape)
        return shape

    def z_symbols(self, s: np.ndarray) -> np.ndarray:
        """Symbols (K, h, w) -> ẑ (N, h', w') int64, ``round(h_a(s) − median)``, saturated."""
        z = _run_layers(self.h_a, np.asarray(s, dtype=np.int64) << HYPER_FRAC)
        return np.clip(_shift(z - self.medians, HYPER_FRAC), -SYMBOL_LIMIT, SYMBOL_LIMIT)

    def params(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ẑ -> (table index, rounded mean), each (K, h, w) int64, from h_s(ẑ + median)."""
        out = _run_layers(self.h_s, (np.asarray(z_sym, dtype=np.int64) << HYPER_FRAC) + self.medians)
        scales, means = np.split(out, 2, axis=0)
        idx = np.searchsorted(self.thresholds, scales, side="left")
        return idx, np.clip(_shift(means, HYPER_FRAC), -SYMBOL_LIMIT, SYMBOL_LIMIT)

    def _z_indexes(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(np.arange(shape[0]).reshape(-1, 1, 1), shape).reshape(-1)

    def encode(self, s: np.ndarray) -> list[bytes]:
        """One sample's symbols (K, h, w) -> ``[y string, z string]``."""
        s = np.asarray(s, dtype=np.int64)
        if s.ndim != 3 or s.shape[0] != self.h_a[0].cin:
            raise ValueError(f"hyperprior symbols must be ({self.h_a[0].cin}, h, w), got {s.shape}")
        if s.size and int(np.abs(s).max()) > SYMBOL_LIMIT:
            raise ValueError(f"hyperprior: symbols exceed ±{SYMBOL_LIMIT}; use encode()")
        z_sym = self.z_symbols(s)
        idx, means = self.params(z_sym)
        return [encode(s - means, idx, self.y_tables, limit=2 * SYMBOL_LIMIT),
                encode(z_sym, self._z_indexes(z_sym.shape), self.z_tables)]

    def decode(self, y_string: bytes, z_string: bytes, latent: tuple[int, ...]) -> np.ndarray:
        """Inverse of :meth:`encode` for a latent of shape ``latent``; ``ValueError`` if malformed."""
        zs = self.z_shape(latent)
        z_sym = decode(z_string, self._z_indexes(zs), self.z_tables).reshape(zs)
        idx, means = self.params(z_sym)
        r = decode(y_string, idx, self.y_tables, limit=2 * SYMBOL_LIMIT).reshape(tuple(latent))
        y = r + means
        if y.size and int(np.abs(y).max()) > SYMBOL_LIMIT:
            raise ValueError("hyperprior: decoded symbols out of range (corrupted string)")
        return y.astype(np.int32)
