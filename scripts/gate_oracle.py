"""How much does the memory gate matter? (dev tool, needs DAVIS-2016): validation J&F with the
QAM score replaced by the truth, against the shipped score.

    python scripts/gate_oracle.py models/qdmn-light.pth --data ../shared/data/DAVIS2016 \
        --out models/report/gate_oracle.json

Runs the held-out validation videos (`training.validation`) through the PyTorch reference with
runtime defaults once per gate below (the model's score, a perfect score,
accept all, reject all) and prints J&F and the frames memorised. If the four agree, no quality
score, however good, changes J&F on these videos.

The memory gate against a perfect one: the reference segmenter with the QAM score of each
candidate frame replaced by the truth (below).

Gates: `model` (the model's own score as the runtime computes it, what ships: by default the
QAM score times the decoder's confidence, runtime.core.quality); `oracle` (a candidate's score is the true IoU
of its masks, mean over objects, and the first frame's is 1: the gate keeps exactly the frames
whose masks are at least sigma good, what a perfect QAM would do); `accept_all` / `reject_all`
(every candidate enters the long-term memory / none does: it then holds the first frame and
the previous frame only).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from evaluation.metrics import jaccard
from runtime.cli import path_arg
from runtime.core.geometry import DEFAULT_FIT, Placement
from runtime.core.locality import object_owners
from training.checkpoint import load_model
from training.model import QDMN
from training.reference import ReferenceSegmenter
from training.validation import ValVideo, load_val_videos, validate

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
            seg.first_scores[:] = 1.0  # the given mask's IoU with itself
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
        pred = object_owners(masks[:k])
        iou = [float(jaccard(truth[i], pred == i + 1)) for i in range(k)]
        return np.array(iou + [0.0] * (n - k), np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--data", required=True, type=path_arg, help="DAVIS-2016 root")
    ap.add_argument("--out", type=path_arg, help="write the results here (JSON)")
    ap.add_argument("--size", type=int, nargs=2, default=(240, 432), metavar=("H", "W"))
    ap.add_argument("--sigma", type=float, default=None,
                    help="the gate's threshold (default: the runtime's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, _ = load_model(args.checkpoint)
    videos = load_val_videos(args.data)
    size = tuple(args.size)
    result: dict[str, Any] = {"checkpoint": args.checkpoint.name, "size": list(size),
                              "sigma": args.sigma}
    for gate in GATES:
        segs = [GatedReference(model, v, gate, size=size, quality_threshold=args.sigma)
                for v in videos]
        order = iter(segs)  # validate asks for one segmenter per video, in the videos' order
        report, _ = validate(model, videos, size, order.__next__, with_quality=False)
        inserted = {v.name: s.insertions for v, s in zip(videos, segs)}
        jf = {name: round(value, 4) for name, value in report.jf.items()}
        result[gate] = {"jf_single": round(report.jf_single, 4),
                        "jf_multi": round(report.jf_multi, 4), "per_video": jf,
                        "insertions": inserted}
        print(f"{gate:>10}: one object {report.jf_single:.3f}, two objects "
              f"{report.jf_multi:.3f}  {jf}, insertions {inserted}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
