"""Per-object locality prior: an object is found near where it was one frame earlier.

Why: the decoder decides each object's mask from that object's memory read. With keys that
match weakly (a small model trained on few videos), every object's read says "foreground", so
two objects claim each other's pixels: on the held-out `cows+libby` clip the shipped model gave
the dog's pixels dog 0.42 / cow 0.45 (background 0.13) and lost the dog from frame 1. The query
key's prior (PEM) cannot separate them: it is the maximum over objects, one map for all.

Objects move little between consecutive frames, so how the objects share a pixel's foreground
is weighted by a window around each object's previous mask: 1 on it, a Gaussian of the distance
from it beyond, never below `WINDOW_FLOOR`, as wide as `locality` x sqrt(the object's area) and
at least one feature cell. The background's probability is left as it is: the prior decides
which object a foreground pixel belongs to, never how much is foreground, so it cannot shrink a
mask against the background, and a video with one object is exactly what the model gives. An
object absent from the previous frame gets no window and may be found anywhere. Pure numpy +
OpenCV on the decoder's output, before the masks reach the memory, the prior and the user, so
the correction propagates.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.manifest import STRIDE

# Window width per sqrt(object area); 0 switches the prior off. Chosen on four two-object clips
# built from training videos (scripts/locality_sweep.py, light model, 240x432): J&F 0.367
# without the prior, 0.528 / 0.526 / 0.517 / 0.517 / 0.509 at 0.1 / 0.2 / 0.35 / 0.5 / 1.0; at
# 480x864 0.494 at 0.1 and 0.491 at 0.5. Flat from 0.1 to 0.5, but at 0.1-0.2 the one-cell
# floor sets the small objects' widths, which then no longer scale with them: 0.5. Tried at 0.5
# and dropped: windows also around the mask moved by the object's last motion (no change),
# windows flat out to 1-2 widths (0.435-0.502).
DEFAULT_LOCALITY = 0.5
WINDOW_FLOOR = 0.05  # far from its last mask an object keeps 5 % of its weight, not none
MIN_SIGMA = float(STRIDE)  # pixels at the graphs' size: below a feature cell nothing is located
# Windows vary over MIN_SIGMA pixels at least, so they are computed on every GRID-th pixel and
# resized: 0.35 instead of 4.1 ms per frame at 240x432 with two objects, 1.1 instead of 12.7 ms
# at 480x864 (2-core AMD EPYC).
GRID = 4


def locality_window(previous: np.ndarray, locality: float,
                    min_sigma: float = MIN_SIGMA) -> np.ndarray | None:
    """(H, W) float32 weights in [WINDOW_FLOOR, 1] around the boolean mask `previous`, with
    distances in its own pixels; None when the mask is empty."""
    area = int(np.count_nonzero(previous))
    if area == 0:
        return None
    dist = cv2.distanceTransform((~previous).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    sigma = max(locality * np.sqrt(area), min_sigma)
    window = np.exp(-0.5 * (dist / sigma) ** 2)
    return (WINDOW_FLOOR + (1.0 - WINDOW_FLOOR) * window).astype(np.float32)


def owners(probs: np.ndarray) -> np.ndarray:
    """(H, W) label map of objects' probabilities `probs` (k, H, W): 0 where the background
    (1 - their sum) is the most likely, else 1 + the most likely object."""
    bg = 1.0 - probs.sum(0, keepdims=True)
    return np.concatenate([bg, probs], 0).argmax(0)


def apply_locality(prob: np.ndarray, previous: np.ndarray, locality: float) -> np.ndarray:
    """Objects' windows applied to `prob` (1 + k, H, W: background, then the k objects) given
    the objects' probabilities in the previous frame `previous` (k, H, W). Only how the objects
    share each pixel's foreground changes: the background keeps its probability, and one object
    alone is left as it is (`prob` itself is returned); otherwise a new array."""
    if locality <= 0 or prob.shape[0] < 3:
        return prob
    out = np.array(prob, dtype=np.float32, copy=True)
    h, w = out.shape[1:]
    labels = owners(previous[:, ::GRID, ::GRID])
    for obj in range(1, out.shape[0]):
        window = locality_window(labels == obj, locality, MIN_SIGMA / GRID)
        if window is not None:
            out[obj] *= cv2.resize(window, (w, h), interpolation=cv2.INTER_LINEAR)
    weighted = out[1:].sum(0, keepdims=True)
    foreground = prob[1:].sum(0, keepdims=True)
    out[1:] *= foreground / np.maximum(weighted, np.finfo(np.float32).tiny)
    return out
