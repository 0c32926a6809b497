"""The per-frame QDMN inference loop, written once for every backend.

Frame 0: the given mask (one-hot, padded objects zero) is encoded by qam into slot 0 and its
objects' quality scores become the normalisers (runtime.core.quality.frame_score). Frame t > 0:

    encoder(image_t, prev_prob) -> memory_read(query_key, bank) -> decoder -> prob (N+1, H, W)
    locality window around each object's previous mask (runtime.core.locality) -> prob
    qam(image_t, prob[1:]) -> the frame's memory keys/values  (skipped on a known last frame)
    quality(qam features) -> scores, only if the policy counts frame t as a candidate
    policy.decide(t, frame_score(scores, first scores)) -> slot; bank.write(slot)

A candidate's per-object score is its QAM score times the decoder's confidence in the mask
(runtime.core.quality; the paper's QAM score alone with quality_score="qam"); run.json records both.

The frame goes into the temp slot as the previous-frame memory, or into a dynamic slot when the
policy accepts it (the temp slot is then emptied, the official code's `prev_in_mem`). Every
memorised frame needs qam (the previous frame is always read as the temp slot), but only a
candidate's score is ever used (the official loop tests `mem_freq` frames since the last
insertion before the score), so the score head runs on those frames only.

A later frame may come with a given mask (`reference`: a user's correction, or an object that
first appears there): it replaces the prediction for the objects it decides, new ids join the
tracked ones, and the frame is pinned in a dynamic slot as a reference like the first frame
(runtime.core.memory_policy: at most MAX_PINNED at once, the oldest demoted), so the bank keeps
its fixed size.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from runtime.backends import create_backend
from runtime.backends.base import Backend
from runtime.core.config import RuntimeConfig
from runtime.core.errors import InputError, MaskError
from runtime.core.geometry import DEFAULT_FIT, Placement, export_size
from runtime.core.locality import apply_locality
from runtime.core.manifest import STRIDE, Manifest
from runtime.core.memory_policy import Decision, MemoryPolicy
from runtime.core.quality import frame_score, mask_confidence, object_scores
from runtime.media.masks import fit_mask, object_ids
from runtime.media.sources import with_last

STAGES = ("pre", "encoder", "memory_read", "decoder", "locality", "qam", "quality", "bank",
          "post")
# Memory-read cells under which a given object is usually lost to its neighbours: schoolgirls'
# backpacks, 1.5-2.5 cells at 240x432, are lost from the first propagated frame; at 480x864,
# 6-10 cells, partly kept (docs/training-log.md, "Identity training, third stage").
SMALL_OBJECT_CELLS = 4.0
MAX_SCALE = 4  # the largest export (times the graphs' height and width) a note suggests


def _size_notes(probs: np.ndarray, ids: Iterable[int], m: Manifest) -> list[str]:
    """A line for each object too small for the memory read, which matches 16x16-pixel cells
    of the graphs' input: below SMALL_OBJECT_CELLS an object shares every cell with its
    neighbours and is usually taken by them from the next frame on. probs: (>= len(ids), h, w)
    at the graphs' size."""
    notes = []
    for plane, obj in zip(probs, ids):
        cells = float(plane.sum()) / (STRIDE * STRIDE)
        if cells == 0.0:
            notes.append(f"object {obj} covers no pixel at the graphs' {m.height}x{m.width} "
                         "resolution: it cannot be tracked")
        elif cells < SMALL_OBJECT_CELLS:
            k = math.ceil(math.sqrt(SMALL_OBJECT_CELLS / cells))
            fix = (f"it covers {cells * k * k:.0f} in graphs exported with to_onnx.py --size "
                   f"{k * m.height} {k * m.width}" if k <= MAX_SCALE else
                   f"it would need graphs more than {MAX_SCALE} times larger: mark it larger")
            notes.append(f"object {obj} covers {cells:.1f} of the {STRIDE}x{STRIDE}-pixel cells "
                         f"the memory is read at ({m.height}x{m.width} graphs): objects under "
                         f"{SMALL_OBJECT_CELLS:g} are usually lost to their neighbours; {fix}")
    return notes


FrameKind = Literal["first", "given", "propagated", "empty"]


class _Laps:
    """One frame's milliseconds per stage: calling it with a stage books the time since the
    previous call (or the start) to that stage."""

    def __init__(self) -> None:
        self.t0 = self._t = time.perf_counter()
        self.ms: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1e3
        self._t = now


@dataclass
class FrameRecord:
    """What run.json logs per frame. kind: the first segmented frame, a frame whose mask was
    given, a propagated one, or one before the first given mask (nothing ran)."""

    frame: int
    quality: list[float] | None  # raw QAM scores of the real objects; None: not a candidate
    # the decoder's confidence in each object's mask (runtime.core.quality; 1 for the given mask)
    confidence: list[float] | None
    score: float | None  # what the gate thresholds (runtime.core.quality.frame_score)
    decision: dict[str, Any] | None
    slots: dict[int, int]  # slot -> frame held, after this frame
    ms: dict[str, float] = field(default_factory=dict)
    kind: FrameKind = "propagated"

    @classmethod
    def empty(cls, frame: int) -> FrameRecord:
        return cls(frame, None, None, None, None, {}, {}, "empty")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["slots"] = {str(k): v for k, v in self.slots.items()}
        d["ms"] = {k: round(v, 3) for k, v in self.ms.items()}
        return d


class Segmenter:
    """Semi-supervised VOS on one video at a time: `start(frame, mask)`, then `step(frame)`.

    frame: (H0, W0, 3) uint8 RGB at any size; mask: (H0, W0) uint8 object ids (0 = background).
    Both return (H0, W0) uint8 object ids.
    """

    def __init__(self, engine_dir: str | Path, backend: str = "auto",
                 config: RuntimeConfig | None = None):
        manifest = Manifest.load(engine_dir)
        resolved = (config or RuntimeConfig()).resolve(manifest)
        self._setup(manifest, create_backend(backend, manifest, engine_dir, resolved), resolved)

    @classmethod
    def from_backend(cls, manifest: Manifest, backend: Backend,
                     config: RuntimeConfig | None = None) -> Segmenter:
        """A segmenter over an already built backend (e.g. the PyTorch reference)."""
        self = cls.__new__(cls)
        self._setup(manifest, backend, (config or RuntimeConfig()).resolve(manifest))
        return self

    def _setup(self, manifest: Manifest, backend: Backend, config: RuntimeConfig) -> None:
        self.manifest, self.backend, self.config = manifest, backend, config
        self.policy = MemoryPolicy(config.memory_size, config.mem_every,
                                   config.quality_threshold, first_slot=manifest.first_slot,
                                   temp_slot=manifest.temp_slot)
        n, h, w = manifest.max_objects, manifest.height, manifest.width
        self.object_ids: tuple[int, ...] = ()
        # QAM scores of each object's given mask: what its later scores are measured against
        self.first_scores = np.zeros(0, np.float32)
        self.frame_index = -1
        self.last_prob: np.ndarray | None = None  # (N+1, H, W) of the last frame
        self.last_record: FrameRecord | None = None
        self._prev_prob = np.zeros((n, h, w), np.float32)
        self._object_valid = np.zeros(n, np.float32)
        self._ended = False

    @property
    def first_score(self) -> float:
        """The paper's normaliser: the mean of the positive given-mask scores (NaN: none)."""
        positive = self.first_scores[self.first_scores > 0]
        return float(positive.mean()) if positive.size else math.nan

    # ----------------------------------------------------------------------------- frames
    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """The frame as the graphs take it, (1, H, W, 3) uint8. Stateless and thread-safe, so a
        pipeline can prepare the next frame while this one runs (pass it as `image=`)."""
        return self._placement(frame).image(frame)[None]

    def _placement(self, frame: np.ndarray) -> Placement:
        if frame.ndim != 3:
            raise InputError(f"frames must be (H, W, 3) uint8 RGB, got {frame.shape}")
        return self._placement_of(frame.shape[:2])

    def _placement_of(self, frame_shape: tuple[int, int]) -> Placement:
        m = self.manifest
        return Placement.of(frame_shape, (m.height, m.width), self.config.fit or DEFAULT_FIT)

    def start(self, frame: np.ndarray, mask: np.ndarray, *,
              image: np.ndarray | None = None, index: int = 0) -> np.ndarray:
        """First frame with its annotation; resets the memory. Returns the mask's ids.

        image: `prepare(frame)`, when already computed; index: the frame's number in the video
        (the memory's temporal order; frames before it are not segmented)."""
        lap = _Laps()
        m = self.manifest
        place = self._placement(frame)
        if index < 0:
            raise InputError(f"frame index {index}: expected >= 0")
        h0, w0 = frame.shape[:2]
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise MaskError(f"the first mask must be (H, W) object ids, got {mask.shape}")
        labels = fit_mask(mask.astype(np.uint8), h0, w0)
        ids = object_ids(labels)
        if not ids:
            raise MaskError("the first mask marks no object")
        m.check_object_count(len(ids))
        self._warn_aspect(place, (h0, w0))
        image = place.image(frame)[None] if image is None else image
        probs = place.masks(labels, ids, m.max_objects)
        self._warn_small(probs, ids)
        self.object_ids = ids
        self._object_valid[:] = 0.0
        self._object_valid[: len(ids)] = 1.0
        self.backend.bank.reset()
        decision = self.policy.start(index)
        lap("pre")
        self.backend.run("qam", {"image": image, "masks": probs})
        quality = self.backend.run("quality", fetch=("quality",))["quality"][: len(ids)]
        lap("qam")
        self.backend.bank.write(decision.slot)
        lap("bank")
        self.first_scores = np.array(quality, np.float32)
        if not (quality > 0).any():  # the official code drops zero (ReLU) scores here
            warnings.warn("the first frame's quality scores are all zero: no frame will be "
                          "accepted as a long-term memory", stacklevel=2)
        self._prev_prob = probs
        self.frame_index = index
        self._ended = False
        bg = 1.0 - probs[: len(ids)].sum(0, keepdims=True)
        self.last_prob = np.concatenate([bg, probs], 0)
        lap("post")
        self._record(decision, quality, 1.0, lap, np.ones(len(ids), np.float32), "first")
        return labels

    def _warn_aspect(self, place: Placement, frame_hw: tuple[int, int]) -> None:
        """Say how a video of another aspect ratio than the graphs' is handled, once."""
        if not (place.padded or place.distorts(frame_hw)):
            return
        m = self.manifest
        (h0, w0), (eh, ew) = frame_hw, export_size(frame_hw, (m.height, m.width))
        how = (f"letterboxed into {place.inner_w}x{place.inner_h} of the input (fit=letterbox)"
               if place.padded else "stretched (fit=stretch), which distorts the objects")
        warnings.warn(f"frames are {w0}x{h0}, the graphs {m.width}x{m.height}: {how}; graphs "
                      f"exported with `--size {eh} {ew}` would fit this video", stacklevel=3)

    def step(self, frame: np.ndarray, *, last: bool = False,
             image: np.ndarray | None = None, index: int | None = None) -> np.ndarray:
        """Segment the next frame. last=True skips memorising it (nothing follows it).

        image: `prepare(frame)`, when already computed; index: its number in the video when
        frames were skipped (default: the one after the last)."""
        index = self._next_index(index, "step")
        be = self.backend
        lap = _Laps()
        h0, w0 = frame.shape[:2]
        place = self._placement(frame)
        image = place.image(frame)[None] if image is None else image
        lap("pre")
        prob = self._propagate(image, lap)
        k = len(self.object_ids)
        probs = np.ascontiguousarray(prob[1:])
        probs[k:] = 0.0  # padded objects stay exactly empty, as on the first frame
        place.clear_padding(probs)  # and no object lives in a letterbox's bars
        self.frame_index = index
        decision, quality, confidence, score = None, None, None, None
        if last:
            self._ended = True
        else:
            # `image` is still in the backend's buffer from the encoder feed.
            candidate = self.policy.is_candidate(self.frame_index)
            be.next_qam_lasts(candidate)  # else it fills only the temporary slot
            try:
                be.run("qam", {"masks": probs})
            finally:  # a run that failed before using the hint leaves none behind
                be.next_qam_lasts(True)
            lap("qam")
            score = math.nan  # never used for a frame that is not a candidate
            if candidate:
                quality = be.run("quality", fetch=("quality",))["quality"][:k]
                confidence = mask_confidence(prob, k)
                scores = object_scores(quality, confidence, self.config.quality_score)
                score = frame_score(scores, self.first_scores, self.config.quality_score)
                lap("quality")
            decision = self.policy.decide(self.frame_index, score)
            be.bank.write(decision.slot)
            lap("bank")
        self._prev_prob = probs
        self.last_prob = prob
        labels = place.labels(prob, self.object_ids, h0, w0)
        lap("post")
        self._record(decision, quality, score, lap, confidence)
        return labels

    def size_notes(self, frame_shape: tuple[int, int], labels: np.ndarray) -> list[str]:
        """One line per object of `labels` (H, W ids at the frame's size) too small for the
        memory read at the graphs' size: what `start` and `reference` warn about, for a caller
        that shows it before (the app)."""
        ids = object_ids(labels)
        masks = self._placement_of(frame_shape).masks(labels, ids, len(ids))
        return _size_notes(masks, ids, self.manifest)

    def _warn_small(self, probs: np.ndarray, ids: Iterable[int]) -> None:
        for note in _size_notes(probs, ids, self.manifest):
            warnings.warn(note, stacklevel=3)

    def _next_index(self, index: int | None, what: str) -> int:
        if self.frame_index < 0:
            raise RuntimeError(f"Segmenter.{what}() before start()")
        if self._ended:
            raise RuntimeError("the video was ended with step(..., last=True); start() a new one")
        if index is None:
            return self.frame_index + 1
        if index <= self.frame_index:
            raise InputError(f"frame {index} is not after the last segmented frame "
                             f"{self.frame_index}")
        return index

    def _propagate(self, image: np.ndarray, lap: _Laps) -> np.ndarray:
        """encoder -> memory read -> decoder -> locality prior: (N+1, H, W) probabilities."""
        be = self.backend
        be.run("encoder", {"image": image, "prev_prob": self._prev_prob})
        lap("encoder")
        be.run("memory_read")
        lap("memory_read")
        prob = be.run("decoder", {"object_valid": self._object_valid}, fetch=("prob",))["prob"]
        lap("decoder")
        k = len(self.object_ids)
        # A new array, not the backend's output buffer (which a backend may reuse): the masks kept
        # as `_prev_prob` must survive the next frame's decoder run, which the prior follows.
        prob = np.concatenate([apply_locality(prob[: k + 1], self._prev_prob[:k],
                                              self.config.locality), prob[k + 1:]])
        lap("locality")
        return prob

    def reference(self, frame: np.ndarray, mask: np.ndarray, *,
                  objects: Iterable[int] | None = None, index: int | None = None,
                  image: np.ndarray | None = None, propagate: bool = True) -> np.ndarray:
        """A later frame whose mask is given (a correction, or objects that first appear here):
        the mask replaces the prediction for the ids it decides, `objects` (default: the ids in
        it; a listed id without pixels is absent here), and the frame is pinned in the memory as
        a reference (`MemoryPolicy.pin`). Objects it does not decide are propagated as usual
        (with propagate=False, e.g. replaying given frames before a re-propagation, they are
        absent) and lose the pixels the given objects take. An id not tracked before starts
        being tracked here. Returns the frame's labels; mask: (H0, W0) ids at the frame's size."""
        index = self._next_index(index, "reference")
        lap = _Laps()
        place = self._placement(frame)
        h0, w0 = frame.shape[:2]
        mask = np.asarray(mask)
        if mask.shape != (h0, w0):
            raise MaskError(f"the mask of frame {index} is {mask.shape[::-1]} but the frame is "
                            f"{w0}x{h0}: a given mask must have its frame's size")
        labels = mask.astype(np.uint8)
        present = object_ids(labels)
        decided = tuple(dict.fromkeys(present if objects is None else (int(o) for o in objects)))
        if stray := sorted(set(present) - set(decided)):
            raise MaskError(f"the mask of frame {index} has object ids {stray} that it was not "
                            f"given to decide ({list(decided)})")
        new = tuple(o for o in present if o not in self.object_ids)
        self.manifest.check_object_count(len(self.object_ids) + len(new),
                                         f"the video with the mask of frame {index}")
        image = place.image(frame)[None] if image is None else image
        lap("pre")
        kept = [i for i, o in enumerate(self.object_ids) if o not in decided]
        prob = self._propagate(image, lap) if kept and propagate else None
        ids = self.object_ids + new
        n = self.manifest.max_objects
        probs = place.masks(labels, ids, n)
        self._warn_small(probs[len(self.object_ids):], new)
        if prob is not None:
            free = np.clip(1.0 - probs.sum(0), 0.0, 1.0)  # what the given objects leave
            for i in kept:
                probs[i] = prob[i + 1] * free
        place.clear_padding(probs)
        self.object_ids = ids
        self._object_valid[: len(ids)] = 1.0
        self.backend.run("qam", {"image": image, "masks": probs})
        lap("qam")
        if new:  # a new object's given mask is its reference score
            quality = self.backend.run("quality", fetch=("quality",))["quality"][:len(ids)]
            self.first_scores = np.concatenate([self.first_scores,
                                                quality[len(self.first_scores):]])
            lap("quality")
        decision = self.policy.pin(index)
        self.backend.bank.write(decision.slot)
        lap("bank")
        k = len(ids)
        bg = np.clip(1.0 - probs[:k].sum(0, keepdims=True), 0.0, 1.0)
        self.last_prob = np.concatenate([bg, probs], 0)
        self._prev_prob = probs
        self.frame_index = index
        out = (place.labels(self.last_prob, ids, h0, w0) if prob is not None
               else np.zeros((h0, w0), np.uint8))
        out[np.isin(out, decided)] = 0
        out[labels > 0] = labels[labels > 0]
        lap("post")
        self._record(decision, None, 1.0, lap, np.ones(k, np.float32), "given")
        return out

    def segment(self, frames: Iterable[np.ndarray], mask: np.ndarray, *,
                finite: bool = False) -> Iterator[np.ndarray]:
        """Labels for every frame of `frames` (the first one annotated by `mask`).

        finite=True looks one frame ahead to skip memorising the last frame (as the official
        code); leave it False for live streams, where look-ahead would add a frame of latency.
        """
        it = iter(frames)
        try:
            first = next(it)
        except StopIteration:
            raise InputError("no frames to segment") from None
        yield self.start(first, mask)
        pairs = with_last(it) if finite else ((f, False) for f in it)
        for frame, is_last in pairs:
            yield self.step(frame, last=is_last)

    def _record(self, decision: Decision | None, quality: np.ndarray | None,
                score: float | None, lap: _Laps, confidence: np.ndarray | None,
                kind: FrameKind = "propagated") -> None:
        lap.ms["total"] = (time.perf_counter() - lap.t0) * 1e3
        self.last_record = FrameRecord(
            frame=self.frame_index,
            quality=None if quality is None else [round(float(q), 6) for q in quality],
            confidence=None if confidence is None else [round(float(c), 6) for c in confidence],
            score=None if score is None or not math.isfinite(score) else round(score, 6),
            decision=None if decision is None else decision.to_dict(),
            slots=self.policy.contents(),
            ms=lap.ms,
            kind=kind,
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RunTotals:
    """Running totals behind run.json's summary, so that a log need not keep every frame (a
    live source runs for ever)."""

    frames: int = 0
    steps: int = 0  # propagated frames, which the means and fps are over
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*STAGES, "total"), 0.0))
    insertions: int = 0
    evictions: int = 0

    def add(self, record: FrameRecord) -> None:
        self.frames += 1
        if record.decision and record.kind != "first":
            self.insertions += bool(record.decision["accepted"])
            self.evictions += record.decision["evicted"] is not None
        if record.kind != "propagated":
            return
        self.steps += 1
        for stage in self.ms:
            self.ms[stage] += record.ms.get(stage, 0.0)

    def summary(self) -> dict[str, Any]:
        """Frames, fps over the propagated frames, mean ms per stage, memory decisions."""
        total_s = self.ms["total"] / 1e3
        return {
            "frames": self.frames,
            "fps": round(self.steps / total_s, 3) if self.steps and total_s > 0 else None,
            "mean_ms": ({s: round(v / self.steps, 3) for s, v in self.ms.items()}
                        if self.steps else {}),
            "insertions": self.insertions,
            "evictions": self.evictions,
        }


def summarize(records: Iterable[FrameRecord]) -> dict[str, Any]:
    """run.json's summary of these frames (see RunTotals)."""
    totals = RunTotals()
    for r in records:
        totals.add(r)
    return totals.summary()
