"""Deliberately wrong masks with known quality, to teach the QAM score what a bad mask is.

The model's own predictions during training are mostly good, so the score would only ever see
IoUs in a narrow band. These corruptions reproduce the failures seen at inference: masks that
bleed into the background (dilation), lose parts (erosion, cut-outs), lag behind the object
(shift), grab a distractor (blob elsewhere, another object's mask), or vanish; plus the
untouched ground truth, so the score of a perfect mask (the first frame's) is learned too.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("identity", "dilate", "erode", "shift", "cutout", "blob", "swap", "empty")


def _ellipse(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    h, w = shape
    out = np.zeros(shape, np.uint8)
    centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    axes = (max(2, int(rng.uniform(0.3, 1.0) * scale * w)),
            max(2, int(rng.uniform(0.3, 1.0) * scale * h)))
    cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out > 0


def corrupt(rng: np.random.Generator, mask: np.ndarray, others: list[np.ndarray],
            kind: str) -> np.ndarray:
    """A corrupted copy of the binary mask (H, W) bool; `others` are the other objects' masks."""
    h, w = mask.shape
    area = max(int(mask.sum()), 1)
    size = np.sqrt(area)  # the object's linear size in pixels
    if kind == "identity":
        return mask.copy()
    if kind in ("dilate", "erode"):
        r = max(1, int(rng.uniform(0.05, 0.4) * size))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        op = cv2.dilate if kind == "dilate" else cv2.erode
        return op(mask.astype(np.uint8), kernel) > 0
    if kind == "shift":
        dy, dx = rng.uniform(-0.6, 0.6, size=2) * size
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        return cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0
    if kind == "cutout":
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return mask.copy()
        hole = np.zeros((h, w), np.uint8)
        i = int(rng.integers(ys.size))
        r = max(2, int(rng.uniform(0.2, 0.6) * size))
        cv2.circle(hole, (int(xs[i]), int(ys[i])), r, 1, -1)
        return mask & (hole == 0)
    if kind == "blob":
        return mask | _ellipse(rng, (h, w), float(rng.uniform(0.05, 0.3)))
    if kind == "swap":
        candidates = [o for o in others if o.any()]
        if candidates and rng.random() < 0.5:
            return candidates[int(rng.integers(len(candidates)))].copy()
        return _ellipse(rng, (h, w), float(rng.uniform(0.1, 0.35)))
    if kind == "empty":
        return np.zeros_like(mask)
    raise ValueError(f"unknown corruption {kind!r}; known: {KINDS}")


def corrupt_masks(rng: np.random.Generator, masks: np.ndarray,
                  weights: tuple[float, ...] | None = None) -> np.ndarray:
    """masks: (N, H, W) float 0/1 ground truth -> (N, H, W) float32 corrupted masks, one random
    kind (sometimes two stacked) per object, softened at the edges like predicted probabilities."""
    p = np.asarray(weights or (0.15, 0.15, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1), np.float64)
    p = p / p.sum()
    binary = [m > 0.5 for m in masks]
    out = np.zeros(masks.shape, np.float32)
    for i, m in enumerate(binary):
        others = binary[:i] + binary[i + 1:]
        c = corrupt(rng, m, others, KINDS[int(rng.choice(len(KINDS), p=p))])
        if rng.random() < 0.25:
            c = corrupt(rng, c, others, KINDS[int(rng.choice(len(KINDS), p=p))])
        out[i] = cv2.GaussianBlur(c.astype(np.float32), (0, 0), float(rng.uniform(0.5, 1.5)))
    return out
