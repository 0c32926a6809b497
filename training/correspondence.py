"""Dense correspondence losses: teach the memory keys to match, where the true matches are known.

The memory read weights memory positions by key affinity, but with 12 training videos the
segmentation loss alone never made the keys match: on held-out videos the top-20 memory
positions of an object's query pixels fell on that object barely more often than chance (blackswan
0.22 vs 0.09, cows 0.18 vs 0.14, at chance on the two-object clips), so the model segmented what
looked salient near the previous mask. Warping a frame by a random affine gives the true match of
every query cell for free, on every frame of every clip: the loss is the cross-entropy of the
read's own affinity (query key . memory key / sqrt(CK)) against that match, bilinearly spread over
the four nearest memory cells.

`flow_correspondence_loss` does the same between a clip's real frames, with the matches taken
from optical flow (opencv's DIS, kept only where forward and backward flow agree): real motion,
deformation and occlusion, which an affine warp of one frame does not show.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from training.model import QDMN, key_affinity


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
    ys = (torch.arange(h, device=theta.device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=theta.device) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten(), torch.ones(h * w, device=theta.device)], 0)
    src = theta @ points  # (B, 2, hw) normalised source coordinates
    u = (src[:, 0] + 1) / 2 * w - 0.5  # continuous source cell index
    v = (src[:, 1] + 1) / 2 * h - 0.5
    return bilinear_targets(u, v, h, w)


def bilinear_targets(u: torch.Tensor, v: torch.Tensor, h: int, w: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous source cells (B, n) (u across, v down; cell centres at integers) -> (B, n, h*w)
    bilinear weights over the four nearest cells, and (B, n) bool: the source lies inside."""
    b, n = u.shape
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    u0, v0 = u.floor().clamp(0, w - 1), v.floor().clamp(0, h - 1)
    fu, fv = (u - u0).clamp(0, 1), (v - v0).clamp(0, 1)
    target = torch.zeros(b, n, h * w, device=u.device)
    for du, dv, weight in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)),
                           (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        cell = (v0 + dv).clamp(max=h - 1) * w + (u0 + du).clamp(max=w - 1)
        target.scatter_add_(2, cell.long().unsqueeze(-1), weight.unsqueeze(-1))
    return target, inside


def _affinity_nll(query_key: torch.Tensor, mem_key: torch.Tensor, target: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the read's affinity (`key_affinity`, in FP32) against `target`
    (B, hw, hw), averaged over the valid query cells (B, hw)."""
    with torch.autocast(query_key.device.type, enabled=False):
        affinity = key_affinity(query_key.flatten(2).float(), mem_key.flatten(2).float())
        nll = -(target * F.log_softmax(affinity, dim=2)).sum(2)
    return nll[valid].mean() if valid.any() else affinity.sum() * 0


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
    h, w = query_key.shape[2:]
    with torch.autocast(image.device.type, enabled=False):
        target, inside = match_targets(theta.float(), h, w)
    return _affinity_nll(query_key, mem_key, target, inside)


def flow_matches(query: np.ndarray, memory: np.ndarray, stride: int, max_error: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Where each stride x stride cell of `query` (H, W, 3 uint8) came from in `memory`: (h*w, 2)
    continuous source cells (u, v) and (h*w,) bool, True where at least half the cell's pixels
    have forward and backward DIS flow agreeing within `max_error` pixels (not occluded, not
    guessed)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    gq, gm = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (query, memory))
    back = dis.calc(gq, gm, None)  # query pixel -> memory pixel offset
    fwd = dis.calc(gm, gq, None)
    hh, ww = gq.shape
    ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float32)
    mx, my = xs + back[..., 0], ys + back[..., 1]
    round_trip = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(1e4, 1e4))
    ok = np.linalg.norm(back + round_trip, axis=-1) < max_error
    h, w = hh // stride, ww // stride

    def cells(x: np.ndarray) -> np.ndarray:
        return x[:h * stride, :w * stride].reshape(h, stride, w, stride).mean((1, 3))

    okf = ok.astype(np.float32)
    share = cells(okf)
    src_x = cells(mx * okf) / np.maximum(share, 1e-6)  # mean source pixel of the agreeing pixels
    src_y = cells(my * okf) / np.maximum(share, 1e-6)
    uv = np.stack([(src_x + 0.5) / stride - 0.5, (src_y + 0.5) / stride - 0.5], -1)
    return uv.reshape(-1, 2).astype(np.float32), (share >= 0.5).reshape(-1)


def flow_correspondence_loss(query_key: torch.Tensor, mem_key: torch.Tensor,
                             frames: torch.Tensor, t: int) -> torch.Tensor:
    """query_key: (B, CK, h, w) the read's query key of clip frame t; mem_key: (B, CK, h, w) the
    memory key of frame 0; frames: (B, T, H, W, 3) uint8. Matches from flow(frame t -> 0)."""
    h, w = query_key.shape[2:]
    stride = frames.shape[2] // h
    pairs = [flow_matches(f[t].cpu().numpy(), f[0].cpu().numpy(), stride) for f in frames]
    uv = torch.from_numpy(np.stack([p[0] for p in pairs])).to(query_key.device)
    valid = torch.from_numpy(np.stack([p[1] for p in pairs])).to(query_key.device)
    target, inside = bilinear_targets(uv[..., 0], uv[..., 1], h, w)
    return _affinity_nll(query_key, mem_key, target, valid & inside)
