"""A ``hyperprior`` bundle's device half runs without torch and writes the torch bottleneck's bytes.

::

    symbols ─► coder.HyperCoder (numpy, integer h_a/h_s) ─► [y string, z string]   device
    symbols ─► MeanScaleHyperprior.compress (the same HyperCoder)  ─► same bytes     torch split
    bytes   ─► Server (bottleneck.decompress) ─► the very symbols ─► tail.onnx        server

What is checked: the integer side network gives the same integers whichever way its sums
are formed (float64 BLAS, int64 matmul, torch's own float64 convolutions), and stays the
trained float network up to rounding; the numpy coder built from ``coder.safetensors``
writes exactly ``compress``'s bytes on hundreds of random latents (both z strides, tokens,
escapes) and they decode back bit for bit; an exported bundle encodes in a process where
torch cannot be imported, to those bytes, and the server decodes them to the split's own
symbols.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load as load_np
from safetensors.torch import save as save_torch

import bottlenecks
import splitter
from splitter.deploy import coder, payload
from splitter.deploy.device import _coder_for
from splitter.errors import BundleError
from targets.tables import device_state
from tests._torchfree import encode_without_torch

REPO = Path(__file__).resolve().parents[1]

# (in_shape, layout, options): z at stride 2 (ConvTranspose up), at stride 1, and tokens
CASES = {
    "stride2": ((16, 16, 16), "nchw", {"channels": 8}),
    "stride1": ((12, 6, 6), "nchw", {"channels": 6, "hyper_channels": 5}),
    "tokens": ((10, 32), "nlc", {"channels": 8}),
}


def _bottleneck(case: str, seed: int = 0):
    in_shape, layout, options = CASES[case]
    torch.manual_seed(seed)
    return bottlenecks.create("hyperprior", in_shape=in_shape, layout=layout, **options).eval()


def _device_state(bn) -> dict[str, np.ndarray]:
    """``coder.safetensors`` as the device reads it: saved from torch, loaded by numpy."""
    return load_np(save_torch(device_state(bn)))


def _latents(bn, n: int, seed: int) -> torch.Tensor:
    """Random int32 latents of every magnitude: near zero, wide, and a few escapes."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3, 2.0, 20.0, 300.0])[torch.randint(0, 4, (n, 1, 1, 1), generator=g)]
    s = torch.round(torch.randn(n, *bn.latent, generator=g) * scale)
    s[0].view(-1)[0] = 30_000  # an escape far out in the tails
    return s.clamp(-coder.SYMBOL_LIMIT, coder.SYMBOL_LIMIT).to(torch.int32)


# -- the integer side network -----------------------------------------------------------------
def _torch_reference(hc: coder.HyperCoder, layers, x: np.ndarray) -> np.ndarray:
    """The integer net again, with torch's own float64 conv kernels (another summation order)."""
    t, one, half = torch.from_numpy(x).to(torch.float64)[None], 2**coder._WFRAC, 2**(coder._WFRAC - 1)
    for layer in layers:
        if isinstance(layer, coder._Leaky):
            t = torch.where(t < 0, torch.floor((t * layer.slope + half) / one), t)
            continue
        w = torch.from_numpy(layer.w).to(torch.float64).view(layer.cout, layer.cin, layer.kh, layer.kw)
        if layer.transposed:  # back to ConvTranspose2d's (in, out, kh, kw), unflipped
            acc = F.conv_transpose2d(t, w.flip(2, 3).transpose(0, 1), stride=layer.stride,
                                     padding=layer.pad, output_padding=layer.out_pad)
        else:
            acc = F.conv2d(t, w, stride=layer.stride, padding=layer.pad)
        acc = acc + torch.from_numpy(layer.b).to(torch.float64).view(1, -1, 1, 1)
        t = torch.floor((acc + half) / one)  # exact: integers below 2**53
    return t[0].to(torch.int64).numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_integer_hyper_net_gives_the_same_integers_whatever_the_summation_order(case, monkeypatch):
    bn = _bottleneck(case)
    hc = coder.HyperCoder(_device_state(bn))
    for s in _latents(bn, 12, seed=1).numpy().astype(np.int64):
        x = s << coder.HYPER_FRAC
        z = coder._run_layers(hc.h_a, x)
        assert np.array_equal(z, _torch_reference(hc, hc.h_a, x))
        z_hat = (hc.z_symbols(s) << coder.HYPER_FRAC) + hc.medians
        out = coder._run_layers(hc.h_s, z_hat)
        assert np.array_equal(out, _torch_reference(hc, hc.h_s, z_hat))
        with monkeypatch.context() as m:  # numpy's int64 matmul instead of float64 BLAS
            m.setattr(coder, "_F64_EXACT", 0)
            assert np.array_equal(coder._run_layers(hc.h_a, x), z)
            assert np.array_equal(coder._run_layers(hc.h_s, z_hat), out)


@pytest.mark.parametrize("case", list(CASES))
def test_integer_hyper_net_tracks_the_trained_float_net(case):
    """Same z symbols, table scales and rounded means as float h_a/h_s for nearly every symbol."""
    bn = _bottleneck(case)
    hc = bn._hyper_coder()
    gc, zc = bn.gaussian_conditional, bn.entropy_bottleneck
    t = gc.scale_table
    same_z = same_idx = same_mean = total_z = total = 0
    with torch.no_grad():
        for s in _latents(bn, 16, seed=2):
            z = hc.z_symbols(s.numpy())
            same_z += int((torch.from_numpy(z) == zc.symbols(bn.hyper_encoder(s[None].float()))[0]).sum())
            total_z += z.size
            idx, means = hc.params(z)
            scales, fmeans = bn._hyper(zc.values(torch.from_numpy(z)[None]))
            fidx = torch.bucketize(gc.lower_bound_scale(scales), (t[:-1] * t[1:]).sqrt())[0]
            same_idx += int((torch.from_numpy(idx) == fidx).sum())
            same_mean += int((torch.from_numpy(means) == torch.round(fmeans[0])).sum())
            total += idx.size
    assert same_z / total_z >= 0.999 and same_idx / total >= 0.999 and same_mean / total >= 0.999


# -- device coder == torch compress, on many latents --------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_numpy_coder_writes_compress_s_bytes_and_they_decode_exactly(case):
    bn = _bottleneck(case, seed=3)
    hc = coder.HyperCoder(_device_state(bn))  # tables rebuilt from the file, as on the device
    s = _latents(bn, 150, seed=4)
    strings = bn.compress(s)
    assert [hc.encode(row) for row in s.numpy()] == strings
    assert torch.equal(bn.decompress(strings, tuple(bn.spatial(s))), s)
    assert all(np.array_equal(hc.decode(y, z, bn.latent), row)
               for (y, z), row in zip(strings[:10], s.numpy()))


def test_the_cached_coder_follows_the_weights():
    """compress/decompress reuse one integer coder until a weight or table changes: after
    loading other weights (and after an in-place write) the bytes are those of a bottleneck
    built with those weights from scratch."""
    bn, other = _bottleneck("stride2", seed=3), _bottleneck("stride2", seed=5)
    s = _latents(bn, 4, seed=6)
    first, expected = bn.compress(s), other.compress(s)  # (compress builds the z tables)
    assert bn.compress(s) == first and bn._hyper_coder() is bn._hyper_coder()
    bn.load_state_dict(other.state_dict())
    assert bn.compress(s) == expected != first
    with torch.no_grad():
        bn.hyper_decoder[0].weight.mul_(1.5)
        other.hyper_decoder[0].weight.mul_(1.5)
    fresh = _bottleneck("stride2", seed=5)
    fresh.compress(s)
    fresh.load_state_dict(other.state_dict())
    assert bn.compress(s) == fresh.compress(s)
    assert torch.equal(bn.decompress(bn.compress(s), tuple(bn.spatial(s))), s)


def test_a_corrupted_string_never_decodes_silently_to_other_symbols():
    bn = _bottleneck("stride2", seed=5)
    s = _latents(bn, 20, seed=6)
    for y, z in bn.compress(s):
        for bad in ([y[:-1], z], [y, z[:-1]], [bytes([y[0] ^ 0x40]) + y[1:], z]):
            try:
                got = bn.decompress([bad], tuple(bn.spatial(s)))
            except ValueError:
                continue
            assert bn.compress(got) == [bad]  # decodes only to symbols whose encoding it is


# -- an exported bundle: torch-free device, server decodes the split's symbols ------------------
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    s = splitter.split("test_resnet", at="layer1", bottleneck="hyperprior", channels=8,
                       input_shape=SHAPE)
    d = tmp_path_factory.mktemp("device_hyperprior") / "bundle"
    b = splitter.export(s, d, exporter="torchscript", threads=1)
    return s, b, d


def test_export_parity_covers_the_hyperprior_coder(exported):
    _, b, _ = exported
    assert b.manifest.coder.needs_torch is False and b.device_manifest.coder.needs_torch is False
    p = b.manifest.parity
    assert p.passed and p.coder_matches_split and p.coder_lossless and p.symbols_identical == 1.0


def test_hyperprior_device_encodes_without_torch_to_the_torch_bytes_and_the_server_decodes(
        exported, tmp_path):
    s, b, d = exported
    x = torch.randn(12, *SHAPE, generator=torch.Generator().manual_seed(7)).numpy()
    x[3] *= 25  # a large-magnitude input: wide latents, escapes
    got = encode_without_torch(d / "device", x, tmp_path)
    spatial = tuple(b.manifest.symbols.spatial)
    server = b.server(threads=1)
    with torch.no_grad():
        sym = s.head(torch.from_numpy(x))  # the split's own (torch) symbols
        assert torch.equal(torch.from_numpy(b.device(threads=1).symbols(x)), sym)
        for i, data in enumerate(got[:-1]):
            assert data == payload.pack("hyperprior", spatial, s.bottleneck.compress(sym[i:i + 1]),
                                        expected=spatial)
            assert data == s.encode(torch.from_numpy(x[i:i + 1]))  # the in-process split's bytes
        assert got[-1] == s.encode(torch.from_numpy(x))
        assert torch.equal(server.decode_symbols(got[-1]), sym)
        out = server.decode(got[-1])
        # the ONNX tail on exactly the split's symbols; vs torch's tail within float noise
        assert np.array_equal(out.numpy(), server.run_tail(sym.numpy())[0])
        ref = s.decode(s.encode(torch.from_numpy(x)))
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert float((out - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_an_old_hyperprior_coder_file_is_refused_with_a_typed_error(exported):
    bn = exported[0].bottleneck
    old = {k: v.contiguous() for k, v in bn.state_dict().items()
           if k.startswith(("hyper_encoder.", "hyper_decoder.", "entropy_bottleneck.",
                            "gaussian_conditional."))}  # what the torch coder's file held
    with pytest.raises(BundleError, match="exported again"):
        _coder_for(exported[1].device_manifest, save_torch(old), "device/")
