"""Losses: bootstrapped cross-entropy for masks, MSE for the QAM quality score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BootstrapSchedule:
    """Plain CE before `start_warm`; then the hardest top-p pixels, p decaying linearly from 1
    to `top_p` at `end_warm` (MiVOS/STCN)."""

    start_warm: int
    end_warm: int
    top_p: float = 0.15

    def fraction(self, step: int) -> float:
        if step < self.start_warm:
            return 1.0
        if step >= self.end_warm:
            return self.top_p
        progress = (step - self.start_warm) / (self.end_warm - self.start_warm)
        return 1.0 - (1.0 - self.top_p) * progress


def bootstrapped_ce(logits: torch.Tensor, target: torch.Tensor, p: float,
                    scored: torch.Tensor | None = None) -> torch.Tensor:
    """logits: (B, C, H, W) log-probabilities; target: (B, H, W) class ids; scored: (B, H, W)
    bool, the pixels that count (None: all)."""
    raw = F.nll_loss(logits, target, reduction="none").flatten()
    if scored is not None:
        raw = raw[scored.flatten()]
        if not raw.numel():
            return logits.sum() * 0.0
    if p >= 1.0:
        return raw.mean()
    k = max(1, int(raw.numel() * p))
    return torch.topk(raw, k, sorted=False).values.mean()


def mask_iou(prob: torch.Tensor, gt: torch.Tensor,
             scored: torch.Tensor | None = None) -> torch.Tensor:
    """IoU of (prob > 0.5) with gt, per object, over the `scored` pixels (B, H, W) (None: all).
    prob, gt: (B, N, H, W) -> (B, N); empty union counts as a perfect score, as the quality
    target of an absent object."""
    pred = prob > 0.5
    gt = gt > 0.5
    if scored is not None:
        pred = pred & scored[:, None]
    inter = (pred & gt).flatten(2).sum(-1).float()
    union = (pred | gt).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def quality_loss(score: torch.Tensor, prob: torch.Tensor, gt: torch.Tensor,
                 object_valid: torch.Tensor, activation: str = "sigmoid",
                 scored: torch.Tensor | None = None) -> torch.Tensor:
    """QAM score vs the IoU of the predicted masks, on real objects only.

    The paper's MSE, except for sigmoid scores: there binary cross-entropy against the soft IoU
    target has the same minimiser and a gradient (score - IoU) on the logit that does not
    vanish when the sigmoid saturates (MSE through a saturated sigmoid stops learning).
    """
    target = mask_iou(prob.detach(), gt, scored)
    score = score.float()
    if activation == "sigmoid":
        err = F.binary_cross_entropy(score, target, reduction="none")
    else:
        err = (score - target) ** 2
    return (err * object_valid).sum() / object_valid.sum().clamp(min=1)
