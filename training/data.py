"""Training data: DAVIS-layout videos, static-image pseudo-videos and copy-paste clips.

Every sample is 3 frames + per-object masks (+ corrupted masks for the QAM score), drawn from a
generator seeded by (seed, step), so a resumed run sees exactly the samples an uninterrupted one
would. Sequences are held at a larger size than the inference size and every clip is taken at
a random scale of it, so the model meets objects at the sizes a larger export shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from evaluation import datasets
from runtime.core.errors import InputError
from runtime.media.davis import DatasetError, DavisLayout, read_sequence
from runtime.media.sources import read_frame
from training import augment
from training.copy_paste import Cutout, paste, trajectory
from training.mask_corruption import corrupt_masks


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


def load_sequence(root: Path, name: str, size: tuple[int, int] | None = None) -> Sequence:
    """Frames and masks of `name` from a DAVIS-layout `root` (runtime.media.davis, which
    requires every frame annotated), resized to size=(H, W) (None: as stored)."""
    seq = read_sequence(root, name)
    frames, labels = [], []
    for path, lab in zip(seq.frames, seq.labels):
        try:
            img = read_frame(path)
        except InputError as e:
            raise DatasetError(str(e)) from None
        if size is not None:
            h, w = size
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
        frames.append(img)
        labels.append(lab)
    out = Sequence(name, np.stack(frames), np.stack(labels))
    if out.num_objects == 0:
        raise DatasetError(f"sequence {name!r}: the first mask "
                           f"{DavisLayout(root).annotation(name, seq.frames[0])} is empty (no "
                           "object to track)")
    return out


def load_sequences(root: str | Path, names: list[str], size: tuple[int, int]) -> list[Sequence]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    return [load_sequence(root, n, size) for n in tqdm(names, desc="loading", leave=False)]


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class SampleSpec:
    """crop: output (H, W); num_objects: object channels (padded with empty, invalid objects);
    image_size: the inference size scales are relative to; scale_range: (min, max) scale of the
    frame before cropping, log-uniform (1 = the inference size)."""

    crop: tuple[int, int]
    num_objects: int
    image_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)


@dataclass
class Sample:
    """frames: (3, H, W, 3) uint8; masks: (3, N, H, W) float32; object_valid: (N,) float32;
    qam_masks: (N, H, W) float32 corrupted versions of frame 2's masks (QAM score targets)."""

    frames: np.ndarray
    masks: np.ndarray
    object_valid: np.ndarray
    qam_masks: np.ndarray


Clip = tuple[list[np.ndarray], list[np.ndarray]]  # 3 frames (H, W, 3), 3 label maps (H, W)


def _to_sample(rng: np.random.Generator, frames: list[np.ndarray], labels: list[np.ndarray],
               objects: list[int], n: int) -> Sample:
    masks = np.zeros((3, n) + labels[0].shape, np.float32)
    valid = np.zeros(n, np.float32)
    for i, obj in enumerate(objects[:n]):
        for t in range(3):
            masks[t, i] = labels[t] == obj
        valid[i] = 1.0
    return Sample(np.stack(frames), masks, valid, corrupt_masks(rng, masks[2]))


def _visible(labels: list[np.ndarray]) -> list[int]:
    """Object ids present in the first frame (only those can be given as the reference)."""
    return [o for o in np.unique(labels[0]).tolist() if o != 0]


def _frame_indices(rng: np.random.Generator, length: int, max_skip: int) -> list[int]:
    skip = max(1, min(max_skip, (length - 1) // 2))
    i0 = int(rng.integers(0, length - 2))
    i1 = min(i0 + int(rng.integers(1, skip + 1)), length - 2)
    i2 = min(i1 + int(rng.integers(1, skip + 1)), length - 1)
    idx = [i0, i1, i2]
    return idx[::-1] if rng.random() < 0.5 else idx  # play backwards half the time


def _scale(rng: np.random.Generator, seq: Sequence, spec: SampleSpec) -> tuple[int, int]:
    """Frame size for this clip: the inference size times a log-uniform scale, never smaller
    than the crop and never larger than the stored frames."""
    base = spec.image_size or seq.labels.shape[1:]
    lo, hi = spec.scale_range
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    s = max(s, spec.crop[0] / base[0], spec.crop[1] / base[1])
    h, w = seq.labels.shape[1:]
    s = min(s, h / base[0], w / base[1])
    return max(spec.crop[0], round(base[0] * s)), max(spec.crop[1], round(base[1] * s))


def video_clip(rng: np.random.Generator, seq: Sequence, spec: SampleSpec, max_skip: int) -> Clip:
    """Three frames in temporal order, at most `max_skip` apart, one scale/affine/flip for the
    clip and colour jitter per frame, cropped to spec.crop around an object."""
    idx = _frame_indices(rng, len(seq.frames), max_skip)
    size = _scale(rng, seq, spec)
    m = augment.random_affine(rng, *size, degrees=10, scale=0.1, shear=5, translate=0.05)
    flip = rng.random() < 0.5
    frames, labels = [], []
    for i in idx:
        img, lab = augment.warp(*augment.rescale(seq.frames[i], seq.labels[i], size), m)
        if flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        frames.append(augment.maybe_blur(rng, augment.color_jitter(rng, img, 0.5), 0.1))
        labels.append(lab)
    objects = _visible(labels)
    target = objects[int(rng.integers(len(objects)))] if objects else 1
    return augment.crop(rng, frames, labels, spec.crop, target)


def static_clip(rng: np.random.Generator, seq: Sequence, spec: SampleSpec) -> Clip:
    """A pseudo-video (the paper's first stage): one annotated frame under three random
    affine + perspective warps, colour jitter and blur."""
    i = int(rng.integers(len(seq.frames)))
    size = _scale(rng, seq, spec)
    img0, lab0 = augment.rescale(seq.frames[i], seq.labels[i], size)
    frames, labels = [], []
    for _ in range(3):
        m = augment.random_affine(rng, *size, degrees=20, scale=0.2, shear=10, translate=0.1)
        m = augment.random_perspective(rng, *size, distortion=0.08) @ m
        img, lab = augment.warp(img0, lab0, m)
        frames.append(augment.maybe_blur(rng, augment.color_jitter(rng, img, 1.0), 0.3))
        labels.append(lab)
    objects = _visible(labels)
    return augment.crop(rng, frames, labels, spec.crop, objects[0] if objects else 1)


def any_clip(rng: np.random.Generator, seqs: list[Sequence], spec: SampleSpec, max_skip: int,
             static_fraction: float) -> Clip:
    seq = seqs[int(rng.integers(len(seqs)))]
    if rng.random() < static_fraction:
        return static_clip(rng, seq, spec)
    return video_clip(rng, seq, spec, max_skip)


def video_sample(rng: np.random.Generator, seqs: list[Sequence], spec: SampleSpec,
                 max_skip: int) -> Sample:
    frames, labels = video_clip(rng, seqs[int(rng.integers(len(seqs)))], spec, max_skip)
    objects = _visible(labels)
    rng.shuffle(objects)
    return _to_sample(rng, frames, labels, objects, spec.num_objects)


def static_sample(rng: np.random.Generator, seqs: list[Sequence], spec: SampleSpec) -> Sample:
    frames, labels = static_clip(rng, seqs[int(rng.integers(len(seqs)))], spec)
    return _to_sample(rng, frames, labels, _visible(labels), spec.num_objects)


def copy_paste_sample(rng: np.random.Generator, seqs: list[Sequence], spec: SampleSpec,
                      max_skip: int, static_fraction: float, distractors: int = 0) -> Sample:
    """A clip with objects of other clips pasted onto it, moving, until it holds
    spec.num_objects objects: other videos' objects and, one time in four, a second copy of a
    clip's own object (a look-alike distractor). Each paste goes in front of or behind what is
    there, so objects occlude each other both ways; objects hidden in frame 0 are dropped.

    Then `distractors` more objects are pasted the same way but left unlabelled: background in
    every mask. Without them every salient thing in a training clip is a target, and the model
    learns to segment whatever stands out instead of what its memory holds (it painted the cow,
    not the dog it was given, on the two-object validation clips). A distractor that would hide
    a target entirely in frame 0 is not pasted. Distractors come from other clips, never a copy
    of the target: keys carry no position, so an unlabelled twin differs from the target only
    by where it moves."""
    base = any_clip(rng, seqs, spec, max_skip, static_fraction)
    frames = [f.copy() for f in base[0]]
    labels = [lb.copy() for lb in base[1]]
    objects = _visible(labels)[:1]
    ch, cw = spec.crop
    next_id = max(int(max(lb.max() for lb in labels)), 0) + 1
    twin = bool(objects) and spec.num_objects > 1 and rng.random() < 0.25
    pasted = 0
    for _ in range(8 + 2 * distractors):  # a few tries: a donor may be absent from frame 0
        target = len(objects) < spec.num_objects
        if not target and pasted >= distractors:
            break
        if twin:  # the clip's own object again, elsewhere: same look, another identity
            d_frames, d_labels, twin = base[0], base[1], False
        else:
            d_frames, d_labels = any_clip(rng, seqs, spec, max_skip, static_fraction)
        d_objects = _visible(d_labels)
        if not d_objects:
            continue
        cut = Cutout.from_clip(d_frames, d_labels, d_objects[0])
        if cut is None:
            continue
        ph, pw = cut.masks[0].shape
        fit = min(1.0, 0.7 * ch / ph, 0.7 * cw / pw)  # at most ~70 % of the crop
        cut = cut.scaled(fit * float(rng.uniform(0.4, 1.0)))
        positions = trajectory(rng, (ch, cw), cut.masks[0].shape, 3)
        # A distractor may have to be undone (it hid a target in frame 0): keep the clip.
        kept = None if target else ([f.copy() for f in frames], [lb.copy() for lb in labels])
        paste(frames, labels, cut, next_id, positions, in_front=rng.random() < 0.7)
        if target:
            objects = [o for o in objects if (labels[0] == o).any()]
            if (labels[0] == next_id).any():
                objects.append(next_id)
        elif all((labels[0] == o).any() for o in objects):
            pasted += 1
        elif kept is not None:
            frames, labels = kept
        next_id += 1
    rng.shuffle(objects)
    return _to_sample(rng, frames, labels, objects, spec.num_objects)


def side_by_side(rng: np.random.Generator, a: Sample, b: Sample) -> Sample:
    """Two single-object samples squeezed into one 2-object sample (left = 1, right = 2,
    evaluation.datasets.side_by_side), the recipe the DAVIS-2016 README suggests for
    multi-object videos."""
    frames, labels = datasets.side_by_side((a.frames, a.masks[:, 0]), (b.frames, b.masks[:, 0]))
    n = a.masks.shape[1]
    masks = np.zeros_like(a.masks)
    for k in (1, 2):
        masks[:, k - 1, :, :labels.shape[2]] = labels == k
    valid = np.zeros(n, np.float32)
    valid[:2] = [a.object_valid[0], b.object_valid[0]]
    return Sample(frames, masks, valid, corrupt_masks(rng, masks[2]))
