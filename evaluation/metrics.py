"""J&F for semi-supervised VOS, with the semantics of the official DAVIS 2017 toolkit.

Re-implemented (numpy + OpenCV only) so that numbers are comparable with published results:

- J: region IoU; an empty union scores 1.
- F: boundary F-measure. Boundaries come from `seg2bmap` (1-pixel maps offset half a pixel
  towards the origin); a boundary pixel matches if it lies within `bound_pix =
  ceil(bound_th * image diagonal)` of the other boundary (8 px at 854x480), tested by dilating
  with the same disk as `skimage.morphology.disk`. Precision/recall edge cases as the toolkit:
  no predicted boundary -> P=1, R=0; no GT boundary -> P=0, R=1; neither -> P=R=1.
- Per object and sequence: the first and last frames are dropped (the first is given, the last
  is not annotated in the test sets), then mean, recall (fraction of frames > 0.5) and decay
  (mean of the first quarter minus mean of the last quarter) over the remaining frames.
- Global: means over all objects of all sequences (objects, not sequences, are the unit);
  J&F = (J-Mean + F-Mean) / 2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

BOUND_TH = 0.008


class EvaluationError(ValueError):
    """Predictions and ground truth cannot be compared (shape, length or object ids)."""


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J; per frame when given a stack.

    gt, pred, void: (H,W) or (T,H,W), any dtype, nonzero = inside.
    Returns a 0-d array for one frame, else (T,) float64.
    """
    gt, pred = _as_bool_pair(gt, pred)
    keep = np.ones_like(gt) if void is None else ~_checked_bool(void, gt.shape, "void")
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    return np.where(union == 0, 1.0, j)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary map of a binary mask, as in the BSDS/DAVIS toolkits.

    A pixel is on the boundary if it differs from its east, south or south-east neighbour,
    i.e. boundaries sit half a pixel towards the origin. On the last row only the east
    neighbour counts, on the last column only the south one; the corner pixel is never set.
    seg: (H,W), nonzero = inside. Returns (H,W) bool.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise EvaluationError(f"seg2bmap expects a 2-D mask, got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: float) -> np.ndarray:
    """The structuring element of `skimage.morphology.disk(radius)` (uint8 0/1).

    Built from `arange(-r, r + 1)` exactly as skimage does, so a non-integer radius gives the
    same (possibly even-sized) kernel. cv2's MORPH_ELLIPSE is a different shape: not used.
    """
    coords = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(coords, coords)
    return (x**2 + y**2 <= radius**2).astype(np.uint8)


def bound_pixels(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Boundary tolerance in pixels: `bound_th` itself if >= 1, else a fraction of the diagonal."""
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f(
    gt: np.ndarray,
    pred: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
) -> np.ndarray:
    """Boundary F-measure; per frame when given a stack.

    gt, pred, void: (H,W) or (T,H,W), nonzero = inside.
    Returns a 0-d array for one frame, else (T,) float64.
    """
    gt, pred = _as_bool_pair(gt, pred)
    if void is not None:
        void = _checked_bool(void, gt.shape, "void")
    if gt.ndim == 2:
        return np.asarray(_f_frame(gt, pred, void, bound_th), dtype=np.float64)
    return np.array(
        [
            _f_frame(gt[t], pred[t], None if void is None else void[t], bound_th)
            for t in range(gt.shape[0])
        ],
        dtype=np.float64,
    )


def boundary_precision_recall(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH
) -> tuple[float, float]:
    """Boundary precision and recall of one frame, with the toolkit's empty-boundary cases.

    gt, pred: (H,W) bool.
    """
    kernel = disk(bound_pixels(gt.shape, bound_th))
    gt_b = seg2bmap(gt)
    pred_b = seg2bmap(pred)
    n_pred = int(pred_b.sum())
    n_gt = int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_pred == 0:
        return 1.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    return float(precision), float(recall)


def _f_frame(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, bound_th: float) -> float:
    if void is not None:
        gt = gt & ~void
        pred = pred & ~void
    p, r = boundary_precision_recall(gt, pred, bound_th)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclass(frozen=True)
class Statistics:
    """Mean, recall (fraction of frames > 0.5) and decay of one per-frame curve."""

    mean: float
    recall: float
    decay: float


def statistics(per_frame: np.ndarray) -> Statistics:
    """The toolkit's `db_statistics`: NaN-aware mean, recall, and decay over 4 bins.

    per_frame: (T,) float. Decay = mean(first bin) - mean(last bin), bins split at
    round(linspace(1, T, 5)) - 1 with both ends included (neighbouring bins share a frame).
    The toolkit stores those indices as uint8, which wraps above 255 frames; we do not.
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    if v.size == 0:
        nan = float("nan")
        return Statistics(nan, nan, nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
        bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return Statistics(mean, recall, decay)


@dataclass(frozen=True)
class ObjectResult:
    """Per-frame J and F of one object in one sequence (first/last frames already dropped)."""

    sequence: str
    object_id: int
    j: np.ndarray  # (T',) float64
    f: np.ndarray  # (T',) float64

    @property
    def name(self) -> str:
        """The toolkit's row name, e.g. `blackswan_1`."""
        return f"{self.sequence}_{self.object_id}"

    @property
    def j_stats(self) -> Statistics:
        return statistics(self.j)

    @property
    def f_stats(self) -> Statistics:
        return statistics(self.f)

    @property
    def jf_mean(self) -> float:
        return (self.j_stats.mean + self.f_stats.mean) / 2


def evaluate_sequence(
    sequence: str,
    gt_labels: np.ndarray | Sequence[np.ndarray],
    pred_labels: np.ndarray | Sequence[np.ndarray],
    *,
    drop_first_last: bool = True,
    bound_th: float = BOUND_TH,
) -> list[ObjectResult]:
    """J and F of every object of one sequence, as the semi-supervised toolkit scores it.

    The objects are 1..max(gt_labels[0]) (the ids of the first-frame annotation). A predicted
    id outside 0..that maximum is rejected, as the toolkit rejects it.
    gt_labels, pred_labels: (T,H,W) integer label maps, 0 = background.
    """
    gt = np.asarray(gt_labels)
    pred = np.asarray(pred_labels)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise EvaluationError(
            f"{sequence}: ground truth {gt.shape} and prediction {pred.shape} must both be "
            "(T,H,W) with equal shapes"
        )
    num_objects = int(gt[0].max()) if gt.shape[0] else 0
    pred_max = int(pred.max()) if pred.size else 0
    if pred.min(initial=0) < 0 or pred_max > num_objects:
        raise EvaluationError(
            f"{sequence}: predicted object id {pred_max} but the first frame has "
            f"{num_objects} objects"
        )
    if drop_first_last:
        gt, pred = gt[1:-1], pred[1:-1]
    results = []
    for k in range(1, num_objects + 1):
        g, p = gt == k, pred == k
        results.append(
            ObjectResult(
                sequence=sequence,
                object_id=k,
                j=np.atleast_1d(jaccard(g, p)).astype(np.float64) if len(g) else np.zeros(0),
                f=boundary_f(g, p, bound_th=bound_th) if len(g) else np.zeros(0),
            )
        )
    return results


@dataclass(frozen=True)
class GlobalResult:
    """The toolkit's global row: means over all objects of all sequences."""

    jf_mean: float
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    def as_row(self) -> dict[str, float]:
        """Keyed by the toolkit's column names (`J&F-Mean`, `J-Mean`, ...)."""
        return {
            "J&F-Mean": self.jf_mean,
            "J-Mean": self.j_mean,
            "J-Recall": self.j_recall,
            "J-Decay": self.j_decay,
            "F-Mean": self.f_mean,
            "F-Recall": self.f_recall,
            "F-Decay": self.f_decay,
        }


def summarize(results: Sequence[ObjectResult]) -> GlobalResult:
    """Global J&F over objects (each object of each sequence weighs the same)."""
    if not results:
        raise EvaluationError("no objects to summarize")
    js = [r.j_stats for r in results]
    fs = [r.f_stats for r in results]
    j_mean = float(np.mean([s.mean for s in js]))
    f_mean = float(np.mean([s.mean for s in fs]))
    return GlobalResult(
        jf_mean=(j_mean + f_mean) / 2,
        j_mean=j_mean,
        j_recall=float(np.mean([s.recall for s in js])),
        j_decay=float(np.mean([s.decay for s in js])),
        f_mean=f_mean,
        f_recall=float(np.mean([s.recall for s in fs])),
        f_decay=float(np.mean([s.decay for s in fs])),
    )


def _as_bool_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise EvaluationError(f"ground truth {gt.shape} and prediction {pred.shape} differ")
    if gt.ndim not in (2, 3):
        raise EvaluationError(f"masks must be (H,W) or (T,H,W), got {gt.shape}")
    return gt.astype(bool), pred.astype(bool)


def _checked_bool(a: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != shape:
        raise EvaluationError(f"{what} {a.shape} does not match the masks {shape}")
    return a.astype(bool)
