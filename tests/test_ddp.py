"""fit under ``torchrun --nproc-per-node 2`` on CPU (gloo): both ranks end with identical
weights, and only rank 0 writes files."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

SCRIPT = textwrap.dedent("""
    import hashlib, os, sys
    import timm, torch
    from torch.utils.data import Subset
    torch.set_num_threads(1)
    import splitter
    import splitter.train.checkpoint as ck
    from splitter.train.data import digits
    from splitter.train.fit import fit

    writes = []
    _atomic = ck._atomic
    def spy(path, write):
        writes.append(path)
        return _atomic(path, write)
    ck._atomic = spy  # count every file this rank writes

    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    torch.manual_seed(100 + rank)  # each rank starts from another bottleneck: DDP must sync
    s = splitter.split(teacher, at="layer1", bottleneck="entropy", channels=4, input_shape=(3, 16, 16))
    train = Subset(digits("train", (3, 16, 16)), range(64))
    stages = [{"kind": "features", "steps": 3, "lr": 3e-3, "beta": 0.01, "match_output": 1.0},
              {"kind": "kd", "steps": 2, "lr": 1e-3}]
    rep = fit(s, train, teacher=teacher, stages=stages, batch_size=16, output_dir=sys.argv[1],
              progress=False)
    h = hashlib.sha256()
    for k, v in sorted(ck.split_state(s).items()):
        h.update(k.encode()); h.update(v.contiguous().numpy().tobytes())
    print(f"RANK {rank} WORLD {rep.world_size} STEPS {rep.global_step} WRITES {len(writes)} "
          f"SHA {h.hexdigest()} BATCH {rep.batch_size} {rep.rank_batch_size}", flush=True)
""")


def test_torchrun_two_ranks_identical_weights_one_writer(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun did not finish in 300 s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = dict()
    for m in re.finditer(r"RANK (\d) WORLD (\d) STEPS (\d+) WRITES (\d+) SHA ([0-9a-f]{64}) "
                         r"BATCH (\d+) (\d+)", proc.stdout):
        found[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5),
                                  int(m.group(6)), int(m.group(7)))
    assert set(found) == {0, 1}, proc.stdout[-2000:]
    assert found[0][0] == found[1][0] == 2 and found[0][1] == found[1][1] == 5
    assert found[0][3] == found[1][3], "ranks ended with different weights"
    assert found[0][2] > 0 and found[1][2] == 0, "rank 1 wrote files"
    # batch_size=16 is the global batch: 8 samples a step on each of the 2 ranks
    assert found[0][4:] == found[1][4:] == (16, 8)
    names = sorted(os.listdir(out))
    # 64 samples / 2 ranks / 8 a step = 4 steps an epoch: each stage ends inside its first
    # epoch, so no mid-stage optimizer state is written
    assert names == ["checkpoint.safetensors", "fit.json", "history.csv", "split.safetensors",
                     "state.json"], names
    # the one file on disk holds exactly the weights both ranks ended with
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(out / "split.safetensors")).items()):
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    assert h.hexdigest() == found[0][3]
