"""``splitter demo --quick``: every stage of the pipeline runs and its figures are measured."""

from __future__ import annotations

import json

import pytest

from splitter.cli.demo_run import (
    CRBQ,
    CUT,
    ENTROPY,
    ENTROPY_RATES,
    RAW_DIGIT_BYTES,
    SWEEP_RATES,
    run_demo,
)

STAGES = ["act1", "layer1", "layer2", "layer3", "layer4"]  # test_resnet's stage points


def test_quick_demo_end_to_end(tmp_path):
    r = run_demo(str(tmp_path / "out"), quick=True, cache=tmp_path / "cache", progress=False,
                 quiet=True)
    methods = {row.method for row in r.report.rows}
    assert methods == {"teacher", "entropy", "crbq", "jpeg", "webp"}
    assert all(row.samples == 360 for row in r.report.rows)
    assert all(row.bytes_mean > 0 for row in r.report.rows if row.method != "teacher")
    assert [c.setting for c in r.criteria] == [f"entropy beta={b}" for b in ENTROPY_RATES]
    for c in r.criteria:  # the verdicts follow from the measured numbers
        assert c.within_accuracy == (c.accuracy >= c.teacher_accuracy - 0.015)
        assert c.under_raw == (c.payload_bytes < RAW_DIGIT_BYTES)
        best = r.report.smallest_reaching(c.accuracy)
        assert c.smallest_codec_bytes == (best.bytes_mean if best else None)
    assert (tmp_path / "out" / "bundle" / "server" / "manifest.json").exists()
    assert "sweep trial" in r.bundle_setting  # rebuilt from a trial's own fit, not fitted again
    assert (tmp_path / "out" / "rd.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["report"]["rows"][0]["method"] == "teacher"
    assert set(saved["times"]) >= {"teacher", "layer1 full fits", "bundle + one payload"}
    # the measured sweep: every stage point plain, entropy and crbq; layer1's entropy at each
    # of its rates (the full fits the targets are judged on), the others at the sweep's rate;
    # each (point, bottleneck, β) once, every row measured
    import csv

    rows = list(csv.DictReader(open(r.sweep_csv)))
    assert rows and all(row["accuracy"] != "" and row["measured"] == "True" for row in rows)
    got = [(row["point"], row["config"], row["beta"]) for row in rows]
    assert len(got) == len(set(got))
    want = {("input", "plain", ""), ("output", "plain", "")}
    for p in STAGES:
        rates = ENTROPY_RATES if p == CUT else SWEEP_RATES[:1]
        want |= {(p, "plain", ""), (p, CRBQ, "")} | {(p, ENTROPY, str(b)) for b in rates}
    assert set(got) == want
    assert r.plan.choice is not None and r.plan.choice.accuracy_drop <= 1.5
    assert r.bd and r.anchor in ("jpeg", "webp")
    bd_rows = list(csv.DictReader(open(tmp_path / "out" / "rd.bd.csv")))
    assert {b["curve"] for b in bd_rows} >= {"jpeg", "webp", f"{CUT} {ENTROPY}", f"{CUT} {CRBQ}"}
    # the teacher is cached after the first run
    assert list((tmp_path / "cache").glob("digits_test_resnet_*.safetensors"))


@pytest.mark.slow  # minutes from a fresh cache: the default suite has a 15-minute budget
def test_full_demo_meets_the_targets(tmp_path):
    """The README's claim, from a fresh cache: an entropy bottleneck within 1.5 points of the
    teacher, at most a quarter of the smallest JPEG/WebP file as accurate, under 32 bytes.
    Minutes (the whole demo from a fresh cache): with --runslow. The quick demo test
    runs every step of the same pipeline in the default suite."""
    from splitter.explore.codecs import ALL_CODECS, available

    r = run_demo(str(tmp_path / "out"), cache=tmp_path / "cache", progress=False, quiet=True)
    curves = {b.curve for b in r.bd}  # every installed input codec and every fitted curve
    assert curves >= {c for c in ALL_CODECS if available(c)} | {f"{p} {ENTROPY}" for p in STAGES}
    assert all(b.bd_rate is not None for b in r.bd if b.curve == f"{CUT} {ENTROPY}")
    met = [c for c in r.criteria if c.passed]
    assert met, r.criteria
    for c in met:  # the verdict, recomputed from the measured numbers
        assert c.accuracy >= c.teacher_accuracy - 0.015
        assert c.payload_bytes * 4 <= c.smallest_codec_bytes and c.payload_bytes < 32
