"""The score the memory gate thresholds: how good a frame's masks are (QDMN Sec. 3.2, Eq. 3).

The paper scores each object's mask with the QAM head alone, and the gate keeps a frame when
its mean score over the first frame's is >= sigma. On held-out videos the shipped models' QAM
heads hardly rank their own masks (light model, 240x432, object-frames of the five validation
videos: Pearson 0.46 with the true IoU, negative inside `blackswan` and `cows`), so the gate let
in 91 % of the frames whose IoU was below 0.5. The decoder knows more: where it is unsure of an
object, the object's pixels get probabilities nearer 0.5, and where it lost the object it
assigns it no pixel at all. Its confidence in a mask, the mean probability over the pixels the
object wins, correlated at 0.82 with the IoU there (0.86 at 480x864), positively inside every
video.

So by default each object's QAM score is multiplied by that confidence ("qam*confidence"): the
head's judgement, discounted where the decoder itself hesitates. "qam" is the paper's score alone,
as the official code computes it.

The frame's score, what the gate thresholds (`frame_score`): the paper divides the mean of the
objects' scores by the mean of the first frame's. With many objects of different sizes that
mean collapses: the QAM head scores a small object's mask low even when it is the ground truth
(0.22-0.26 for the six other objects of DAVIS 2017's schoolgirls, three girls and three
backpacks, against 0.60 for the largest girl), so a frame's mean is ruled by which objects are
large, not by how good the masks are. By default ("qam*confidence") each object is measured
against its own reference, its score over its given mask's score capped at 1 (a predicted mask
is no better than the given one: a head that scores a poor mask of a small object above its
ground truth would otherwise let that one object carry the frame), and the frame's score is the
mean of those ratios; "qam" keeps the paper's normaliser.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.core.owners import owners

QUALITY_SCORES = ("qam*confidence", "qam")
DEFAULT_QUALITY_SCORE = "qam*confidence"


def mask_confidence(prob: np.ndarray, k: int) -> np.ndarray:
    """(k,) mean probability of each of the first k objects over the pixels it owns
    (runtime.core.owners; `prob` is (N+1, H, W) with background first); 0 for an object that
    owns none."""
    planes = prob[: k + 1]
    own = owners(planes)
    conf = np.zeros(k, np.float32)
    for i in range(1, k + 1):
        mine = own == i
        n = np.count_nonzero(mine)
        if n:
            conf[i - 1] = np.sum(planes[i], where=mine) / n
    return conf


def frame_score(scores: np.ndarray, reference: np.ndarray, mode: str) -> float:
    """The gate's score of a frame from its objects' scores (`object_scores`) and the QAM
    scores of their given masks (`reference`, same order): the mean of the per-object ratios,
    each capped at 1 (objects whose reference is 0 left out), or for mode "qam" the paper's
    mean over the mean of the positive references. NaN when no reference is positive."""
    positive = reference > 0
    if not positive.any():
        return math.nan
    if mode == "qam":
        return float(scores.mean() / reference[positive].mean())
    return float(np.mean(np.minimum(scores[positive] / reference[positive], 1.0)))


def object_scores(quality: np.ndarray, confidence: np.ndarray, mode: str) -> np.ndarray:
    """Per-object scores the gate averages: the QAM scores (k,), times the decoder's confidence
    in each mask (`mask_confidence`) unless mode is "qam"."""
    return quality if mode == "qam" else quality * confidence
