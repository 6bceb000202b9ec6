"""What the teacher and the data give a fit: samples with their index, cached teacher
outputs, the teacher's tensor at the cut, its variance, and validation accuracy.

::

    data[i] ─► (x, y) | x ─► Indexed ─► (x, y or −1, i)
    teacher(x), pre(x), teacher_cut(x) ─► TeacherCache[i]   (data without augmentation)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from splitter.errors import ConfigError
from splitter.train.losses import bits_per_sample

__all__ = ["Indexed", "TeacherCache", "teacher_cut", "feature_variance", "accuracy", "has_labels"]

UNLABELLED = -1


def _sample(item, i: int):
    """``(x, y)`` of one dataset item; ``y`` is :data:`UNLABELLED` for bare images."""
    if isinstance(item, torch.Tensor):
        return item, UNLABELLED
    if isinstance(item, (tuple, list)) and len(item) == 1 and isinstance(item[0], torch.Tensor):
        return item[0], UNLABELLED
    if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
        y = item[1]
        return item[0], UNLABELLED if y is None else y
    raise ConfigError(f"training sample {i} is a {type(item).__name__}; fit needs (image, label) "
                      f"pairs or bare image tensors of shape (C, H, W) (wrap your data so "
                      f"__getitem__ returns one of those)")


def has_labels(data: Dataset) -> bool:
    """Whether ``data`` yields labels (checked on its first sample)."""
    if len(data) == 0:
        raise ConfigError("the training data is empty; pass a dataset with at least one sample")
    y = _sample(data[0], 0)[1]
    return not (isinstance(y, int) and y == UNLABELLED)


class Indexed(Dataset):
    """``(x, y, index)``: lets the teacher cache key on the sample; ``y`` is −1 without labels."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = _sample(self.data[i], i)
        return x, y, i


class TeacherCache:
    """Frozen outputs (teacher logits, teacher / pre features) per sample index, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.store: dict[str, dict[int, torch.Tensor]] = {}

    @torch.no_grad()
    def get(self, key: str, idx: torch.Tensor, fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` without gradient, from the cache when every sample of ``idx`` is in it."""
        if not self.enabled:
            return fn(x)
        table = self.store.setdefault(key, {})
        ids = [int(i) for i in idx]
        if all(i in table for i in ids):
            return torch.stack([table[i] for i in ids]).to(x.device)
        out = fn(x)
        for i, row in zip(ids, out):
            table[i] = row.detach().clone()
        return out


def teacher_cut(teacher: nn.Module, split: nn.Module) -> nn.Module:
    """The teacher's layers up to the cut (a plain split of the teacher), on the CPU.

    Tracing runs a CPU example input, so a teacher that ``fit`` already moved to the GPU
    is traced from a CPU copy; the caller moves the head to its device.
    """
    import copy

    from splitter.compile.split import split as make_split

    if any(t.device.type != "cpu" for t in (*teacher.parameters(), *teacher.buffers())):
        teacher = copy.deepcopy(teacher).to("cpu")
    return make_split(teacher, at=split.cut.name, input_shape=tuple(split.graph.input_shape)).head


@torch.no_grad()
def feature_variance(source: nn.Module, data: Dataset, device: torch.device, n: int = 512,
                     batch_size: int = 64) -> float:
    """Variance of the teacher's cut tensor over the first ``n`` training samples."""
    subset = Indexed(torch.utils.data.Subset(data, range(min(n, len(data)))))
    s = s2 = 0.0
    count = 0
    for x, _, _ in DataLoader(subset, batch_size=batch_size):
        t = source(x.to(device)).double()
        s += float(t.sum())
        s2 += float((t * t).sum())
        count += t.numel()
    mean = s / count
    return max(s2 / count - mean * mean, 1e-12)


@torch.no_grad()
def accuracy(split: nn.Module, data: Dataset | None, device: torch.device,
             batch_size: int = 256) -> tuple[float | None, float | None]:
    """Validation accuracy and bits/sample through the training path in eval mode (which
    rounds exactly as encode/decode do); accuracy is None on data without labels."""
    if data is None:
        return None, None
    modes = {m: m.training for m in split.modules()}
    split.eval()
    correct = total = labelled = 0
    bits = 0.0
    try:
        for x, y, _ in DataLoader(Indexed(data), batch_size=batch_size):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits, _, lik = split.train_forward(x)
            known = y != UNLABELLED
            correct += int((logits.argmax(-1) == y)[known].sum())
            labelled += int(known.sum())
            total += len(y)
            bits += float(bits_per_sample(lik, 1))
    finally:
        for m, t in modes.items():
            m.training = t
    return (correct / labelled if labelled else None), bits / max(total, 1)
