"""Marking an object on one frame: a box turned into a mask by OpenCV's GrabCut (no model
weights to download), and brush / eraser strokes. Pure functions over (H, W) uint8 label maps
(object ids, 0 = background)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from runtime.core.errors import MaskError

GRABCUT_ITERATIONS = 5
# GrabCut's cost grows with the pixels it models: the box and its margin are cut at most this
# wide (longer side), and the result scaled back to the frame.
GRABCUT_SIDE = 400
MIN_BOX = 4  # pixels per side: a smaller box is a click, not a box


def grabcut_box(rgb: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The object inside `box` (x0, y0, x1, y1 in frame pixels) -> (H, W) bool.

    GrabCut models foreground colours inside the box and background colours in a margin around
    it, so the margin is part of the cut region. rgb: (H, W, 3) uint8."""
    h, w = rgb.shape[:2]
    if len(box) != 4 or not np.isfinite(box).all():
        raise MaskError(f"a box is 4 finite numbers (x0, y0, x1, y1), got {list(box)}")
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, x1 = sorted((max(0, min(w, x0)), max(0, min(w, x1))))
    y0, y1 = sorted((max(0, min(h, y0)), max(0, min(h, y1))))
    if x1 - x0 < MIN_BOX or y1 - y0 < MIN_BOX:
        raise MaskError(f"the box is {x1 - x0}x{y1 - y0} pixels inside the frame: draw a larger "
                        "one around the object")
    mx, my = max(8, (x1 - x0) // 4), max(8, (y1 - y0) // 4)
    cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    crop = cv2.cvtColor(np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1]), cv2.COLOR_RGB2BGR)
    scale = min(1.0, GRABCUT_SIDE / max(crop.shape[:2]))
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ch, cw = crop.shape[:2]
    rx, ry = int((x0 - cx0) * scale), int((y0 - cy0) * scale)
    rect = (rx, ry, max(1, min(cw - rx, round((x1 - x0) * scale))),
            max(1, min(ch - ry, round((y1 - y0) * scale))))
    if rect[2] >= cw and rect[3] >= ch:  # the box is the whole frame: no background to learn
        rect = (1, 1, cw - 2, ch - 2)
    cut = np.zeros((ch, cw), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's colour models start from k-means: the same box, the same mask
    cv2.grabCut(crop, cut, rect, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    fg = ((cut == cv2.GC_FGD) | (cut == cv2.GC_PR_FGD)).astype(np.uint8)
    if scale < 1.0:
        fg = cv2.resize(fg, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((h, w), bool)
    out[cy0:cy1, cx0:cx1] = fg > 0
    out[:y0] = out[y1:] = False  # the box bounds the object (the margin is only background)
    out[:, :x0] = out[:, x1:] = False
    if not out.any():
        raise MaskError("GrabCut found no object in the box: draw it tighter, or paint the "
                        "object with the brush")
    return out


def stroke(shape: tuple[int, int], points: Sequence[Sequence[float]], radius: float) -> np.ndarray:
    """The pixels a round brush of `radius` covers along `points` [(x, y), ...] -> (H, W) bool."""
    if not points:
        raise MaskError("a stroke needs at least one point")
    if not 0 < radius <= 500:  # also refuses NaN
        raise MaskError(f"brush radius {radius}: expected 0 < radius <= 500 pixels")
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    if not np.isfinite(xy).all():
        raise MaskError("stroke points must be finite numbers")
    r = max(1, round(radius))
    h, w = shape
    # points far outside the frame draw nothing there; clipped, they stay in OpenCV's int range
    xy = np.clip(xy, [-r - 1, -r - 1], [w + r + 1, h + r + 1])
    pts = np.round(xy).astype(np.int32)
    canvas = np.zeros(shape, np.uint8)
    for p in pts:
        cv2.circle(canvas, (int(p[0]), int(p[1])), r, 1, thickness=-1)
    if len(pts) > 1:
        cv2.polylines(canvas, [pts], False, 1, thickness=2 * r)
    return canvas.astype(bool)


def set_object(labels: np.ndarray, obj: int, region: np.ndarray) -> np.ndarray:
    """`obj` now covers exactly `region` on this frame (a box redefines an object): its pixels
    elsewhere become background, other objects lose what it takes."""
    out = np.where(labels == obj, 0, labels).astype(np.uint8)
    out[region] = obj
    return out


def paint(labels: np.ndarray, obj: int, region: np.ndarray) -> np.ndarray:
    """The brush: `region` becomes `obj`, over whatever was there."""
    out = labels.copy()
    out[region] = obj
    return out


def erase(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The eraser: `region` becomes background, whichever object it held."""
    out = labels.copy()
    out[region] = 0
    return out
