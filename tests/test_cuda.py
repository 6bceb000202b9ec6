"""fit on a CUDA GPU, and what it leaves behind: payloads, CPU-vs-GPU outputs, bundles.

::

    digits (3, 16, 16) ─► fit(device="cuda"): features + kd, teacher cache, resume
        ─► split back on the CPU, coder tables built on the CPU (as on a CPU-only fit)
            ─► encode ─► payload bytes ─► decode      == split(x), byte-exact, every kind
            ─► the same weights on cuda vs cpu          pre, encoder, tail within fp32 tolerance
            ─► splitter.export ─► bundle                head.onnx symbols == split.head, parity

Runs only where ``torch.cuda.is_available()`` (the whole module skips elsewhere, so the
default CPU suite and CI skip it); ``bench/gpu_check.sh`` runs it on a GPU machine. The
CPU side of the same contract is ``tests/test_fit_steps.py::
test_cuda_without_a_gpu_is_a_typed_error``. Small random-weight models, no wall-clock
asserts; GPU-vs-CPU comparisons run with TF32 off, so fp32 means fp32 on both.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Subset

import splitter
from splitter.train import signals
from splitter.train.checkpoint import load_split
from splitter.train.data import digits
from splitter.train.fit import fit
from tests.test_fit_steps import _Images  # bare image tensors, no labels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (bench/gpu_check.sh runs it on one)")

SHAPE = (3, 16, 16)
# Every stage kind there is (splitter.train.stages: features, kd). match_output makes the
# features stage use the teacher's logits too; beta_warmup ramps the rate term.
STAGES = [{"kind": "features", "steps": 3, "beta": 0.01, "match_output": 1.0, "beta_warmup": 0.5},
          {"kind": "kd", "steps": 2, "lr": 1e-3}]
CASES = [("entropy", "insert"), ("hyperprior", "insert"), ("entropy", "replace")]
IDS = [f"{k}-{m}" for k, m in CASES]
# crbq too: no entropy model, so its rate is 0 and its aux loss a CPU zero beside CUDA losses
FIT_CASES, FIT_IDS = CASES + [("crbq", "insert")], IDS + ["crbq-insert"]


@pytest.fixture(scope="module")
def train():
    return Subset(digits("train", SHAPE), range(48))


@pytest.fixture(scope="module")
def test_x():
    data = digits("test", SHAPE)
    return torch.stack([data[i][0] for i in range(16)])


@pytest.fixture
def fp32():
    """cuDNN without TF32 (on by default for convolutions on Ampere and later) and with
    deterministic kernels, for comparisons against the CPU and between GPU runs."""
    cudnn = torch.backends.cudnn
    old = cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark
    # the long-standing flags only: torch >= 2.9 refuses to mix them with fp32_precision
    cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = False, True, False
    try:
        yield
    finally:
        cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = old


def make_split(teacher, kind="entropy", mode="insert", seed=1, shape=SHAPE, channels=4):
    torch.manual_seed(seed)
    return splitter.split(teacher, at="layer1", bottleneck=kind, channels=channels, mode=mode,
                          input_shape=shape)


def _devices(module: torch.nn.Module) -> set[str]:
    return {t.device.type for t in (*module.parameters(), *module.buffers())}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def fitted(teacher, train, tmp_path_factory):
    """``fitted(kind, mode)``: a split fitted with :data:`STAGES` on the GPU (once per case)
    and its report and output dir."""
    done: dict[tuple[str, str], tuple] = {}

    def get(kind: str, mode: str):
        if (kind, mode) not in done:
            s = make_split(teacher, kind, mode)
            out = tmp_path_factory.mktemp(f"fit-{kind}-{mode}")
            rep = fit(s, train, teacher=teacher, stages=STAGES, batch_size=16, val_data=train,
                      output_dir=str(out), device="cuda", progress=False)
            done[(kind, mode)] = (s, rep, out)
        return done[(kind, mode)]

    return get


# -- fit on the GPU --------------------------------------------------------------------------
def test_device_auto_and_cuda_pick_the_gpu():
    from splitter.train.distributed import setup

    assert setup("auto").device == torch.device("cuda", 0)
    assert setup("cuda").device == torch.device("cuda", 0)  # "cuda" gets an index
    assert setup(None).device.type == "cuda"


@pytest.mark.parametrize("kind,mode", FIT_CASES, ids=FIT_IDS)
def test_fit_on_cuda_runs_every_stage_and_leaves_the_split_on_the_cpu(teacher, train, kind, mode,
                                                                     tmp_path):
    s = make_split(teacher, kind, mode)
    before = _state(s)
    teacher_before = _state(teacher)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rep = fit(s, train, teacher=teacher, stages=STAGES, batch_size=16, val_data=train,
              output_dir=str(tmp_path), device="cuda", progress=False)
    assert torch.cuda.max_memory_allocated() > 0  # the steps ran on the GPU

    assert rep.global_step == 5 and rep.stopped_at is None and rep.labelled
    assert [r.kind for r in rep.stages] == ["features", "kd"]
    assert [r.steps for r in rep.stages] == [3, 2]
    for r in rep.stages:
        assert math.isfinite(r.loss) and math.isfinite(r.bits), r
        assert r.bits > 0 if kind != "crbq" else r.bits == 0, r
        assert r.accuracy is not None and 0.0 <= r.accuracy <= 1.0
    feats = rep.stages[0]
    assert math.isfinite(feats.nmse) and feats.variance is not None and feats.variance > 0
    assert all(math.isfinite(h["loss"]) for h in rep.history)

    # fit's contract: the split comes back on the CPU, in eval mode, trained
    assert _devices(s) == {"cpu"} and not s.training
    assert not any(m.training for m in s.modules())
    after = s.state_dict()
    moved = [k for k, v in before.items() if v.is_floating_point() and v.shape == after[k].shape
             and not torch.equal(v, after[k])]
    assert any(k.startswith("bottleneck.encoder") for k in moved)
    assert any(k.startswith("bottleneck.decoder") for k in moved)
    # the caller's teacher was copied to the GPU, never moved or changed
    assert _devices(teacher) == {"cpu"}
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())

    # what it wrote (from CUDA tensors) loads into a fresh CPU split and codes the same bytes
    fresh = make_split(teacher, kind, mode, seed=9)
    load_split(fresh, str(tmp_path / "split.safetensors"))
    data = digits("test", SHAPE)
    x = torch.stack([data[i][0] for i in range(4)])
    assert fresh.encode(x) == s.encode(x)
    report = json.loads((tmp_path / "fit.json").read_text())
    assert report["global_step"] == 5 and len(report["stages"]) == 2


def test_kd_on_cuda_keeps_encoder_and_entropy_model_bit_identical(teacher, train):
    s = make_split(teacher)
    fit(s, train, teacher=teacher, stages=STAGES[:1], batch_size=16, device="cuda", progress=False)
    bn = s.bottleneck
    frozen = {n: _state(c) for n, c in bn.named_children() if n != "decoder"}
    dec, post, pre = _state(bn.decoder), _state(s.post), _state(s.pre)
    fit(s, train, teacher=teacher, stages=STAGES[1:], batch_size=16, device="cuda", progress=False)
    for name, was in frozen.items():
        now = getattr(bn, name).state_dict()
        assert all(torch.equal(v, now[k]) for k, v in was.items()), f"{name} changed in kd"
    assert all(torch.equal(v, s.pre.state_dict()[k]) for k, v in pre.items())
    assert any(not torch.equal(v, bn.decoder.state_dict()[k]) for k, v in dec.items())
    assert any(not torch.equal(v, s.post.state_dict()[k]) for k, v in post.items())


def test_unlabelled_data_fits_on_cuda(teacher, train):
    s = make_split(teacher)
    rep = fit(s, _Images(train), teacher=teacher, stages=STAGES, batch_size=16, device="cuda",
              progress=False)
    assert rep.labelled is False and rep.global_step == 5
    assert all(math.isfinite(r.loss) for r in rep.stages)


# -- what a GPU fit leaves: payloads -----------------------------------------------------------
@pytest.mark.parametrize("kind,mode", FIT_CASES, ids=FIT_IDS)
def test_payload_round_trip_after_cuda_fit_is_byte_exact(fitted, test_x, kind, mode):
    s, _, _ = fitted(kind, mode)
    data = s.encode(test_x)
    assert isinstance(data, bytes) and data == s.encode(test_x)  # deterministic bytes
    with torch.no_grad():
        symbols = s.head(test_x)
        ref = s(test_x)
    assert torch.equal(s.decode_symbols(data), symbols)  # the entropy coder is lossless
    out = s.decode(data)
    assert torch.equal(out, ref)  # decode(encode(x)) == split(x), bit for bit
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    one = s.encode(test_x[:1])  # one sample: its own symbols from the batch, its own output
    assert torch.equal(s.decode_symbols(one), symbols[:1])
    with torch.no_grad():
        assert torch.equal(s.decode(one), s(test_x[:1]))  # (batch 1 runs other float kernels)


def test_long_stream_payload_after_cuda_fit(teacher):
    """A latent of more than SMALL_STREAM symbols a sample takes constriction's ANS path."""
    from splitter.deploy.coder import SMALL_STREAM

    shape = (3, 96, 96)
    train = Subset(digits("train", shape), range(32))
    s = make_split(teacher, shape=shape, channels=32)
    assert math.prod(s.bottleneck.latent) > SMALL_STREAM
    rep = fit(s, train, teacher=teacher, stages=[dict(STAGES[0], steps=2)], batch_size=16,
              device="cuda", progress=False)
    assert math.isfinite(rep.stages[0].loss)
    data = digits("test", shape)
    x = torch.stack([data[i][0] for i in range(3)])
    payload = s.encode(x)
    with torch.no_grad():
        assert torch.equal(s.decode_symbols(payload), s.head(x))
        assert torch.equal(s.decode(payload), s(x))


# -- the same weights on the GPU and the CPU ---------------------------------------------------
def _close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-4) -> None:
    """fp32 kernels differ in the last bits between devices: |got - want| within rtol of the
    tensor's own scale."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert got.shape == want.shape, what
    scale = max(float(want.abs().max()), 1.0)
    err = float((got - want).abs().max())
    assert err <= rtol * scale, f"{what}: max |cuda - cpu| = {err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("kind,mode", CASES, ids=IDS)
def test_same_weights_give_the_same_outputs_on_cpu_and_cuda(fitted, test_x, fp32, kind, mode):
    s, _, _ = fitted(kind, mode)
    g = copy.deepcopy(s).to("cuda").eval()
    bn, gbn = s.bottleneck, g.bottleneck
    xg = test_x.cuda()
    with torch.no_grad():
        feat, gfeat = s.pre(test_x), g.pre(xg)
        _close(gfeat, feat, "pre(x)")
        y, gy = bn.encoder(bn._in(feat)), gbn.encoder(gbn._in(feat.cuda()))
        _close(gy, y, "bottleneck encoder")
        sym, gsym = s.head(test_x), g.head(xg).cpu()
        assert gsym.dtype == sym.dtype == torch.int32
        # integer symbols: a value within an ulp of a rounding boundary may land one apart
        assert (gsym == sym).float().mean() >= 0.99
        assert int((gsym - sym).abs().max()) <= 1
        # from the same symbols the server half computes the same output on either device
        _close(g.tail(sym.cuda()), s.tail(sym), "tail(symbols)")
        _close(gbn.decode(sym.cuda()), bn.decode(sym), "bottleneck decode")
        # the eval forward of training (rounded latents, the coder's likelihoods)
        out, gout = bn(feat), gbn(feat.cuda())
        assert out.likelihoods.keys() == gout.likelihoods.keys()
        for k in out.likelihoods:
            assert gout.likelihoods[k].device.type == "cuda"
            assert torch.isfinite(gout.likelihoods[k]).all()


def test_coder_tables_built_on_cuda_equal_the_cpu_ones(fitted):
    """Coder tables of a split fitted on the GPU, rebuilt on the CPU from the same weights,
    are the same integers (else a split whose tables are rebuilt elsewhere would code other
    bytes). fit builds them on the CPU since this test, run on an H200 with the tables built
    on the GPU, found gaussian_conditional._quantized_cdf differing."""
    for kind, mode in CASES:
        s, _, _ = fitted(kind, mode)
        cpu = copy.deepcopy(s)
        cpu.bottleneck.update()
        want, got = s.bottleneck.table_tensors(), cpu.bottleneck.table_tensors()
        differ = [k for k in want if not torch.equal(want[k].cpu(), got[k].cpu())]
        assert not differ, f"{kind}-{mode}: tables built on cuda differ from cpu in {differ}"


# -- the teacher cache and resume on the GPU ---------------------------------------------------
def test_teacher_cache_on_cuda_serves_what_the_teacher_computes(teacher, train, fp32, monkeypatch):
    import splitter.train.fit as fit_mod

    caches: list[signals.TeacherCache] = []
    hits = {"n": 0}

    class Recording(signals.TeacherCache):
        def __init__(self, enabled):
            super().__init__(enabled)
            caches.append(self)

        def get(self, key, idx, fn, x):
            table = self.store.get(key, {})
            if self.enabled and all(int(i) in table for i in idx):
                hits["n"] += 1
            return super().get(key, idx, fn, x)

    monkeypatch.setattr(fit_mod, "TeacherCache", Recording)
    stages = [{"kind": "features", "epochs": 2, "beta": 0.01, "match_output": 1.0},
              {"kind": "kd", "epochs": 2, "lr": 1e-3}]
    s = make_split(teacher)
    rep = fit(s, train, teacher=teacher, stages=stages, batch_size=16, device="cuda",
              cache_teacher=True, progress=False, seed=2)
    assert rep.global_step == 12  # 48 samples / 16, 2 epochs, 2 stages
    (cache,) = caches
    assert set(cache.store) == {"feat", "logits"}
    for key, table in cache.store.items():
        assert sorted(table) == list(range(48)), key
        assert {t.device.type for t in table.values()} == {"cuda"}
    assert hits["n"] > 0  # the second epochs (and kd's feat) came from the cache

    # what the cache holds is what the teacher computes for that sample
    idx = torch.arange(8)
    x = torch.stack([train[i][0] for i in range(8)]).cuda()
    t = copy.deepcopy(teacher).cuda().eval()
    with torch.no_grad():
        _close(cache.get("logits", idx, t, x), t(x), "cached teacher logits", rtol=1e-5)

    # and the run matches one without the cache (same seed, same data order)
    s2 = make_split(teacher)
    rep2 = fit(s2, train, teacher=teacher, stages=stages, batch_size=16, device="cuda",
               cache_teacher=False, progress=False, seed=2)
    for a, b in zip(rep.history, rep2.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-5), (a, b)


def test_resume_on_cuda_matches_the_uninterrupted_run(teacher, train, fp32, tmp_path):
    """Optimizer state saved from the GPU loads back onto it (checkpoint.load_optimizers)."""
    stages = [dict(STAGES[0], steps=4), dict(STAGES[1], steps=3)]
    ref = make_split(teacher)
    fit(ref, train, teacher=teacher, stages=stages, batch_size=16, seed=3, device="cuda",
        output_dir=str(tmp_path / "a"), progress=False)
    out = str(tmp_path / "b")
    r1 = fit(make_split(teacher), train, teacher=teacher, stages=stages, batch_size=16, seed=3,
             device="cuda", output_dir=out, max_steps=3, progress=False)
    assert r1.stopped_at == 3
    r2 = fit(make_split(teacher, seed=7), train, teacher=teacher, stages=stages, batch_size=16,
             seed=3, device="cuda", output_dir=out, resume=True, progress=False)
    assert r2.resumed_from == 3 and r2.global_step == 7
    a = load_file(str(tmp_path / "a" / "split.safetensors"))
    b = load_file(str(tmp_path / "b" / "split.safetensors"))
    assert a.keys() == b.keys()
    # deterministic cuDNN: the same kernels on the same inputs; a tolerance for the rest
    for k in a:
        if a[k].is_floating_point():
            _close(b[k], a[k], k, rtol=1e-3)
        else:
            assert torch.equal(a[k], b[k]), k


# -- export of a GPU-fitted split --------------------------------------------------------------
@pytest.mark.parametrize("kind,mode,exporter", [("entropy", "insert", "auto"),
                                                ("hyperprior", "insert", "torchscript"),
                                                ("entropy", "replace", "torchscript")],
                         ids=["entropy-insert-auto", "hyperprior-insert-torchscript",
                              "entropy-replace-torchscript"])
def test_export_of_a_cuda_fitted_split_matches_the_split(fitted, test_x, tmp_path, kind, mode,
                                                         exporter):
    s, _, _ = fitted(kind, mode)
    b = splitter.export(s, tmp_path / "b", exporter=exporter, threads=1)
    p = b.manifest.parity
    assert p.passed and p.coder_lossless and p.coder_matches_split, p
    assert p.symbols_identical >= 0.9999 and p.top1_agreement == 1.0
    assert b.manifest.bottleneck.kind == kind and b.manifest.mode == mode

    device, server = b.device(threads=1), b.server(threads=1)
    with torch.no_grad():
        ref_sym, ref = s.head(test_x), s(test_x)
    sym = torch.from_numpy(np.asarray(device.symbols(test_x.numpy())))
    assert sym.shape == ref_sym.shape and sym.dtype == ref_sym.dtype
    assert (sym == ref_sym).float().mean() >= 0.9999  # the ONNX head rounds as torch does
    data = device.encode(test_x.numpy())
    if torch.equal(sym, ref_sym):  # same symbols: the torch-free coder writes the same bytes
        assert data == s.encode(test_x)
    got = server.decode(data)
    assert torch.equal(torch.as_tensor(got).argmax(-1), ref.argmax(-1))
    # bytes from the in-process split decode on the bundle's server too
    assert torch.equal(torch.as_tensor(server.decode(s.encode(test_x))).argmax(-1), ref.argmax(-1))
