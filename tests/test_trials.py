"""Trials: measured on held-out data, stored, resumed after a kill, run in processes and Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from splitter.explore.trials import TrialContext, TrialSpec, TrialStore, run_trial, run_trials

TINY = {"quick": [dict(kind="features", steps=4, lr=3e-3), dict(kind="kd", steps=2, lr=3e-4)]}
SHAPE = (3, 16, 16)


def context(export: bool = False, eval_limit: int = 48, labelled: bool = True) -> TrialContext:
    """test_resnet with seeded random weights on digits at 3x16x16, tiny schedules; bundles
    (``export``) by the TorchScript exporter, a few seconds faster here than dynamo."""
    import timm

    from splitter.train.data import digits

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    return TrialContext(model, digits("train", SHAPE), digits("test", SHAPE), input_shape=SHAPE,
                        schedules=TINY, eval_limit=eval_limit, time_samples=4, export=export,
                        labelled=labelled, name="test_resnet", exporter="torchscript")


SPECS = [TrialSpec(point="layer1", config="entropy:channels=4", beta=b) for b in (0.001, 0.01, 0.1)] + \
        [TrialSpec(point="layer2", config="crbq:channels=4")]


@pytest.fixture(scope="module")
def ctx():
    return context()


@pytest.fixture(scope="module")
def serial(ctx, tmp_path_factory):
    """``SPECS[:2]`` run one after another in this process: the reference results."""
    store = tmp_path_factory.mktemp("serial")
    res, failed, ran = run_trials(ctx, SPECS[:2], store, progress=False)
    assert not failed and len(ran) == 2
    return res, store


def test_plain_trial_is_the_untouched_model(ctx, tmp_path):
    r = run_trial(ctx, TrialSpec(point="layer1"), tmp_path)
    t_pred, labels = ctx.teacher_outputs()
    assert r.accuracy == float((t_pred == labels).mean()) == r.teacher_accuracy
    assert r.agreement == 1.0 and not r.fitted and r.bytes_source == "raw"
    assert r.bytes_mean == r.bytes_p95 == r.cut_bytes == 8 * 8 * 8 * 4  # layer1: (8, 8, 8) float32
    assert r.bpp == r.cut_bytes * 8 / (16 * 16)
    assert r.samples == 48


def test_fitted_trial_measures_real_payloads_and_matches_its_bundle(tmp_path):
    """Bytes are those of the split's own payloads on held-out samples; the exported
    bundle's device encoder produces the same sizes (the issue: within 1 %)."""
    c = context(export=True, eval_limit=32)
    spec = TrialSpec(point="layer1", config="entropy:channels=4", beta=0.01)
    r = run_trial(c, spec, tmp_path)
    assert r.fitted and r.bytes_source == "payload" and r.samples == 32
    assert [s["steps"] for s in r.fit_stages] == [4, 2]
    assert r.bundle is not None
    assert r.bundle_samples == 4 and r.device_ms is not None and r.device_ms > 0
    assert "onnxruntime" in r.device_ms_source
    # the split's payloads for the same 4 samples
    from splitter.deploy.runtime import load_bundle

    dev = load_bundle(r.bundle).device()
    xs = [c.test[i][0].unsqueeze(0) for i in range(4)]
    assert abs(r.bundle_bytes_mean - np.mean([len(dev.encode(x)) for x in xs])) == 0
    import splitter

    torch.manual_seed(0)
    s = splitter.split(c.model, "layer1", bottleneck="entropy", channels=4, input_shape=SHAPE)
    from splitter.train import checkpoint as ckpt

    ckpt.load_split(s, str(Path(r.bundle).parent / "fit" / ckpt.CHECKPOINT))
    s.eval()
    split_sizes = [len(s.encode(x)) for x in xs]
    assert abs(np.mean(split_sizes) - r.bundle_bytes_mean) <= 0.01 * r.bundle_bytes_mean
    log = (Path(r.bundle).parent / "trial.log").read_text()
    assert "start" in log and "done in" in log and "device encode" in log


def test_unlabelled_data_scores_agreement_with_the_teacher(tmp_path):
    c = context(labelled=False, eval_limit=16)
    r = run_trial(c, TrialSpec(point="layer1", config="crbq:channels=4"), tmp_path)
    assert r.metric == "agreement" and r.accuracy == r.agreement and r.teacher_accuracy == 1.0


def test_finished_trials_are_read_back_not_rerun(ctx, serial):
    res, store = serial  # ran both trials
    again, _, ran2 = run_trials(ctx, SPECS[:2], store, progress=False)
    assert ran2 == [] and [r.model_dump() for r in again] == [r.model_dump() for r in res]


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_trials import SPECS, context
from splitter.explore.trials import run_trials
run_trials(context(), SPECS, {store!r}, progress=False, on_result=lambda r: time.sleep(3))
"""


def test_killed_sweep_resumes_only_the_missing_trials(ctx, tmp_path):
    store = tmp_path / "store"
    code = _CHILD.format(tests=str(Path(__file__).parent), store=str(store))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                            start_new_session=True)
    try:
        for _ in range(2400):  # bounded by polls (about 2 min idle), not by a clock
            if len(list(store.glob("trials/*/result.json"))) >= 2:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("two trials did not finish within 2,400 polls")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        proc.wait()
    before = {p: p.stat().st_mtime_ns for p in store.glob("trials/*/result.json")}
    assert len(before) == 2
    st = TrialStore(store)
    done_ids = {st.result(ctx, s).id for s in SPECS if st.result(ctx, s) is not None}
    res, failed, ran = run_trials(ctx, SPECS, store, progress=False)
    assert not failed and len(res) == 4
    assert set(ran) == {ctx.trial_id(s) for s in SPECS} - done_ids and len(ran) == 2
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the finished two untouched


def test_jobs_run_in_processes_with_the_same_results(ctx, serial, tmp_path):
    par, failed, ran = run_trials(ctx, SPECS[:2], tmp_path / "b", jobs=2, progress=False)
    assert not failed and len(ran) == 2
    for a, b in zip(serial[0], par):  # same seeds, same data order: same weights, same bytes
        assert (a.bytes_mean, a.accuracy) == (b.bytes_mean, b.accuracy)


def test_two_trials_through_ray_tune(ctx, serial, local_ray, tmp_path):
    res, failed, ran = run_trials(ctx, SPECS[:2], tmp_path, ray=True, progress=False)
    assert not failed, failed
    assert len(res) == 2 and len(ran) == 2
    for a, b in zip(serial[0], res):
        assert (a.bytes_mean, a.accuracy) == (b.bytes_mean, b.accuracy)
    assert list((tmp_path / "ray").iterdir())  # Tune's own result logs
