"""Which object owns a pixel: the one rule wherever probabilities become object ids (the
masks a run writes, the locality prior's windows, the decoder's confidence in each mask)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def owners(planes: Iterable[np.ndarray]) -> np.ndarray:
    """(H, W) uint8 index of the most probable of `planes` (background first, so 0 is the
    background and i object i). Ties go to the lower index: the background over any object,
    an object over any later one, as numpy's argmax. One pass per plane and no (C, H, W)
    temporary: `planes` may be a generator that computes (e.g. resizes) one at a time."""
    it = iter(planes)
    best = np.array(next(it), np.float32)
    out = np.zeros(best.shape, np.uint8)
    for i, plane in enumerate(it, start=1):
        out[plane > best] = i
        np.maximum(best, plane, out=best)
    return out
