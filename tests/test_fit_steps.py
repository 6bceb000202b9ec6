"""fit's contracts beyond the loop: unlabelled data, the CSV history, torch's schedules,
and typed errors for what users get wrong (resume, device, samples)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch.utils.data import Dataset, Subset

import splitter
from splitter.errors import ConfigError
from splitter.train.data import digits
from splitter.train.fit import HISTORY, fit
from splitter.train.stages import Stage, cosine_factor, optimizers, schedules, set_trainable

SHAPE = (3, 16, 16)
STAGES = [{"kind": "features", "steps": 3, "beta": 0.01}, {"kind": "kd", "steps": 2, "lr": 1e-3}]


@pytest.fixture(scope="module")
def train():
    return Subset(digits("train", SHAPE), range(48))


def _split(teacher):
    torch.manual_seed(1)
    return splitter.split(teacher, at="layer1", bottleneck="entropy", channels=4, input_shape=SHAPE)


class _Images(Dataset):
    """Bare image tensors, no labels (an unlabelled image folder after its transform)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i][0]


def test_unlabelled_data_distils_from_the_teacher_alone(teacher, train, tmp_path):
    s = _split(teacher)
    rep = fit(s, _Images(train), teacher=teacher, stages=STAGES, batch_size=16,
              val_data=_Images(train), output_dir=str(tmp_path), progress=False)
    assert rep.labelled is False and rep.global_step == 5
    assert [r.kind for r in rep.stages] == ["features", "kd"]
    assert rep.stages[1].accuracy is None  # nothing to score against
    assert math.isfinite(rep.stages[1].loss)
    # stage 2 moved the decoder: it learned from the teacher's outputs
    x = torch.stack([train[i][0] for i in range(4)])
    assert s.decode(s.encode(x)).shape == (4, 10)


def test_history_csv_has_one_row_per_epoch(teacher, train, tmp_path):
    s = _split(teacher)
    stages = [{"kind": "features", "epochs": 2, "beta": 0.01}, {"kind": "kd", "epochs": 1}]
    rep = fit(s, train, teacher=teacher, stages=stages, batch_size=16, val_data=train,
              output_dir=str(tmp_path), progress=False)
    with open(tmp_path / HISTORY) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(rep.history) == 3
    assert [r["kind"] for r in rows] == ["features", "features", "kd"]
    assert [int(r["step"]) for r in rows] == [3, 6, 3]  # 48 samples / 16 a step
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(rep.history[-1]["val_accuracy"])


def test_schedule_is_torch_lambdalr_following_the_cosine(teacher):
    s = _split(teacher)
    stage = Stage(kind="features", steps=10, lr=1e-2, entropy_lr=2e-2, min_lr=0.1)
    set_trainable(s, stage)
    opts = optimizers(s, stage)
    scheds = schedules(opts, 10, stage.min_lr, start=4)
    assert all(isinstance(x, torch.optim.lr_scheduler.LambdaLR) for x in scheds)
    main = opts["main"]
    for k in range(4, 10):
        want = [g["base_lr"] * cosine_factor(k, 10, 0.1) for g in main.param_groups]
        assert [g["lr"] for g in main.param_groups] == pytest.approx(want, rel=1e-12)
        for o in opts.values():
            o.step()
        for x in scheds:
            x.step()
    assert cosine_factor(10, 10, 0.1) == pytest.approx(0.1)


def test_resume_needs_a_run_to_resume(teacher, train, tmp_path):
    s = _split(teacher)
    with pytest.raises(ConfigError, match="does not exist"):
        fit(s, train, stages=STAGES, output_dir=str(tmp_path / "nope"), resume=True, progress=False)
    with pytest.raises(ConfigError, match="holds no state.json"):
        fit(s, train, stages=STAGES, output_dir=str(tmp_path), resume=True, progress=False)
    with pytest.raises(ConfigError, match="needs the output_dir"):
        fit(s, train, stages=STAGES, resume=True, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_typed_error(teacher, train):
    with pytest.raises(ConfigError, match="no CUDA GPU.*device='cpu'"):
        fit(_split(teacher), train, stages=STAGES, device="cuda", progress=False)
    with pytest.raises(ConfigError, match="not a torch device"):
        fit(_split(teacher), train, stages=STAGES, device="gpu0", progress=False)


def test_samples_of_another_shape_are_a_typed_error(teacher):
    class Bad(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(SHAPE)}

    with pytest.raises(ConfigError, match="sample 0 is a dict.*\\(image, label\\)"):
        fit(_split(teacher), Bad(), stages=STAGES, progress=False)


def test_unlabelled_image_folder_fits(teacher, train, tmp_path):
    from splitter.train.data import image_folder

    for i in range(8):
        train.dataset.raw(train.indices[i]).save(tmp_path / f"img{i}.png")
    data = image_folder(str(tmp_path), teacher, input_size=SHAPE)
    assert len(data) == 8 and data[0][1] == -1 and data[0][0].shape == SHAPE
    rep = fit(_split(teacher), data, teacher=teacher, stages=STAGES, batch_size=4, progress=False)
    assert rep.labelled is False and rep.global_step == 5
