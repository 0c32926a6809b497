"""Copy-paste compositing: objects cut out by their masks and pasted, moving, onto another clip.

DAVIS-2016 has one object per video. Pasting objects from other clips (or the same one, as a
look-alike distractor) gives multi-object clips with occlusions in both directions: a pasted
object is either in front of everything pasted before it or behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Cutout:
    """One object over a clip: per-frame RGB patches and binary masks, cropped to its box."""

    patches: list[np.ndarray]  # (h, w, 3) uint8, one per frame
    masks: list[np.ndarray]  # (h, w) bool

    @classmethod
    def from_clip(cls, frames: list[np.ndarray], labels: list[np.ndarray],
                  obj: int) -> Cutout | None:
        """The object's pixels inside the union of its boxes over the clip; None if absent in
        the first frame (a pasted object must be visible where the reference mask is given)."""
        masks = [lab == obj for lab in labels]
        if not masks[0].any():
            return None
        union = np.logical_or.reduce(masks)
        ys, xs = np.nonzero(union)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        return cls([f[y0:y1, x0:x1] for f in frames], [m[y0:y1, x0:x1] for m in masks])

    def scaled(self, factor: float) -> Cutout:
        h, w = self.masks[0].shape
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        return Cutout([cv2.resize(p, size, interpolation=cv2.INTER_AREA if factor < 1
                                  else cv2.INTER_LINEAR) for p in self.patches],
                      [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
                       for m in self.masks])


def paste(frames: list[np.ndarray], labels: list[np.ndarray], cutout: Cutout, obj: int,
          positions: list[tuple[int, int]], in_front: bool) -> None:
    """Composite `cutout` into frames/labels in place with top-left corners `positions`.

    In front: its pixels overwrite the label map (hiding what was there). Behind: it only takes
    background pixels, so objects already in the clip hide it. The image edge is feathered
    (1 px Gaussian) so the paste boundary is not a trivial cue, as in real frames.
    """
    for t, (y, x) in enumerate(positions):
        mask, patch = cutout.masks[t], cutout.patches[t]
        h, w = labels[t].shape
        ph, pw = mask.shape
        ty0, tx0, ty1, tx1 = max(y, 0), max(x, 0), min(y + ph, h), min(x + pw, w)
        if ty0 >= ty1 or tx0 >= tx1:
            continue
        sy, sx = ty0 - y, tx0 - x
        m = mask[sy:sy + ty1 - ty0, sx:sx + tx1 - tx0]
        region = labels[t][ty0:ty1, tx0:tx1]
        if not in_front:
            m = m & (region == 0)
        alpha = cv2.GaussianBlur(m.astype(np.float32), (3, 3), 1.0)[..., None]
        img = frames[t][ty0:ty1, tx0:tx1].astype(np.float32)
        src = patch[sy:sy + ty1 - ty0, sx:sx + tx1 - tx0].astype(np.float32)
        frames[t][ty0:ty1, tx0:tx1] = (alpha * src + (1 - alpha) * img).astype(np.uint8)
        region[m] = obj


def trajectory(rng: np.random.Generator, frame_size: tuple[int, int],
               patch_size: tuple[int, int], steps: int,
               through: tuple[float, float] | None = None) -> list[tuple[int, int]]:
    """Top-left corners of a patch moving linearly (random velocity) with its first position
    mostly inside the frame; or, given a point `through` (y, x), a patch whose centre passes
    over it at the middle step, as paths that cross do."""
    h, w = frame_size
    ph, pw = patch_size
    if through is not None:
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.05, 0.15)
        vy, vx = speed * h * np.sin(angle), speed * w * np.cos(angle)
        mid = (steps - 1) / 2
        y0, x0 = through[0] - ph / 2 - vy * mid, through[1] - pw / 2 - vx * mid
        return [(round(y0 + vy * t), round(x0 + vx * t)) for t in range(steps)]
    y = rng.uniform(-0.25 * ph, max(h - 0.75 * ph, 1))
    x = rng.uniform(-0.25 * pw, max(w - 0.75 * pw, 1))
    vy, vx = rng.normal(0, 0.05 * h), rng.normal(0, 0.05 * w)
    return [(round(y + vy * t), round(x + vx * t)) for t in range(steps)]
