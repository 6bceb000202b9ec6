"""Sweeps: rows from prefix sums (no re-run), outputs, latency choices, the CLI."""

from __future__ import annotations

import csv
import importlib
import io
import json

import pytest
import torch

import passes.annotate
import splitter
from splitter.cli import main
from splitter.compile.costs import CostReport, report_at
from splitter.errors import BottleneckError, UnknownLayerError
from splitter.explore.latency import LORA, LTE, Link, Machine, latency_ms
from splitter.explore.sweep import BottleneckSpec, SweepResult, pareto_mask


@pytest.fixture(scope="module")
def r50():
    return splitter.trace("resnet50")  # 224x224, shared by the tests below


@pytest.fixture(scope="module")
def r18():
    return splitter.trace("resnet18", (3, 32, 32))


def _boom(*a, **k):
    raise AssertionError("a plain sweep must not partition, split or run the model")


def test_sweep_every_point_reads_prefix_sums_only(r50, monkeypatch):
    split_module = importlib.import_module("splitter.compile.split")  # `splitter.split` is the function
    monkeypatch.setattr(split_module, "partition", _boom)
    monkeypatch.setattr(split_module, "split", _boom)
    monkeypatch.setattr(passes.annotate.Annotate, "run_node", _boom)
    res = splitter.sweep(r50, "all")
    cuts = r50.cut_points()
    assert [r.point for r in res.rows] == [c.name for c in cuts]
    assert res.rows[0].point == "input" and res.rows[-1].point == "output"
    assert res.rows[-1].encoder_params == 25_557_032
    for r, c in zip(res.rows[::17], cuts[::17]):
        assert r.model_dump(include=set(CostReport.model_fields)) == report_at(r50, c).model_dump()


def test_points_stages_list_and_ends(r50):
    assert [r.point for r in splitter.sweep(r50).rows] == \
        ["input", "act1", "layer1", "layer2", "layer3", "layer4", "output"]
    assert [r.point for r in splitter.sweep(r50, ["layer3", "layer1"]).rows] == \
        ["input", "layer1", "layer3", "output"]
    assert [r.point for r in splitter.sweep(r50, "layer2").rows] == ["input", "layer2", "output"]
    with pytest.raises(UnknownLayerError):
        splitter.sweep(r50, ["layer9"])


def test_latency_is_the_neurosurgeon_sum(r50):
    res = splitter.sweep(r50, link=LTE, device=Machine(gflops=20), server=Machine(gflops=2000))
    r = next(r for r in res.rows if r.point == "layer3")
    want = r.encoder_flops / 20e9 * 1e3 + r.payload_bytes * 8 / 10e6 * 1e3 + 50 + r.tail_flops / 2000e9 * 1e3
    assert r.latency_ms == pytest.approx(want, rel=1e-12)
    assert latency_ms(0, 37.5e3 / 8, 0, link=LORA) == pytest.approx(1000 + 100)  # 1 s of LoRa + RTT


def test_latency_picks_input_on_fast_link_and_output_on_lora(r50):
    fast = splitter.sweep(r50, link=Link(bandwidth_mbps=1000, rtt_ms=1), device=Machine(gflops=0.1))
    assert fast.best.point == "input"
    lora = fast.under(link=LORA, device=Machine(gflops=1000))
    assert lora.best.point == "output"
    # re-predicting is the same as sweeping again under those conditions
    again = splitter.sweep(r50, link=LORA, device=Machine(gflops=1000))
    assert [r.latency_ms for r in lora.rows] == [r.latency_ms for r in again.rows]


def test_csv_json_plot(r50, tmp_path):
    res = splitter.sweep(r50)
    text = res.to_csv(tmp_path / "s.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (tmp_path / "s.csv").read_text() == text
    assert [r["point"] for r in rows] == [r.point for r in res.rows]
    assert int(rows[-1]["encoder_params"]) == 25_557_032
    assert rows[3]["tensors"] == "512x28x28 float32"  # layer2
    assert float(rows[0]["latency_ms"]) == pytest.approx(res.rows[0].latency_ms)
    data = json.loads(res.to_json(tmp_path / "s.json"))
    assert data["best"]["point"] == res.best.point
    assert SweepResult.model_validate({k: v for k, v in data.items() if k != "best"}).rows == res.rows
    out = res.plot(str(tmp_path / "s.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # with accuracy, the accuracy views are drawn and the Pareto marks follow accuracy
    res.set_accuracy("layer1", 0.70)
    res.set_accuracy("layer3", 0.76)
    assert [r.pareto for r in res.rows if r.accuracy is not None] == [True, True]
    res.plot(str(tmp_path / "acc.png"))
    assert (tmp_path / "acc.png").stat().st_size > 10_000


def test_many_pareto_labels_become_numbers_with_a_key():
    """Up to MAX_TEXT_LABELS labels are written beside their points; more (the demo's three-way
    view had 14, stacked into each other) become numbers with a key listing every label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitter.explore.plot import MAX_TEXT_LABELS, _annotate

    for n in (3, MAX_TEXT_LABELS + 2):
        fig, ax = plt.subplots()
        pts = [(10.0 ** (i / 3), 10.0 + 5 * i, f"layer{i} [entropy β={i}]") for i in range(n)]
        _annotate(ax, pts, [p[0] for p in pts], [p[1] for p in pts], log_y=False)
        texts = sorted(t.get_text() for t in ax.texts)
        legend = ax.get_legend()
        if n <= MAX_TEXT_LABELS:
            assert texts == sorted(p[2] for p in pts) and legend is None
        else:
            assert texts == sorted(str(i) for i in range(1, n + 1))
            keys = [t.get_text() for t in legend.get_texts()]
            assert sorted(k.split(": ", 1)[1] for k in keys) == sorted(p[2] for p in pts)
            assert sorted(k.split(": ", 1)[0] for k in keys) == texts
        plt.close(fig)


def test_pareto_mask():
    assert pareto_mask([(1, 5), (2, 2), (3, 3), (5, 1), (2, 2)]) == [True, True, False, True, True]


def test_bottleneck_rows_measured_and_skipped(r18):
    x = torch.randn(2, 3, 32, 32)
    res = splitter.sweep(r18, ["layer1", "layer2.0.conv1"], ["identity:dtype=fp16"], inputs=x)
    got = [(r.point, r.config) for r in res.rows]
    assert got == [("input", "plain"), ("layer1", "plain"), ("layer1", "identity:dtype=fp16"),
                   ("layer2.0.conv1", "plain"), ("output", "plain")]
    bn = res.rows[2]
    assert bn.payload_measured and bn.symbol_bytes == 64 * 8 * 8 * 2
    s = splitter.split(r18, "layer1", bottleneck="identity", dtype="fp16")
    assert bn.payload_bytes == len(s.encode(x[:1]))
    assert bn.encoder_params == res.rows[1].encoder_params
    [skip] = res.skipped
    assert skip.point == "layer2.0.conv1" and "single-tensor" in skip.reason


def test_bottleneck_spec_parse():
    s = BottleneckSpec.parse("entropy:channels=12,mode=replace")
    assert (s.kind, s.mode, s.options) == ("entropy", "replace", {"channels": 12})  # "12" -> 12
    assert s.label == "entropy:mode=replace,channels=12"
    assert BottleneckSpec.parse(s.label) == s
    assert BottleneckSpec.of({"kind": "entropy", "channels": 8}).label == "entropy:channels=8"
    with pytest.raises(BottleneckError, match="key=value"):
        BottleneckSpec.parse("crbq:channels")


def test_cli_sweep(tmp_path, capsys):
    rc = main(["sweep", "resnet18", "--input-size", "3,32,32", "--at", "layer1,layer3",
               "--link", "lora", "--rtt", "20", "--device-gflops", "50",
               "--csv", str(tmp_path / "o.csv"), "--json", str(tmp_path / "o.json"),
               "--plot", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "lora 0.0375 Mbit/s + 20 ms RTT" in out
    assert "best split: output" in out
    assert [line.split()[0] for line in out.splitlines()[3:7]] == ["input", "layer1", "layer3", "output"]
    for f in ("o.csv", "o.json", "o.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert main(["sweep", "resnet18", "--input-size", "3,32,32", "--bandwidth", "0"]) == 2


# -- measured sweeps ------------------------------------------------------------------------------

TINY = {"quick": [dict(kind="features", steps=4, lr=3e-3), dict(kind="kd", steps=2, lr=3e-4)]}


def test_sweep_without_data_prints_no_bottleneck_payload_as_measured(tmp_path, capsys):
    """The issue's first complaint: an untrained bottleneck's raw symbol size was printed as
    its payload and won. Without data, bottleneck rows say ``raw ≤N``, latencies are ``~``
    estimates, and the best split is one whose payload is known (a plain cut)."""
    rc = main(["sweep", "resnet18", "--input-size", "3,32,32", "--at", "layer1,layer4",
               "--bottleneck", "entropy", "--bottleneck", "crbq:channels=12", "--link", "lora",
               "--json", str(tmp_path / "o.json")])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.split()[:1] in (["layer1"], ["layer4"])]
    bn = [ln for ln in lines if "entropy" in ln or "crbq" in ln]
    assert len(bn) == 4
    for ln in bn:
        assert "raw ≤" in ln
    best = next(ln for ln in out.splitlines() if ln.startswith("best split:"))
    assert "entropy" not in best and "crbq" not in best and "measured" not in best
    data = json.loads((tmp_path / "o.json").read_text())
    for r in data["rows"]:
        assert not r["measured"] and r["device_ms_source"] == "estimate"
        if r["config"] != "plain":
            assert r["payload_measured"] is False and r["accuracy"] is None


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Two points x (entropy at two β + crbq), six 6-step fits, 40 held-out samples, JPEG and
    WebP at three qualities: every row kind, a two-point curve per β sweep for BD, in ~30 s."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    store = tmp_path_factory.mktemp("store")
    res = splitter.sweep(model, "layer1,layer2", ["entropy:channels=4", "crbq:channels=4"],
                         input_shape=(3, 16, 16), data="digits", betas=[0.001, 0.1], schedules=TINY,
                         store=str(store), export=False, eval_limit=40, codecs=["jpeg", "webp"],
                         qualities=[5, 50, 90])
    return res, model, store


def test_measured_sweep_rows_codecs_and_bd(measured, tmp_path):
    res, _, _ = measured
    got = [(r.point, r.config, r.beta) for r in res.rows]
    assert got == [("input", "plain", None), ("layer1", "plain", None),
                   ("layer1", "entropy:channels=4", 0.001), ("layer1", "entropy:channels=4", 0.1),
                   ("layer1", "crbq:channels=4", None), ("layer2", "plain", None),
                   ("layer2", "entropy:channels=4", 0.001), ("layer2", "entropy:channels=4", 0.1),
                   ("layer2", "crbq:channels=4", None), ("output", "plain", None)]
    assert res.data == "digits/test" and res.fit == "quick" and res.metric == "accuracy"
    for r in res.rows:
        assert r.measured and r.accuracy is not None and r.accuracy_drop is not None
        assert r.payload_measured == (r.config != "plain") and r.fitted == (r.config != "plain")
        assert r.accuracy_drop == pytest.approx(100 * (res.teacher_accuracy - r.accuracy))
    assert {(c.method, c.quality) for c in res.codecs} == {(m, q) for m in ("jpeg", "webp") for q in (5, 50, 90)}
    assert all(c.samples == 40 for c in res.codecs)
    text = res.to_csv(str(tmp_path / "s.csv"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert all(r["accuracy"] != "" for r in rows)  # no empty accuracy cell for fitted trials
    res.plot(str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 10_000
    if res.bd:
        assert (tmp_path / "s.bd.csv").exists() and (tmp_path / "s.bd.json").exists()
        assert {b.curve for b in res.bd} >= {"jpeg", "webp"}


def test_measured_sweep_resumes_from_its_store(measured):
    res, model, store = measured
    from splitter.explore import codecs, trials

    # a run killed among the codec settings: one (codec, quality) point never written
    [lost] = list(store.glob("codecs-*/webp-q50.json"))
    lost.unlink()
    ran, coded = [], set()
    real, real_encode = trials.run_trial, codecs.encode_image
    trials.run_trial = lambda *a, **k: ran.append(a[1]) or real(*a, **k)
    codecs.encode_image = lambda im, c, q: coded.add((c, q)) or real_encode(im, c, q)
    try:
        again = splitter.sweep(model, "layer1,layer2", ["entropy:channels=4", "crbq:channels=4"],
                               input_shape=(3, 16, 16), data="digits", betas=[0.001, 0.1],
                               schedules=TINY, store=str(store), export=False, eval_limit=40,
                               codecs=["jpeg", "webp"], qualities=[5, 50, 90])
    finally:
        trials.run_trial, codecs.encode_image = real, real_encode
    assert ran == [] and coded == {("webp", 50)}  # only what was missing
    assert [r.model_dump() for r in again.rows] == [r.model_dump() for r in res.rows]
    assert [c.model_dump() for c in again.codecs] == [c.model_dump() for c in res.codecs]


def test_rate_control_bisects_beta_to_the_target():
    from splitter.errors import ConfigError
    from splitter.explore.ratecontrol import bisect_beta, parse_size

    assert parse_size("2kB") == 2000 and parse_size("1.5KiB") == 1536 and parse_size("300B") == 300
    with pytest.raises(ConfigError, match="2kB"):
        parse_size("two kB")
    calls = []

    def measure(beta):  # bytes fall as β grows, as a fitted entropy bottleneck's do
        calls.append(beta)
        return 20.0 / beta ** 0.5

    s = bisect_beta(measure, 2000, tol=0.02)
    assert s.converged and abs(s.bytes - 2000) <= 40 and s.probes[-1] == (s.beta, s.bytes)
    assert len(calls) == len(s.probes) <= 8
    # unreachable: the closest probe from below is returned, and says it did not converge
    s = bisect_beta(lambda b: 5000.0, 2000, max_iter=3)
    assert not s.converged and len(s.probes) == 3


def test_cli_measured_sweep(tmp_path, capsys):
    rc = main(["sweep", "test_resnet", "--model-args", "num_classes=10", "--input-size", "3,16,16",
               "--at", "layer1", "--bottleneck", "crbq:channels=4", "--data", "digits", "--fit", "none",
               "--limit", "24", "--codecs", "jpeg", "--qualities", "10,90", "--no-export",
               "--store", str(tmp_path / "store"), "--csv", str(tmp_path / "o.csv")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "measured on digits/test" in out and "input codecs on the same held-out samples" in out
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert [(r["point"], r["config"]) for r in rows] == [("input", "plain"), ("layer1", "plain"),
                                                         ("layer1", "crbq:channels=4"), ("output", "plain")]
    assert rows[2]["payload_measured"] == "True" and rows[2]["accuracy"] != ""


def test_merged_sweeps_keep_one_row_per_point_config_and_beta():
    """Two sweeps sharing plain points (the demo's layer1 fits and its other stage points):
    one row each, in execution order, the first sweep's row where both have one."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("test_resnet", num_classes=10)
    a = splitter.sweep(m, "layer1", ["crbq:channels=4"], input_shape=(3, 16, 16))
    b = splitter.sweep(m, "layer1,layer2", ["crbq:channels=4"], input_shape=(3, 16, 16))
    a.rows[1].accuracy = 0.5  # layer1 plain: marks which sweep's row survives
    got = a.merged(b)
    assert [(r.point, r.config) for r in got.rows] == [
        ("input", "plain"), ("layer1", "plain"), ("layer1", "crbq:channels=4"),
        ("layer2", "plain"), ("layer2", "crbq:channels=4"), ("output", "plain")]
    assert got.rows[1].accuracy == 0.5 and got.link == a.link
    assert any(r.pareto for r in got.rows)
    assert [r.point for r in a.rows] == ["input", "layer1", "layer1", "output"]  # a is untouched
