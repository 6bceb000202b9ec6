"""The losses of distillation, and the student that computes them in one forward.

::

    features   x̂ = bottleneck(pre(x)) ─► ‖x̂ − t‖² / var(t) + β · bits/sample + aux  (+ τ²·KL)
    kd         logits = post(bottleneck(pre(x))) ─► α · CE(logits, y) + (1 − α) · τ²·KL(teacher ‖ logits)

``t`` is the teacher's tensor at the cut (``pre(x)`` in insert mode). Without labels
(``y < 0``) the kd loss is the teacher's KL alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitter.train.stages import Stage

__all__ = ["bits_per_sample", "kd_loss", "Student"]


def bits_per_sample(likelihoods: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    """Σ −log₂ p over every latent, divided by the batch: the rate the coder will approach."""
    total = sum((-torch.log2(v).sum() for v in likelihoods.values()), torch.zeros(()))
    return total / batch


def kd_loss(logits: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · KL(softmax(teacher/τ) ‖ softmax(logits/τ)), batch mean (Hinton et al. 2015)."""
    return F.kl_div(F.log_softmax(logits / tau, -1), F.log_softmax(teacher / tau, -1),
                    log_target=True, reduction="batchmean") * tau * tau


class Student(nn.Module):
    """The trainable path as one module, so DDP sees one forward per step."""

    def __init__(self, split: nn.Module, stage: Stage, variance: float, labelled: bool = True):
        super().__init__()
        self.pre, self.bottleneck, self.post = split.pre, split.bottleneck, split.post
        self.stage = stage
        self.variance = variance
        self.insert = split.mode != "replace"
        self.alpha = stage.alpha if labelled else 0.0
        self.beta_scale = 1.0  # < 1 while β warms up

    def forward(self, feat: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                teacher: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``feat``: the frozen ``pre(x)`` (the image in replace mode); ``target``: the
        teacher's cut tensor (replace mode); ``teacher``: the teacher's logits."""
        st = self.stage
        out = self.bottleneck(feat)
        bits = bits_per_sample(out.likelihoods, feat.shape[0])
        res: dict[str, torch.Tensor] = {"bits": bits}
        if st.kind == "features":
            t = feat if self.insert else target
            nmse = F.mse_loss(out.features, t) / self.variance
            loss = nmse + st.beta * self.beta_scale * bits
            if st.match_output > 0:
                logits = self.post(out.features)
                loss = loss + st.match_output * kd_loss(logits, teacher, st.tau)
                res["logits"] = logits.detach()
            aux = self.bottleneck.aux_loss()
            res.update(loss=loss + aux, main=loss, nmse=nmse.detach(), aux=aux.detach())
        else:
            logits = self.post(out.features)
            loss = (1 - self.alpha) * kd_loss(logits, teacher, st.tau)
            if self.alpha > 0:
                loss = self.alpha * F.cross_entropy(logits, y) + loss
            res.update(loss=loss, main=loss, logits=logits.detach())
        return res
