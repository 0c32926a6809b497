"""Training data: DAVIS-layout videos, static-image pseudo-videos and copy-paste clips.

Every sample is 3 frames + per-object masks (+ corrupted masks for the QAM score), drawn from a
generator seeded by (seed, step), so a resumed run sees exactly the samples an uninterrupted one
would. Sequences are held at a larger size than the inference size and every clip is taken at
a random scale of it, so the model meets objects at the sizes a larger export shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from evaluation import datasets
from runtime.core.errors import InputError
from runtime.media.davis import RESOLUTION, DatasetError, DavisLayout, read_sequence
from runtime.media.masks import VOID_ID
from runtime.media.sources import read_frame
from training import augment
from training.copy_paste import Cutout, paste, trajectory
from training.mask_corruption import corrupt_masks

VOID = VOID_ID  # label of pixels no loss may score (a still's uncertain border band)


@dataclass
class Sequence:
    """One video (or a still: one frame) held in memory at the training resolution.

    frames: (T, H, W, 3) uint8 RGB; labels: (T, H, W) uint8 object ids (0 = background,
    VOID = not scored)
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray

    @property
    def num_objects(self) -> int:
        first = self.labels[0]
        return int(first[first != VOID].max(initial=0))


@dataclass
class Pool:
    """What clips are drawn from: videos, and stills that only give static pseudo-videos and
    objects to paste. A source is a still with probability still_fraction (when there are any)."""

    videos: list[Sequence]
    stills: list[Sequence] = field(default_factory=list)
    still_fraction: float = 0.0

    def pick(self, rng: np.random.Generator) -> Sequence:
        # No draw without stills: runs from before them keep their exact sample stream.
        if self.stills and rng.random() < self.still_fraction:
            return self.stills[int(rng.integers(len(self.stills)))]
        return self.videos[int(rng.integers(len(self.videos)))]


Sources = list[Sequence] | Pool


def as_pool(sources: Sources) -> Pool:
    return sources if isinstance(sources, Pool) else Pool(list(sources))


def load_sequence(root: Path, name: str, size: tuple[int, int] | None = None,
                  resolution: str = RESOLUTION) -> Sequence:
    """Frames and masks of `name` from a DAVIS-layout `root` (runtime.media.davis, which
    requires every frame annotated), resized to size=(H, W) (None: as stored)."""
    seq = read_sequence(root, name, resolution)
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
                           f"{DavisLayout(root, resolution).annotation(name, seq.frames[0])} is empty (no "
                           "object to track)")
    return out


def load_sequences(root: str | Path, names: list[str], size: tuple[int, int]) -> list[Sequence]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    return [load_sequence(root, n, size) for n in tqdm(names, desc="loading", leave=False)]


STILL_ASPECT = 1.5  # stills are cropped to at most this width/height around their object
STILL_HEIGHT = 320


def load_stills(root: str | Path, limit: int | None = None) -> list[Sequence]:
    """Photos with masks (`images/<name>.jpg`, `masks/<name>.png`: 0 background, 1 the object,
    255 void) as one-frame sequences. Each is cropped around its object to a landscape shape
    (clips are taken at the inference size's aspect, so a portrait photo would be squeezed
    flat) and resized to STILL_HEIGHT rows."""
    root = Path(root)
    images = sorted((root / "images").glob("*.jpg"))[:limit]
    if not images:
        raise DatasetError(f"no stills found: {root / 'images'}/*.jpg")
    out = []
    for path in tqdm(images, desc="loading stills", leave=False):
        mask_path = root / "masks" / f"{path.stem}.png"
        try:
            with Image.open(mask_path) as im:
                lab = np.array(im)
        except (OSError, ValueError) as e:
            raise DatasetError(f"still {path.name}: mask {mask_path}: {e}") from None
        if lab.ndim != 2:
            raise DatasetError(f"still {path.name}: mask {mask_path} is not a palette or "
                               "grayscale PNG")
        try:
            img = read_frame(path)
        except InputError as e:
            raise DatasetError(str(e)) from None
        if img.shape[:2] != lab.shape:
            raise DatasetError(f"still {path.name}: image {img.shape[1]}x{img.shape[0]} but mask "
                               f"{lab.shape[1]}x{lab.shape[0]}")
        lab = np.where(lab == VOID, VOID, (lab > 0) & (lab != VOID)).astype(np.uint8)
        ys = np.nonzero(lab == 1)[0]
        if not len(ys):
            continue
        h, w = lab.shape
        ch = min(h, round(w / STILL_ASPECT))  # rows kept: the whole width, fewer rows
        y0 = int(np.clip(ys.mean() - ch / 2, 0, h - ch))
        img, lab = img[y0:y0 + ch], lab[y0:y0 + ch]
        size = (round(img.shape[1] * STILL_HEIGHT / ch), STILL_HEIGHT)
        out.append(Sequence(path.stem, cv2.resize(img, size, interpolation=cv2.INTER_AREA)[None],
                            cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)[None]))
    return out


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
    qam_masks: (N, H, W) float32 corrupted versions of frame 2's masks (QAM score targets);
    void: (3, H, W) bool, pixels no loss scores."""

    frames: np.ndarray
    masks: np.ndarray
    object_valid: np.ndarray
    qam_masks: np.ndarray
    void: np.ndarray


Clip = tuple[list[np.ndarray], list[np.ndarray]]  # 3 frames (H, W, 3), 3 label maps (H, W)


def _to_sample(rng: np.random.Generator, frames: list[np.ndarray], labels: list[np.ndarray],
               objects: list[int], n: int) -> Sample:
    masks = np.zeros((3, n) + labels[0].shape, np.float32)
    valid = np.zeros(n, np.float32)
    for i, obj in enumerate(objects[:n]):
        for t in range(3):
            masks[t, i] = labels[t] == obj
        valid[i] = 1.0
    void = np.stack([lb == VOID for lb in labels])
    return Sample(np.stack(frames), masks, valid, corrupt_masks(rng, masks[2]), void)


def _visible(labels: list[np.ndarray]) -> list[int]:
    """Object ids present in the first frame (only those can be given as the reference)."""
    return [o for o in np.unique(labels[0]).tolist() if o not in (0, VOID)]


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


def any_clip(rng: np.random.Generator, sources: Sources, spec: SampleSpec, max_skip: int,
             static_fraction: float) -> Clip:
    seq = as_pool(sources).pick(rng)
    if len(seq.frames) < 3 or rng.random() < static_fraction:
        return static_clip(rng, seq, spec)
    return video_clip(rng, seq, spec, max_skip)


def video_sample(rng: np.random.Generator, sources: Sources, spec: SampleSpec,
                 max_skip: int) -> Sample:
    videos = as_pool(sources).videos
    frames, labels = video_clip(rng, videos[int(rng.integers(len(videos)))], spec, max_skip)
    objects = _visible(labels)
    rng.shuffle(objects)
    return _to_sample(rng, frames, labels, objects, spec.num_objects)


def static_sample(rng: np.random.Generator, sources: Sources, spec: SampleSpec) -> Sample:
    frames, labels = static_clip(rng, as_pool(sources).pick(rng), spec)
    return _to_sample(rng, frames, labels, _visible(labels), spec.num_objects)


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(ys.mean()), float(xs.mean())


def carried(rng: np.random.Generator, cut: Cutout,
            host: list[np.ndarray]) -> tuple[Cutout, list[tuple[int, int]]]:
    """`cut` scaled to a fifth to a half of its host's box in frame 0, and its top-left
    corners over the clip: centred on a random pixel of the host in frame 0, then moving as
    the host's centre moves (held where the host is hidden)."""
    ys, xs = np.nonzero(host[0])
    ph, pw = cut.masks[0].shape
    box = min((ys.max() - ys.min() + 1) / ph, (xs.max() - xs.min() + 1) / pw)
    cut = cut.scaled(box * float(rng.uniform(0.2, 0.5)))
    ph, pw = cut.masks[0].shape
    k = int(rng.integers(len(ys)))
    centre = _centre(host[0])
    dy, dx = ys[k] - centre[0] - ph / 2, xs[k] - centre[1] - pw / 2
    positions = []
    for mask in host:
        if mask.any():
            centre = _centre(mask)
        positions.append((round(centre[0] + dy), round(centre[1] + dx)))
    return cut, positions


def copy_paste_sample(rng: np.random.Generator, sources: Sources, spec: SampleSpec,
                      max_skip: int, static_fraction: float, distractors: int = 0,
                      twin_fraction: float = 0.25, crossing_fraction: float = 0.0,
                      leave_fraction: float = 0.0, small_fraction: float = 0.0,
                      carry_fraction: float = 0.0) -> Sample:
    """A clip with objects of other clips pasted onto it, moving, until it holds
    spec.num_objects objects. Each pasted target is, with probability twin_fraction, a second
    copy of an object already in the clip (a look-alike: same appearance, another identity),
    else an object of another clip or still. With probability crossing_fraction it moves
    through an object already there (paths that cross), else along a random line. Each paste
    goes in front of or behind what is there, so objects occlude each other both ways; objects
    hidden in frame 0 are dropped. With probability leave_fraction a pasted target is out of
    the frame in the middle frame and back in the last: the model must find it again from the
    first frame's memory, not from the frame before. With probability small_fraction every
    paste of the clip is small (many small objects in one frame, each a few feature cells).
    With probability carry_fraction a pasted target is carried by an object already there: a
    fifth to a half of its host's size, in front of it and moving with it (a bag on a person, a
    rider on a horse), so one object's id must not take what lies on it (`carried`).

    Then `distractors` more objects are pasted the same way but left unlabelled: background in
    every mask. Without them every salient thing in a training clip is a target, and the model
    learns to segment whatever stands out instead of what its memory holds (it painted the cow,
    not the dog it was given, on the two-object validation clips). A distractor that would hide
    a target entirely in frame 0 is not pasted. Distractors come from other clips, never a copy
    of a target: keys carry no position, so an unlabelled twin differs from the target only
    by where it moves."""
    pool = as_pool(sources)
    base = any_clip(rng, pool, spec, max_skip, static_fraction)
    frames = [f.copy() for f in base[0]]
    labels = [lb.copy() for lb in base[1]]
    objects = _visible(labels)[:1]
    ch, cw = spec.crop
    next_id = max(int(lb[lb != VOID].max(initial=0)) for lb in labels) + 1
    donors = [(base, objects[0])] if objects else []  # what a twin copies
    # No draw at 0: runs from before these options keep their exact sample stream.
    small = bool(small_fraction) and rng.random() < small_fraction
    pasted = 0
    for _ in range(3 * spec.num_objects + 2 + 2 * distractors):  # a donor may be absent
        target = len(objects) < spec.num_objects
        if not target and pasted >= distractors:
            break
        if target and donors and rng.random() < twin_fraction:
            (d_frames, d_labels), d_obj = donors[int(rng.integers(len(donors)))]
        else:
            d_frames, d_labels = any_clip(rng, pool, spec, max_skip, static_fraction)
            d_visible = _visible(d_labels)
            if not d_visible:
                continue
            d_obj = d_visible[0]
        cut = Cutout.from_clip(d_frames, d_labels, d_obj)
        if cut is None:
            continue
        # No draw at 0: runs from before the option keep their exact sample stream.
        host = (objects[int(rng.integers(len(objects)))]
                if target and objects and carry_fraction and rng.random() < carry_fraction
                else None)
        if host is not None:
            cut, positions = carried(rng, cut, [lb == host for lb in labels])
        else:
            ph, pw = cut.masks[0].shape
            fit = min(1.0, 0.7 * ch / ph, 0.7 * cw / pw)  # at most ~70 % of the crop
            cut = cut.scaled(fit * float(rng.uniform(0.1, 0.3) if small
                                         else rng.uniform(0.4, 1.0)))
            through = None
            if objects and crossing_fraction and rng.random() < crossing_fraction:
                through = _centre(labels[0] == objects[int(rng.integers(len(objects)))])
            positions = trajectory(rng, (ch, cw), cut.masks[0].shape, 3, through)
            if target and leave_fraction and rng.random() < leave_fraction:
                positions[1] = (positions[1][0], cw)  # starts at the right edge: wholly outside
        # A distractor may have to be undone (it hid a target in frame 0): keep the clip.
        kept = None if target else ([f.copy() for f in frames], [lb.copy() for lb in labels])
        paste(frames, labels, cut, next_id, positions,
              in_front=host is not None or rng.random() < 0.7)
        if target:
            objects = [o for o in objects if (labels[0] == o).any()]
            if (labels[0] == next_id).any():
                objects.append(next_id)
                donors.append(((d_frames, d_labels), d_obj))
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
    void = (datasets.side_by_side((a.frames, a.void), (b.frames, b.void))[1] > 0
            if a.void.any() or b.void.any() else np.zeros(labels.shape, bool))
    return Sample(frames, masks, valid, corrupt_masks(rng, masks[2]), void)
