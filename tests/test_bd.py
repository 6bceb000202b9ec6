"""Bjøntegaard deltas on curves whose answer is known, and the files they are written to."""

from __future__ import annotations

import csv
import io
import json

import pytest

from splitter.explore.bd import bd_accuracy, bd_rate, best_codec, compare, envelope, to_csv, to_json

ANCHOR = [(10.0, 0.50), (20.0, 0.60), (40.0, 0.70), (80.0, 0.80)]  # accuracy linear in log bytes


def test_half_the_bytes_at_equal_accuracy_is_minus_50_percent():
    half = [(b / 2, a) for b, a in ANCHOR]
    assert bd_rate(ANCHOR, half) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(half, ANCHOR) == pytest.approx(100.0, abs=1e-9)
    # at equal bytes, halving the bytes of a curve rising 10 points per doubling gains 10 points
    assert bd_accuracy(ANCHOR, half) == pytest.approx(10.0, abs=1e-9)


def test_two_points_more_accuracy_at_every_rate():
    up = [(b, a + 0.02) for b, a in ANCHOR]
    assert bd_accuracy(ANCHOR, up) == pytest.approx(2.0, abs=1e-9)
    # +2 points = 0.2 doublings of bytes saved: 2^-0.2 - 1
    assert bd_rate(ANCHOR, up) == pytest.approx(100 * (2 ** -0.2 - 1), abs=1e-6)


def test_envelope_drops_points_a_user_would_not_pick():
    assert envelope([(40, 0.7), (10, 0.5), (30, 0.4), (20, 0.6), (20, 0.55)]) == \
        [(10, 0.5), (20, 0.6), (40, 0.7)]


def test_compare_anchor_and_files(tmp_path):
    curves = {"jpeg": ANCHOR, "webp": [(b * 0.8, a) for b, a in ANCHOR],
              "split": [(b / 4, a) for b, a in ANCHOR], "one point": [(5.0, 0.9)]}
    assert best_codec(curves, ["jpeg", "webp"]) == "webp"
    rows = compare(curves, "webp")
    by = {r.curve: r for r in rows}
    assert by["webp"].bd_rate == 0.0 and by["webp"].note == "anchor"
    assert by["split"].bd_rate == pytest.approx(100 * (0.25 / 0.8 - 1), abs=1e-9)
    assert by["jpeg"].bd_rate == pytest.approx(25.0, abs=1e-9)
    assert by["one point"].bd_rate is None and "two points" in by["one point"].note
    text = to_csv(rows, str(tmp_path / "bd.csv"))
    got = {r["curve"]: r for r in csv.DictReader(io.StringIO(text))}
    assert float(got["split"]["bd_rate"]) == pytest.approx(by["split"].bd_rate)
    assert got["one point"]["bd_rate"] == ""
    assert json.loads(to_json(rows, str(tmp_path / "bd.json")))[2]["curve"] == "split"
    assert (tmp_path / "bd.csv").read_text() == text
