"""Validation on held-out videos: J&F with one and two objects, and whether QAM scores track
the real mask quality.

The held-out sequences give the single-object videos; two-object videos are built from them
the two ways training builds multi-object clips (side by side, and one sequence's object pasted,
moving, onto another's frames), so the multi-object number is about unseen objects too.

    python -m training.validation --data ../shared/data/DAVIS2016 --write runs/val-videos
writes them in the DAVIS layout for `benchmarks/evaluate.py --data runs/val-videos` (runtime).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.datasets import side_by_side, write_clip
from evaluation.metrics import evaluate_sequence, jaccard
from runtime.cli import path_arg
from runtime.core.manifest import STRIDE
from runtime.core.memory_policy import DEFAULT_QUALITY_THRESHOLD
from runtime.core.quality import (
    DEFAULT_QUALITY_SCORE,
    frame_score,
    mask_confidence,
    object_scores,
)
from runtime.media.davis import RESOLUTION, DavisLayout
from training.copy_paste import Cutout, paste
from training.data import VOID, load_sequence
from training.data import Sequence as ValVideo  # one video held in memory
from training.model import QDMN, key_affinity, normalize_uint8

DEFAULT_NAMES = ("blackswan", "cows", "libby")
GATE_SIGMA = DEFAULT_QUALITY_THRESHOLD  # the paper's memory threshold, the runtime default


def read_video(root: Path, name: str) -> ValVideo:
    """A held-out single-object sequence as stored, its object as id 1."""
    seq = load_sequence(root, name)
    return ValVideo(name, seq.frames, (seq.labels > 0).astype(np.uint8))


def side_by_side_video(a: ValVideo, b: ValVideo) -> ValVideo:
    """a's object (1) on the left half, b's (2) on the right (evaluation.datasets.side_by_side)."""
    frames, labels = side_by_side((a.frames, a.labels), (b.frames, b.labels))
    return ValVideo(f"{a.name}+{b.name}", frames, labels)


def pasted_video(background: ValVideo, donor: ValVideo, scale: float = 0.6) -> ValVideo:
    """donor's object (2) cut out per frame and pasted in front of background's (1), drifting
    across the frame from left to right, so it passes over the other object and the scene."""
    t = min(len(background.frames), len(donor.frames))
    frames = [f.copy() for f in background.frames[:t]]
    labels = [lb.copy() for lb in background.labels[:t]]
    h, w = labels[0].shape
    for i in range(t):
        cut = Cutout.from_clip([donor.frames[i]], [donor.labels[i]], 1)
        if cut is None:
            continue
        cut = cut.scaled(scale)
        ph, pw = cut.masks[0].shape
        x = round((w - pw) * (0.1 + 0.8 * i / max(t - 1, 1)))
        y = round(0.55 * (h - ph))
        paste(frames[i:i + 1], labels[i:i + 1], cut, 2, [(y, x)], in_front=True)
    return ValVideo(f"{background.name}*{donor.name}", np.stack(frames), np.stack(labels))


def load_val_videos(root: str | Path, names: Sequence[str] = DEFAULT_NAMES,
                    many_root: str | Path | None = None, many: Sequence[str] = (),
                    many_resolution: str = RESOLUTION) -> list[ValVideo]:
    """The single-object videos, two two-object videos built from them, then the many-object
    videos `many` of the DAVIS-2017-layout `many_root`, as stored."""
    singles = [read_video(Path(root), n) for n in names]
    pairs = []
    if len(singles) >= 3:
        pairs = [side_by_side_video(singles[1], singles[2]), pasted_video(singles[0], singles[2])]
    crowds = [load_sequence(Path(many_root), n, resolution=many_resolution)
              for n in many] if many_root else []
    return singles + pairs + crowds


def write_davis(videos: Sequence[ValVideo], root: str | Path) -> Path:
    """Write videos in the DAVIS layout (JPEG frames, palette PNG masks, ImageSets/val.txt)."""
    layout = DavisLayout(root)
    for v in videos:
        write_clip(layout, v.name, list(v.frames), list(v.labels), quality=95)
    layout.split_file("val").parent.mkdir(exist_ok=True)
    layout.split_file("val").write_text("".join(f"{v.name}\n" for v in videos))
    return layout.root


# ---------------------------------------------------------------- scoring


@dataclass
class QualityStats:
    """Quality scores against the true IoU of the model's own masks, over validation frames:
    the QAM head's, and the gate's (runtime.core.quality: by default QAM x the decoder's confidence)."""

    pearson: float  # the QAM score, pooled over all object-frames
    pearson_within: float  # the QAM score, mean of the per-video correlations
    pearson_score: float  # the gate's per-object score, pooled over all object-frames
    pearson_gate: float  # per frame, the gate's final score (runtime.core.quality.frame_score,
    # what it thresholds) against the mean IoU, pooled over videos
    reject_bad: float  # share of frames with IoU < 0.5 the gate rejects
    accept_good: float  # share of frames with IoU > 0.8 the gate accepts
    n_frames: int
    mode: str = DEFAULT_QUALITY_SCORE  # the gate's score (runtime.core.quality.QUALITY_SCORES)
    # (IoU, QAM score, the gate's score) per object-frame
    points: list[tuple[float, float, float]] = field(default_factory=list)
    # (mean IoU, the gate's final score) per frame: what it thresholds at sigma
    gate_points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class ValReport:
    jf: dict[str, float]  # per video
    jf_single: float  # objects of the one-object videos
    jf_multi: float  # objects of the two-object videos
    quality: QualityStats | None
    jf_many: float = float("nan")  # objects of the videos with three or more
    switches: dict[str, float] = field(default_factory=dict)  # per multi-object video

    @property
    def jf_all(self) -> float:
        """What the best checkpoint is chosen by: the mean of the one-, two- and many-object
        J&F that were measured."""
        parts = [x for x in (self.jf_single, self.jf_multi, self.jf_many) if np.isfinite(x)]
        return float(np.mean(parts)) if parts else float("nan")

    @property
    def switch_rate(self) -> float:
        """Identity switches (`identity_switches`) over the multi-object videos' frames."""
        return float(np.mean(list(self.switches.values()))) if self.switches else float("nan")


SWITCH_SHARE = 0.5  # a mask with more than this share on another object's truth has switched
SWITCH_MIN_PIXELS = 16  # masks smaller than this are too small to say whose they are


def identity_switches(truth: np.ndarray, pred: np.ndarray) -> float:
    """Share of object-frames (after the first, objects with a predicted mask) whose predicted
    mask lies mostly (> SWITCH_SHARE) on another object's ground truth: the object's id has
    jumped to its neighbour. truth, pred: (T, H, W) ids."""
    ids = [int(i) for i in np.unique(truth) if i not in (0, VOID)]
    n = max(ids, default=0)
    switched = counted = 0
    for t in range(1, len(truth)):
        for i in ids:
            mine = pred[t] == i
            area = np.count_nonzero(mine)
            if area < SWITCH_MIN_PIXELS:
                continue
            on = np.bincount(truth[t][mine].ravel(), minlength=256)[: n + 1]
            on[[0, i]] = 0
            counted += 1
            switched += int(on.max() > SWITCH_SHARE * area)
    return switched / counted if counted else 0.0


@torch.inference_mode()
def frame_scores(model: QDMN, frame: np.ndarray, labels: np.ndarray, n: int,
                 size: tuple[int, int]) -> np.ndarray:
    """QAM scores (n,) of the masks in `labels` (ids 1..n) on `frame`, at the model's size."""
    device = next(model.parameters()).device
    onehot = np.stack([(labels == i + 1) for i in range(n)]).astype(np.float32)
    masks = F.interpolate(torch.from_numpy(onehot)[None].to(device), size=size, mode="bilinear",
                          align_corners=False)
    _, _, q = model.encode_memory(model_image(frame, size).to(device), masks)
    return q[0].cpu().numpy()


def model_image(frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) normalised at size=(h, w), as the runtime resizes."""
    resized = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return normalize_uint8(torch.from_numpy(resized)[None])


def quality_stats(model: QDMN, videos: Sequence[ValVideo], preds: Sequence[np.ndarray],
                  confidences: Sequence[np.ndarray], size: tuple[int, int],
                  sigma: float = GATE_SIGMA, mode: str = DEFAULT_QUALITY_SCORE) -> QualityStats:
    """Scores of every frame's predicted masks vs their IoU. confidences: per video (T, n), the
    decoder's confidence in each mask (`run_video`). The gate is the runtime's:
    runtime.core.quality.frame_score of the objects' scores (`mode`) >= sigma."""
    points, gate, within = [], [], []
    for v, pred, conf in zip(videos, preds, confidences):
        n = v.num_objects
        first = frame_scores(model, v.frames[0], v.labels[0], n, size)
        video_points = []
        for t in range(1, len(v.frames)):
            q = frame_scores(model, v.frames[t], pred[t], n, size)
            scores = object_scores(q, conf[t], mode)
            ious = [float(jaccard(v.labels[t] == i + 1, pred[t] == i + 1)) for i in range(n)]
            video_points += [(iou, float(a), float(b)) for iou, a, b in zip(ious, q, scores)]
            score = frame_score(scores, first, mode)
            gate.append((float(np.mean(ious)), score if np.isfinite(score) else 0.0))
        points += video_points
        within.append(_pearson([p[:2] for p in video_points]))
    bad = [score >= sigma for iou, score in gate if iou < 0.5]
    good = [score >= sigma for iou, score in gate if iou > 0.8]
    finite = [r for r in within if np.isfinite(r)]
    return QualityStats(_pearson([p[:2] for p in points]),
                        float(np.mean(finite)) if finite else float("nan"),
                        _pearson([(p[0], p[2]) for p in points]), _pearson(gate),
                        float(np.mean([not a for a in bad])) if bad else float("nan"),
                        float(np.mean(good)) if good else float("nan"), len(gate), mode, points,
                        gate)


def _pearson(points: Sequence[tuple[float, float]]) -> float:
    """Correlation of IoU and score; NaN when either is constant (nothing to rank)."""
    arr = np.array(points, dtype=np.float64).reshape(-1, 2)
    if len(arr) < 3 or arr[:, 0].std() < 1e-9 or arr[:, 1].std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(arr[:, 0], arr[:, 1])[0, 1])


def run_video(segmenter: object, video: ValVideo) -> tuple[np.ndarray, np.ndarray]:
    """The segmenter's label maps of every frame, and (T, n) the decoder's confidence in each
    object's mask (runtime.core.quality; 1 for the given first mask)."""
    preds = np.zeros_like(video.labels)
    conf = np.ones((len(video.frames), video.num_objects), np.float32)
    preds[0] = segmenter.start(video.frames[0], video.labels[0])  # type: ignore[attr-defined]
    for t in range(1, len(video.frames)):
        preds[t] = segmenter.step(video.frames[t],  # type: ignore[attr-defined]
                                  last=t == len(video.frames) - 1)
        conf[t] = mask_confidence(segmenter.last_prob,  # type: ignore[attr-defined]
                                  video.num_objects)
    return preds, conf


def validate(model: QDMN, videos: Sequence[ValVideo], size: tuple[int, int],
             segmenter_factory: Callable[[], object], *, with_quality: bool = True,
             progress: bool = False) -> tuple[ValReport, list[np.ndarray]]:
    """J&F per video (DAVIS toolkit rules) + QAM statistics of the model on `videos`."""
    jf, switches, preds, confidences = {}, {}, [], []
    by_count: dict[str, list[float]] = {"single": [], "multi": [], "many": []}
    mode = DEFAULT_QUALITY_SCORE
    for v in tqdm(videos, desc="validate", leave=False, disable=not progress):
        segmenter = segmenter_factory()
        pred, conf = run_video(segmenter, v)
        mode = segmenter.config.quality_score or mode  # type: ignore[attr-defined]
        preds.append(pred)
        confidences.append(conf)
        objs = evaluate_sequence(v.name, v.labels, pred)
        jf[v.name] = float(np.mean([o.jf_mean for o in objs]))
        kind = "single" if v.num_objects == 1 else "multi" if v.num_objects == 2 else "many"
        by_count[kind].extend(o.jf_mean for o in objs)
        if v.num_objects > 1:
            switches[v.name] = identity_switches(v.labels, pred)
    quality = (quality_stats(model, videos, preds, confidences, size, mode=mode)
               if with_quality else None)
    mean = {k: float(np.mean(x)) if x else float("nan") for k, x in by_count.items()}
    report = ValReport(jf, mean["single"], mean["multi"], quality, mean["many"], switches)
    return report, preds


@torch.inference_mode()
def key_match_shares(model: QDMN, video: ValVideo, size: tuple[int, int], frames: tuple[int, ...],
                     k: int) -> list[dict[str, float]]:
    """Do the memory keys match? For each object's query cells in `frames`, the share of their
    top-k memory positions (frame 0, ground-truth masks) by key affinity that lie on the same
    object, with chance (the object's share of all memory cells). One row per (frame, object).
    Near chance, the read returns an average of the memory whatever the object."""
    n = video.num_objects
    cells = (size[0] // STRIDE, size[1] // STRIDE)

    def onehot(t: int) -> torch.Tensor:
        lab = cv2.resize(video.labels[t], (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return torch.from_numpy(np.stack([lab == i + 1 for i in range(n)]).astype(np.float32))[None]

    def cell_labels(t: int) -> np.ndarray:
        return cv2.resize(video.labels[t], (cells[1], cells[0]),
                          interpolation=cv2.INTER_NEAREST).reshape(-1)

    mem_key = model.memory_kv(model_image(video.frames[0], size), onehot(0))[0][0]  # (N, CK, h, w)
    first = cell_labels(0)
    rows = []
    for t in (t for t in frames if t < len(video.frames)):
        query_key = model.encode_query(model_image(video.frames[t], size),
                                       onehot(t - 1))[0].flatten(2)  # (1, CK, hw)
        here = cell_labels(t)
        for obj in range(n):
            affinity = key_affinity(query_key, mem_key[obj].flatten(1)[None])[0]  # (hw, hw)
            top = affinity.topk(k, dim=1).indices.numpy()
            picked = first[top[here == obj + 1]]
            if picked.size:
                rows.append({"frame": t, "object": obj + 1,
                             "share": round(float((picked == obj + 1).mean()), 3),
                             "chance": round(float((first == obj + 1).mean()), 3)})
    return rows


def write_quality_points(stats: QualityStats, path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iou", "qam", "score"])
        w.writerows([round(x, 5) for x in p] for p in stats.points)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the validation videos in the DAVIS layout.")
    ap.add_argument("--data", required=True, type=path_arg, help="DAVIS-2016 root")
    ap.add_argument("--write", required=True, type=path_arg, help="output root")
    ap.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES))
    args = ap.parse_args(argv)
    write_davis(load_val_videos(args.data, args.names), args.write)
    print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
