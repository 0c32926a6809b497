"""The memory gate against a perfect one: the reference segmenter with the QAM score of each
candidate frame replaced by the truth (`scripts/gate_oracle.py` runs it on validation videos).

Gates: `model` (the model's own score as the runtime computes it, what ships: by default the
QAM score times the decoder's confidence, runtime.quality); `oracle` (a candidate's score is the true IoU
of its masks, mean over objects, and the first frame's is 1: the gate keeps exactly the frames
whose masks are at least sigma good, what a perfect QAM would do); `accept_all` / `reject_all`
(every candidate enters the long-term memory / none does: it then holds the first frame and
the previous frame only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.metrics import jaccard
from runtime.geometry import DEFAULT_FIT, Placement
from runtime.locality import owners
from training.model import QDMN
from training.reference import ReferenceSegmenter
from training.validation import ValVideo

GATES = ("model", "oracle", "accept_all", "reject_all")


class _ScoredBackend:
    """The reference backend with the `quality` graph's output replaced by `score(masks)`."""

    def __init__(self, backend: Any, score: Callable[[np.ndarray], np.ndarray]):
        self._backend, self._score, self._masks = backend, score, None

    def run(self, graph: str, feeds: Mapping[str, np.ndarray] | None = None,
            fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if graph == "qam" and feeds is not None and "masks" in feeds:
            self._masks = feeds["masks"].copy()
        if graph == "quality":
            return {"quality": self._score(self._masks)}
        return self._backend.run(graph, feeds, fetch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class GatedReference(ReferenceSegmenter):
    """The reference on one video, its candidates scored by `gate` instead of the QAM."""

    def __init__(self, model: QDMN, video: ValVideo, gate: str, **kwargs: Any):
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}: choose one of {', '.join(GATES)}")
        if gate != "model":  # the replaced score is the whole score, not discounted further
            kwargs["quality_score"] = "qam"
        super().__init__(model, **kwargs)
        self.video, self.gate = video, gate
        self.insertions = 0  # frames the gate let into the long-term memory

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        labels = super().start(frame, mask)
        seg = self.segmenter
        assert seg is not None
        if self.gate != "model":
            if not isinstance(seg.backend, _ScoredBackend):
                seg.backend = _ScoredBackend(seg.backend, self._score)
            seg.first_score = 1.0  # the given mask's IoU with itself
        return labels

    def step(self, frame: np.ndarray, *, last: bool = False) -> np.ndarray:
        labels = super().step(frame, last=last)
        decision = self.last_record.decision
        self.insertions += bool(decision and decision["accepted"])
        return labels

    def _score(self, masks: np.ndarray) -> np.ndarray:
        seg = self.segmenter
        assert seg is not None
        n, k = masks.shape[0], len(seg.object_ids)
        if self.gate in ("accept_all", "reject_all"):
            return np.full(n, 1.0 if self.gate == "accept_all" else 0.0, np.float32)
        t, m = seg.frame_index, seg.manifest
        # the truth placed into the graphs' size as the frame was (resized or letterboxed)
        place = Placement.of(self.video.frames[t].shape[:2], (m.height, m.width),
                             seg.config.fit or DEFAULT_FIT)
        truth = place.masks(self.video.labels[t], seg.object_ids, n) > 0.5
        pred = owners(masks[:k])
        iou = [float(jaccard(truth[i], pred == i + 1)) for i in range(k)]
        return np.array(iou + [0.0] * (n - k), np.float32)
