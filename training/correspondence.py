"""Dense correspondence loss: teach the memory keys to match, on frames warped by a known affine.

The memory read weights memory positions by key affinity, but with 12 training videos the
segmentation loss alone never made the keys match: on held-out videos the top-20 memory
positions of an object's query pixels fell on that object barely more often than chance (blackswan
0.22 vs 0.09, cows 0.18 vs 0.14, at chance on the two-object clips), so the model segmented what
looked salient near the previous mask. Warping a frame by a random affine gives the true match of
every query cell for free, on every frame of every clip: the loss is the cross-entropy of the
read's own affinity (query key . memory key / sqrt(CK)) against that match, bilinearly spread over
the four nearest memory cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.model import QDMN


def random_affine(b: int, *, degrees: float = 15.0, scale: tuple[float, float] = (0.85, 1.15),
                  translate: float = 0.1, device: torch.device | None = None) -> torch.Tensor:
    """(B, 2, 3) affines in normalised coordinates (torch's affine_grid convention: output point
    -> input point); draws from torch's global generator, which training seeds per step."""
    angle = (torch.rand(b, device=device) * 2 - 1) * math.radians(degrees)
    s = torch.empty(b, device=device).uniform_(*scale)
    t = (torch.rand(b, 2, device=device) * 2 - 1) * translate
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    return torch.stack([torch.stack([cos, -sin, t[:, 0]], 1),
                        torch.stack([sin, cos, t[:, 1]], 1)], 1)


def match_targets(theta: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of an (h, w) grid of the warped frame, the distribution over the (h, w)
    cells of the original it came from: (B, h*w, h*w) bilinear weights, and (B, h*w) bool,
    True where the source lies inside the original (other cells have no match)."""
    b = theta.shape[0]
    ys = (torch.arange(h, device=theta.device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=theta.device) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten(), torch.ones(h * w, device=theta.device)], 0)
    src = theta @ points  # (B, 2, hw) normalised source coordinates
    u = (src[:, 0] + 1) / 2 * w - 0.5  # continuous source cell index
    v = (src[:, 1] + 1) / 2 * h - 0.5
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    u0, v0 = u.floor().clamp(0, w - 1), v.floor().clamp(0, h - 1)
    fu, fv = (u - u0).clamp(0, 1), (v - v0).clamp(0, 1)
    target = torch.zeros(b, h * w, h * w, device=theta.device)
    for du, dv, weight in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)),
                           (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        cell = (v0 + dv).clamp(max=h - 1) * w + (u0 + du).clamp(max=w - 1)
        target.scatter_add_(2, cell.long().unsqueeze(-1), weight.unsqueeze(-1))
    return target, inside


def correspondence_loss(model: QDMN, image: torch.Tensor, masks: torch.Tensor,
                        mem_key: torch.Tensor) -> torch.Tensor:
    """image: (B, 3, H, W) normalised frame; masks: (B, N, H, W) its masks; mem_key: (B, CK, h, w)
    the memory key of that frame. The query is the frame warped by a random affine with a
    per-channel gain and offset (so matching cannot be by colour alone); its keys must pick the
    memory cells the warp moved them from."""
    b = image.shape[0]
    theta = random_affine(b, device=image.device)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    gain = torch.empty(b, 3, 1, 1, device=image.device).uniform_(0.7, 1.3)
    offset = torch.empty(b, 3, 1, 1, device=image.device).uniform_(-0.3, 0.3)
    warped = F.grid_sample(image, grid.to(image.dtype), align_corners=False) * gain + offset
    prior = F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)
    query_key = model.encode_query(warped, prior)[0]
    ck, h, w = query_key.shape[1:]
    with torch.autocast(image.device.type, enabled=False):  # FP32 affinity and targets
        affinity = torch.bmm(query_key.flatten(2).transpose(1, 2).float(),
                             mem_key.flatten(2).float()) / math.sqrt(ck)  # (B, hw, hw), the read's
        target, inside = match_targets(theta, h, w)
    nll = -(target * F.log_softmax(affinity, dim=2)).sum(2)
    return nll[inside].mean() if inside.any() else affinity.sum() * 0
