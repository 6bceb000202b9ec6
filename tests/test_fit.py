"""fit: stage 2 freezes what it must, resume is exact, checkpoints round-trip; digits is
real and its split fixed; evaluation sizes are real payloads and files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Subset

import splitter
from splitter.explore.evaluate import codec_baseline, encode_image, evaluate_payloads
from splitter.train.checkpoint import load_split, save_split, split_state
from splitter.train.data import digits, digits_split
from splitter.train.fit import bottleneck_parts, fit

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def train():
    return Subset(digits("train", SHAPE), range(96))


def make_split(teacher, seed=1):
    torch.manual_seed(seed)
    return splitter.split(teacher, at="layer1", bottleneck="entropy", channels=4, input_shape=SHAPE)


FEATURES = {"kind": "features", "steps": 4, "lr": 3e-3, "beta": 0.01, "match_output": 1.0}
KD = {"kind": "kd", "steps": 4, "lr": 1e-3}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_leaves_encoder_and_entropy_model_bit_identical(teacher, train):
    s = make_split(teacher)
    fit(s, train, teacher=teacher, stages=[FEATURES], batch_size=32, progress=False)
    bn = s.bottleneck
    frozen = {name: _snapshot(child) for name, child in bn.named_children() if name != "decoder"}
    assert set(frozen) >= {"encoder", "entropy_bottleneck"}
    pre, dec, post = _snapshot(s.pre), _snapshot(bn.decoder), _snapshot(s.post)
    fit(s, train, teacher=teacher, stages=[KD], batch_size=32, progress=False)
    for name, before in frozen.items():
        after = dict(getattr(bn, name).state_dict())
        assert before.keys() == after.keys()
        for k in before:
            assert torch.equal(before[k], after[k]), f"{name}.{k} changed in stage 2"
    assert all(torch.equal(v, s.pre.state_dict()[k]) for k, v in pre.items())
    # ...while what stage 2 trains did change (so the check above can fail).
    assert any(not torch.equal(v, bn.decoder.state_dict()[k]) for k, v in dec.items())
    assert any(not torch.equal(v, s.post.state_dict()[k]) for k, v in post.items())


def test_parts_split_the_bottleneck_by_role(teacher):
    parts = bottleneck_parts(make_split(teacher).bottleneck)
    assert [n for n, _ in parts["aux"]] == ["entropy_bottleneck.quantiles"]
    assert parts["encoder"] and parts["decoder"]
    assert all(n.startswith("entropy_bottleneck.") for n, _ in parts["entropy"])


def test_resume_continues_from_saved_step_and_matches_uninterrupted(teacher, train, tmp_path):
    stages = [FEATURES, KD]
    ref = make_split(teacher)
    rep = fit(ref, train, teacher=teacher, stages=stages, batch_size=32, seed=3,
              output_dir=str(tmp_path / "a"), progress=False)
    assert rep.global_step == 8 and rep.stopped_at is None

    out = str(tmp_path / "b")
    r1 = fit(make_split(teacher), train, teacher=teacher, stages=stages, batch_size=32, seed=3,
             output_dir=out, max_steps=3, progress=False)
    assert r1.stopped_at == 3
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (state["stage"], state["stage_step"], state["global_step"]) == (0, 3, 3)
    # A fresh split of another seed: everything must come from the checkpoint.
    r2 = fit(make_split(teacher, seed=7), train, teacher=teacher, stages=stages, batch_size=32,
             seed=3, output_dir=out, resume=True, max_steps=6, progress=False)
    assert (r2.resumed_from, r2.stopped_at) == (3, 6)  # stopped inside stage 2 this time
    final = make_split(teacher, seed=8)
    r3 = fit(final, train, teacher=teacher, stages=stages, batch_size=32, seed=3,
             output_dir=out, resume=True, progress=False)
    assert r3.resumed_from == 6 and r3.global_step == 8

    a = load_file(str(tmp_path / "a" / "split.safetensors"))
    b = load_file(str(tmp_path / "b" / "split.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ[:5]}"
    # and training did move the weights (the comparison is not between two untouched splits)
    init = split_state(make_split(teacher))
    assert not torch.equal(init["bottleneck.encoder.0.weight"], a["bottleneck.encoder.0.weight"])


def test_saved_split_loads_into_a_fresh_split_with_identical_payloads(teacher, train, tmp_path):
    s = make_split(teacher)
    fit(s, train, teacher=teacher, stages=[dict(FEATURES, steps=2)], batch_size=32, progress=False)
    save_split(s, str(tmp_path / "w.safetensors"))
    t = make_split(teacher, seed=5)
    load_split(t, str(tmp_path / "w.safetensors"))
    x = torch.stack([train[i][0] for i in range(4)])
    assert s.encode(x) == t.encode(x)
    assert torch.equal(s.decode(s.encode(x)), t.decode(s.encode(x)))


def test_evaluate_counts_real_payload_bytes(teacher, train):
    s = make_split(teacher)
    fit(s, train, teacher=teacher, stages=[dict(FEATURES, steps=2)], batch_size=32, progress=False)
    data = Subset(digits("test", SHAPE), range(6))
    row = evaluate_payloads(s, data)
    sizes = [len(s.encode(data[i][0].unsqueeze(0))) for i in range(6)]
    assert row.bytes_mean == pytest.approx(np.mean(sizes)) and row.bytes_min == min(sizes)
    with torch.no_grad():
        want = sum(int(s.decode(s.encode(data[i][0].unsqueeze(0))).argmax(-1)[0]) == data[i][1]
                   for i in range(6))
    assert row.accuracy == want / 6


def test_codec_baseline_measures_whole_files(teacher):
    data = digits("test", SHAPE)
    img = data.raw(0)
    jpg, webp = encode_image(img, "jpeg", 50), encode_image(img, "webp", 50)
    assert jpg[:2] == b"\xff\xd8" and jpg[-2:] == b"\xff\xd9"  # JPEG SOI .. EOI
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    assert int.from_bytes(webp[4:8], "little") == len(webp) - 8  # RIFF size field: whole file
    sub = Subset(data, range(5))
    sub.raw, sub.transform, sub.targets = (lambda i: data.raw(i)), data.transform, data.targets[:5]
    rows = codec_baseline(teacher, sub, codecs=("jpeg",), qualities=(50,))
    assert rows[0].bytes_mean == pytest.approx(np.mean([len(encode_image(data.raw(i), "jpeg", 50))
                                                        for i in range(5)]))


def test_digits_is_real_and_split_is_fixed():
    from sklearn.datasets import load_digits

    tr, te = digits("train", SHAPE), digits("test", SHAPE)
    assert (len(tr), len(te)) == (1437, 360)
    a, b = digits_split()
    assert len(set(a) | set(b)) == 1797 and not set(a) & set(b)
    assert list(b[:10]) == [21, 24, 28, 34, 35, 37, 39, 42, 45, 51]  # fixed by seed 0
    assert np.array_equal(digits_split()[1], b)
    assert not np.array_equal(digits_split(seed=1)[1], b)
    # stratified: 36 +- 1 test images of every class
    counts = np.bincount(te.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # the first handwritten zero of scikit-learn's bundled set, row 0: 0 0 5 13 9 1 0 0
    first = digits("all", SHAPE)
    assert first.raw(0).size == (8, 8) and first.raw(0).mode == "L"
    row0 = np.asarray(first.raw(0))[0]
    assert list(row0) == [round(v * 255 / 16) for v in (0, 0, 5, 13, 9, 1, 0, 0)]
    assert first.targets[0] == 0
    ref = load_digits()
    assert np.array_equal(np.asarray(tr.raw(3)), np.round(ref.images[a[3]] * 255 / 16))
    assert tr.targets[3] == ref.target[a[3]]
    x, y = tr[0]
    assert x.shape == SHAPE and x.min() >= -1 and x.max() <= 1
    buf = io.BytesIO()
    tr.raw(0).save(buf, format="PNG")  # a real image Pillow can write


def test_image_folder_uses_the_models_preprocessing(tmp_path, teacher):
    from PIL import Image

    from splitter.train.data import image_folder

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{k}.png")
    ds = image_folder(str(tmp_path), teacher, input_size=SHAPE)
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 1, 1]
    x, y = ds[3]
    assert x.shape == SHAPE and y == 1
    assert ds.raw(3).size == (24, 20)  # the source image, native resolution
    # test_resnet's config normalises with mean = std = 0.5: a black image maps to -1
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "cat" / "0.png")
    assert torch.allclose(ds[0][0], torch.full(SHAPE, -1.0))
