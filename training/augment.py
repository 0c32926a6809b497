"""Photometric and geometric augmentation of frames with their label maps (numpy + OpenCV).

Labels are warped with nearest-neighbour sampling so object ids stay ids; pixels warped in from
outside the frame are background.
"""

from __future__ import annotations

import cv2
import numpy as np


def color_jitter(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by 1 +- 0.3 * strength."""
    x = img.astype(np.float32)
    x = x * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength) + mean  # contrast
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength) + gray  # saturation
    return np.clip(x, 0, 255).astype(np.uint8)


def maybe_blur(rng: np.random.Generator, img: np.ndarray, p: float) -> np.ndarray:
    """Gaussian blur (sigma 0.5-2 px) with probability p: motion/defocus blur in real videos."""
    if rng.random() >= p:
        return img
    return cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 2.0)))


def random_affine(rng: np.random.Generator, h: int, w: int, degrees: float, scale: float,
                  shear: float, translate: float) -> np.ndarray:
    """A 3x3 matrix: rotation, isotropic scale 1 +- scale, shear and translation about the centre."""
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    m = np.eye(3)
    m[:2] = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[0, 1] += np.tan(np.radians(rng.uniform(-shear, shear)))
    m[:2, 2] += rng.uniform(-translate, translate, size=2) * np.array([w, h])
    return m


def random_perspective(rng: np.random.Generator, h: int, w: int, distortion: float) -> np.ndarray:
    """A 3x3 homography moving each corner by up to `distortion` of the frame size."""
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = rng.uniform(-distortion, distortion, size=(4, 2)) * np.float32([w, h])
    return cv2.getPerspectiveTransform(src, (src + jitter).astype(np.float32))


def warp(img: np.ndarray, lab: np.ndarray, m: np.ndarray,
         out_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply the 3x3 transform m to an image (reflected borders) and its labels (background)."""
    h, w = out_size or lab.shape
    img = cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
    lab = cv2.warpPerspective(lab, m, (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT)
    return img, lab


def rescale(img: np.ndarray, lab: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a frame (area when shrinking, linear when enlarging) and its labels to size=(H, W)."""
    h, w = size
    interp = cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR
    return (cv2.resize(img, (w, h), interpolation=interp),
            cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST))


def crop(rng: np.random.Generator, frames: list[np.ndarray], labels: list[np.ndarray],
         size: tuple[int, int], target: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A random crop (same for all frames), preferring crops where `target` covers >= 1 %."""
    h, w = labels[0].shape
    ch, cw = size
    best = (0, 0)
    for _ in range(10):
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        best = (y, x)
        if (labels[0][y:y + ch, x:x + cw] == target).sum() > 0.01 * ch * cw:
            break
    y, x = best
    return ([f[y:y + ch, x:x + cw] for f in frames], [lb[y:y + ch, x:x + cw] for lb in labels])
