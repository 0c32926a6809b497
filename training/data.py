"""Training data: DAVIS/YouTube-VOS layout videos and static-image pseudo-videos.

Every sample is 3 frames + per-object masks, drawn from a generator seeded by (seed, step), so a
resumed run sees exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from evaluation.davis import DavisLayout
from runtime.masks import MaskMode, read_labels

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A dataset folder is incomplete or holds masks this project cannot interpret."""


@dataclass
class Sequence:
    """One video held in memory at the training resolution.

    frames: (T, H, W, 3) uint8 RGB; labels: (T, H, W) uint8 object ids (0 = background)
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.labels[0].max())


def load_sequence(root: Path, name: str, size: tuple[int, int]) -> Sequence:
    """Load frames and masks of `name` from a DAVIS-layout `root`, resized to size=(H, W)."""
    layout = DavisLayout(root)
    frame_dir, mask_dir = layout.frames_dir(name), layout.annotations_dir(name)
    if not frame_dir.is_dir():
        raise DatasetError(f"sequence {name!r}: no frame folder {frame_dir}")
    frame_paths = sorted(p for p in frame_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not frame_paths:
        raise DatasetError(f"sequence {name!r}: {frame_dir} holds no frames")
    h, w = size
    frames, labels = [], []
    for fp in frame_paths:
        mp = mask_dir / (fp.stem + ".png")
        if not mp.is_file():
            raise DatasetError(f"sequence {name!r}: frame {fp.name} has no mask {mp}")
        img = cv2.imread(str(fp), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"cannot read frame {fp}")
        frames.append(cv2.resize(img[:, :, ::-1], (w, h), interpolation=cv2.INTER_AREA))
        lab = read_labels(mp, MaskMode.GROUND_TRUTH)
        labels.append(cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST))
    seq = Sequence(name, np.stack(frames), np.stack(labels))
    if seq.num_objects == 0:
        raise DatasetError(f"sequence {name!r}: the first mask {mask_dir / (frame_paths[0].stem + '.png')} "
                           "is empty (no object to track)")
    return seq


def load_sequences(root: str | Path, names: list[str], size: tuple[int, int]) -> list[Sequence]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    return [load_sequence(root, n, size) for n in tqdm(names, desc="loading", leave=False)]


def read_split(root: str | Path, split_file: str | Path) -> list[str]:
    path = Path(root) / split_file
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- augmentation


def _color_jitter(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    x = img.astype(np.float32)
    x = x * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength) + mean  # contrast
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength) + gray  # saturation
    return np.clip(x, 0, 255).astype(np.uint8)


def _random_affine(rng: np.random.Generator, h: int, w: int, degrees: float, scale: float,
                   shear: float, translate: float) -> np.ndarray:
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[0, 1] += np.tan(np.radians(rng.uniform(-shear, shear)))
    m[:, 2] += rng.uniform(-translate, translate, size=2) * np.array([w, h])
    return m


def _warp(img: np.ndarray, lab: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = lab.shape
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lab = cv2.warpAffine(lab, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    return img, lab


def _crop(rng: np.random.Generator, frames: list[np.ndarray], labels: list[np.ndarray],
          crop: tuple[int, int], target: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A random crop (same for all frames), preferring crops where the target is visible."""
    h, w = labels[0].shape
    ch, cw = crop
    best = (0, 0)
    for _ in range(10):
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        best = (y, x)
        if (labels[0][y:y + ch, x:x + cw] == target).sum() > 0.01 * ch * cw:
            break
    y, x = best
    return ([f[y:y + ch, x:x + cw] for f in frames], [lb[y:y + ch, x:x + cw] for lb in labels])


@dataclass(frozen=True)
class SampleSpec:
    crop: tuple[int, int]
    num_objects: int  # objects per sample (padded with empty, invalid objects)


@dataclass
class Sample:
    """frames: (3, H, W, 3) uint8; masks: (3, N, H, W) float32; object_valid: (N,) float32"""

    frames: np.ndarray
    masks: np.ndarray
    object_valid: np.ndarray


def _to_sample(frames: list[np.ndarray], labels: list[np.ndarray], objects: list[int],
               n: int) -> Sample:
    masks = np.zeros((3, n) + labels[0].shape, np.float32)
    valid = np.zeros(n, np.float32)
    for i, obj in enumerate(objects[:n]):
        for t in range(3):
            masks[t, i] = labels[t] == obj
        valid[i] = 1.0
    return Sample(np.stack(frames), masks, valid)


def video_sample(rng: np.random.Generator, seqs: list[Sequence], spec: SampleSpec,
                 max_skip: int) -> Sample:
    """Three frames in temporal order, at most `max_skip` apart, from one video."""
    seq = seqs[int(rng.integers(len(seqs)))]
    t = len(seq.frames)
    skip = max(1, min(max_skip, (t - 1) // 2))
    i0 = int(rng.integers(0, t - 2))
    i1 = min(i0 + int(rng.integers(1, skip + 1)), t - 2)
    i2 = min(i1 + int(rng.integers(1, skip + 1)), t - 1)
    idx = [i0, i1, i2]
    if rng.random() < 0.5:  # play backwards
        idx = idx[::-1]
    flip = rng.random() < 0.5
    m = _random_affine(rng, *seq.labels.shape[1:], degrees=10, scale=0.15, shear=5, translate=0.05)
    frames, labels = [], []
    for i in idx:
        img, lab = _warp(seq.frames[i], seq.labels[i], m)
        if flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        frames.append(_color_jitter(rng, img, 0.5))
        labels.append(lab)
    objects = [o for o in np.unique(labels[0]).tolist() if o != 0]
    rng.shuffle(objects)
    frames, labels = _crop(rng, frames, labels, spec.crop, objects[0] if objects else 1)
    objects = [o for o in objects if (labels[0] == o).any()]
    return _to_sample(frames, labels, objects, spec.num_objects)


def static_sample(rng: np.random.Generator, seqs: list[Sequence], spec: SampleSpec) -> Sample:
    """A pseudo-video: one image and mask under three random affine/colour transforms."""
    seq = seqs[int(rng.integers(len(seqs)))]
    i = int(rng.integers(len(seq.frames)))
    h, w = seq.labels.shape[1:]
    frames, labels = [], []
    for _ in range(3):
        m = _random_affine(rng, h, w, degrees=20, scale=0.2, shear=10, translate=0.1)
        img, lab = _warp(seq.frames[i], seq.labels[i], m)
        frames.append(_color_jitter(rng, img, 1.0))
        labels.append(lab)
    objects = [o for o in np.unique(labels[0]).tolist() if o != 0]
    frames, labels = _crop(rng, frames, labels, spec.crop, objects[0] if objects else 1)
    objects = [o for o in objects if (labels[0] == o).any()]
    return _to_sample(frames, labels, objects, spec.num_objects)


def side_by_side(a: Sample, b: Sample) -> Sample:
    """Two single-object samples squeezed into one 2-object sample (left = 1, right = 2), the
    recipe DAVIS-2016 data allows for multi-object training."""
    t, h, w, _ = a.frames.shape
    half = w // 2

    def squeeze(x: np.ndarray, interp: int) -> np.ndarray:
        return cv2.resize(x, (half, h), interpolation=interp)

    frames = np.stack([
        np.concatenate([squeeze(a.frames[i], cv2.INTER_AREA),
                        squeeze(b.frames[i], cv2.INTER_AREA)], 1) for i in range(t)])
    n = a.masks.shape[1]
    masks = np.zeros_like(a.masks)
    for i in range(t):
        masks[i, 0, :, :half] = squeeze(a.masks[i, 0], cv2.INTER_NEAREST)
        masks[i, 1, :, half:2 * half] = squeeze(b.masks[i, 0], cv2.INTER_NEAREST)
    valid = np.zeros(n, np.float32)
    valid[:2] = [a.object_valid[0], b.object_valid[0]]
    return Sample(frames, masks, valid)
