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

from runtime.core.manifest import STRIDE
from runtime.core.owners import owners

# Window width per sqrt(object area); 0 switches the prior off. Chosen on two-object clips built
# from training videos (scripts/locality_sweep.py; the sweep and the variants tried and dropped:
# docs/runtime.md, "Measurements behind the defaults"): J&F is flat from 0.1 to 0.5, but below
# 0.5 the one-cell floor sets small objects' widths, which then no longer scale with them.
DEFAULT_LOCALITY = 0.5
WINDOW_FLOOR = 0.05  # far from its last mask an object keeps 5 % of its weight, not none
MIN_SIGMA = float(STRIDE)  # pixels at the graphs' size: below a feature cell nothing is located
# Windows vary over MIN_SIGMA pixels at least, so they are computed on every GRID-th pixel and
# resized (about a tenth of the cost of full resolution).
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


def object_owners(probs: np.ndarray) -> np.ndarray:
    """(H, W) owners (runtime.core.owners) of objects' probabilities `probs` (k, H, W), the
    background being 1 - their sum: 0 for it, else 1 + the object."""
    return owners([1.0 - probs.sum(0), *probs])


def apply_locality(prob: np.ndarray, previous: np.ndarray, locality: float) -> np.ndarray:
    """Objects' windows applied to `prob` (1 + k, H, W: background, then the k objects) given
    the objects' probabilities in the previous frame `previous` (k, H, W). Only how the objects
    share each pixel's foreground changes: the background keeps its probability, and one object
    alone is left as it is (`prob` itself is returned); otherwise a new array."""
    if locality <= 0 or prob.shape[0] < 3:
        return prob
    out = np.array(prob, dtype=np.float32, copy=True)
    h, w = out.shape[1:]
    labels = object_owners(previous[:, ::GRID, ::GRID])
    for obj in range(1, out.shape[0]):
        window = locality_window(labels == obj, locality, MIN_SIGMA / GRID)
        if window is not None:
            out[obj] *= cv2.resize(window, (w, h), interpolation=cv2.INTER_LINEAR)
    weighted = out[1:].sum(0, keepdims=True)
    foreground = prob[1:].sum(0, keepdims=True)
    out[1:] *= foreground / np.maximum(weighted, np.finfo(np.float32).tiny)
    return out
