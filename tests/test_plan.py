"""``splitter plan``: the fastest (or smallest) measured split within an accuracy-drop bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import splitter
from splitter.cli import main
from splitter.errors import ConfigError, SplitterError
from splitter.explore.latency import LORA, WIFI, Link
from splitter.explore.plan import parse_link, plan, write_bundle


@pytest.fixture(scope="module")
def fake():
    """An analytic sweep of test_resnet whose rows are given measured figures by hand."""
    import timm

    torch.manual_seed(0)
    res = splitter.sweep(timm.create_model("test_resnet", num_classes=10), "layer1,layer2",
                         ["crbq:channels=4"], input_shape=(3, 16, 16))
    figures = {  # (point, config): (accuracy drop in points, measured bytes, device ms)
        ("input", "plain"): (0.0, 3072.0, 0.0), ("layer1", "plain"): (0.0, 2048.0, 0.2),
        ("layer1", "crbq:channels=4"): (1.2, 20.0, 0.3), ("layer2", "plain"): (0.0, 768.0, 0.3),
        ("layer2", "crbq:channels=4"): (2.5, 10.0, 0.4), ("output", "plain"): (0.0, 40.0, 0.9)}
    res = res.model_copy(update={"teacher_accuracy": 0.95})
    for r in res.rows:
        drop, nbytes, ms = figures[(r.point, r.config)]
        r.measured, r.accuracy_drop, r.accuracy = True, drop, 0.95 - drop / 100
        r.payload_bytes, r.payload_measured, r.device_ms = nbytes, r.config != "plain", ms
    return res


def test_plan_picks_the_fastest_within_the_bound(fake):
    p = plan(fake, max_drop=1.5, link=LORA)
    # LoRa: 20 B cost 4.3 ms, 40 B 8.5 ms; layer2 crbq (10 B) is over the bound
    assert (p.choice.point, p.choice.config) == ("layer1", "crbq:channels=4")
    assert [(r.point, r.config) for r in p.runners_up][:1] == [("output", "plain")]
    assert [(r.point, r.config) for r in p.rejected] == [("layer2", "crbq:channels=4")]
    assert p.candidates == 5
    tight = plan(fake, max_drop=1.0, link=LORA)
    assert (tight.choice.point, tight.choice.config) == ("output", "plain")
    loose = plan(fake, max_drop=3.0, link=LORA)
    assert (loose.choice.point, loose.choice.config) == ("layer2", "crbq:channels=4")
    # on a 1 Gbit/s link bytes hardly matter: the least device time wins (nothing runs for input)
    assert plan(fake, max_drop=1.5, link=Link(bandwidth_mbps=1000, rtt_ms=1)).choice.point == "input"
    # on Wi-Fi 20 B of layer1 crbq still beat 3 kB of raw input
    assert plan(fake, max_drop=1.5, link=WIFI).choice.point == "layer1"
    assert plan(fake, max_drop=1.5, objective="bytes").choice.config == "crbq:channels=4"
    assert write_bundle(tight.choice, "/nonexistent") is None  # plain: nothing to write


def test_plan_needs_measured_rows_and_a_readable_link(fake):
    import timm

    with pytest.raises(SplitterError, match="data="):
        plan(splitter.sweep(timm.create_model("test_resnet"), input_shape=(3, 16, 16)))
    assert parse_link("lora") == LORA
    link = parse_link("2,40")
    assert (link.bandwidth_mbps, link.rtt_ms) == (2.0, 40.0)
    for bad in ("fast", "0,10", "1,2,3"):
        with pytest.raises(ConfigError, match="BW,RTT"):
            parse_link(bad)
    assert main(["plan", "test_resnet", "--input-size", "3,16,16"]) == 2  # no --data
    for steps in ("60", "a,b", "60,-1"):  # --fit-steps needs both stages' steps
        assert main(["plan", "test_resnet", "--input-size", "3,16,16", "--data", "digits",
                     "--fit-steps", steps]) == 2
    assert main(["plan", "test_resnet", "--input-size", "3,16,16", "--data", "digits", "--fit", "none",
                 "--fit-steps", "60,20"]) == 2


def test_plan_on_digits_for_lora_stays_within_1_5_points(tmp_path, capsys):
    """The issue's check: `splitter plan` on digits with --max-drop 1.5 --link lora returns a
    choice whose measured accuracy drop (here re-measured from the written bundle on the
    held-out digits) is within 1.5 points.

    Sized for the default suite: the demo's digits teacher trained for 3 epochs instead of 15
    (96.7 % on the held-out 360), and one entropy bottleneck at layer2 fitted by the quick
    recipe cut to 400 + 200 steps (``--fit-steps``), exported by TorchScript. Measured here:
    a 1.1-point drop at 13.6 B per sample, so the bottleneck beats the 40 B of plain logits
    on LoRa and its bundle is written and re-measured below."""
    from splitter.cli.demo_run import digits_teacher
    from splitter.explore.evaluate import evaluate_model
    from splitter.train.data import digits

    teacher, ckpt = digits_teacher(cache=tmp_path / "cache", epochs=3, progress=False, quiet=True)
    out = tmp_path / "bundle"
    rc = main(["plan", "test_resnet", "--model-args", "num_classes=10", "--checkpoint", str(ckpt),
               "--input-size", "3,16,16", "--data", "digits", "--at", "layer2",
               "--bottleneck", "entropy:channels=8", "--beta", "0.002", "--fit", "quick",
               "--fit-steps", "400,200", "--exporter", "torchscript",
               "--link", "lora", "--max-drop", "1.5", "--codecs", "none",
               "--store", str(tmp_path / "store"), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "choice: " in text
    test = digits("test", (3, 16, 16))
    t_acc = evaluate_model(teacher, test).accuracy
    if "no bundle to write" in text:  # a plain split won: it is the untouched model
        return
    b = splitter.load_bundle(out)
    dev, srv = b.device(), b.server()
    preds = np.array([int(srv.decode(dev.encode(test[i][0].unsqueeze(0))).argmax(-1)[0])
                      for i in range(len(test))])
    acc = float((preds == np.array(test.targets)).mean())
    assert 100 * (t_acc - acc) <= 1.5, (acc, t_acc, text)


def test_cli_plan_reads_a_device_profile(tmp_path, capsys):
    """Encode times from a device profile replace this machine's per row, and decide."""
    import json

    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"encode_ms": {"layer1 crbq": 5000.0, "output": 0.5, "layer1": 4000.0}}))
    rc = main(["plan", "test_resnet", "--model-args", "num_classes=10", "--input-size", "3,16,16",
               "--data", "digits", "--at", "layer1", "--bottleneck", "crbq:channels=4", "--fit", "none",
               "--limit", "24", "--codecs", "none", "--no-export", "--store", str(tmp_path / "s"),
               "--link", "lora", "--max-drop", "100", "--device-profile", str(prof)])
    out = capsys.readouterr().out
    assert rc == 0, out
    choice = next(ln for ln in out.splitlines() if ln.startswith("choice:"))
    assert choice.startswith("choice: output plain") and "0.500 ms device (profile p.json" in choice
    assert "no bundle to write" in out
