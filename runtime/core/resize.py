"""Frames and masks between the video's size (H0, W0) and the graphs' static size (H, W)."""

from __future__ import annotations

import cv2
import numpy as np

from runtime.core.errors import InputError
from runtime.core.owners import owners


def resize_frame(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H0, W0, 3) uint8 -> (H, W, 3) uint8: area when shrinking, bilinear when enlarging."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"frames must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    shrink = rgb.shape[0] > height or rgb.shape[1] > width
    return cv2.resize(rgb, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def onehot(labels: np.ndarray, ids: tuple[int, ...], n: int, height: int,
           width: int) -> np.ndarray:
    """labels (H0, W0) -> (n, H, W) float32 one-hot of `ids` (nearest resize; rest zero)."""
    small = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((n, height, width), np.float32)
    for i, obj in enumerate(ids):
        out[i] = small == obj
    return out


def prob_to_labels(prob: np.ndarray, ids: tuple[int, ...], height: int,
                   width: int) -> np.ndarray:
    """prob (C, H, W), C >= len(ids) + 1, background first -> (height, width) uint8 ids.

    The owners (runtime.core.owners) of the bilinearly resized probabilities, not a resize of
    the label map. Bilinear resizing is linear, so one object needs only the resized difference
    object - background (the background keeps a tie, as in `owners`).
    """
    def up(plane: np.ndarray) -> np.ndarray:
        plane = np.ascontiguousarray(plane, np.float32)
        if plane.shape == (height, width):
            return plane
        return cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)

    if len(ids) == 1:
        return (up(prob[1] - prob[0]) > 0).astype(np.uint8) * np.uint8(ids[0])
    index = owners(up(prob[c]) for c in range(len(ids) + 1))  # one plane at a time
    return np.array((0, *ids), np.uint8)[index]
