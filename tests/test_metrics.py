"""J&F metrics and the DAVIS reader: hand-computed cases, toolkit edge cases, real ground truth
(the demo clips, conftest.demo_root)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import ONE, TWO, demo_root
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evaluation.metrics import (
    EvaluationError,
    ObjectResult,
    bound_pixels,
    boundary_f,
    boundary_precision_recall,
    disk,
    evaluate_sequence,
    jaccard,
    seg2bmap,
    statistics,
    summarize,
)
from runtime.media.davis import (
    DatasetError,
    DavisLayout,
    list_sequences,
    read_sequence,
    write_labels,
)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


def ring(size: int, top: int, left: int, side: int) -> np.ndarray:
    """The 1-pixel outline of a side x side square."""
    return square(size, top, left, side) & ~square(size, top + 1, left + 1, side - 2)


# --- J ----------------------------------------------------------------------------------------


def test_jaccard_hand_computed_4x4():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1  # 4 px
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :3] = 1  # 6 px, contains gt
    assert float(jaccard(gt, pred)) == pytest.approx(4 / 6)
    pred2 = np.zeros((4, 4), np.uint8)
    pred2[1:3, 1:3] = 1  # overlaps gt in 1 px; union 7
    assert float(jaccard(gt, pred2)) == pytest.approx(1 / 7)


def test_jaccard_identical_disjoint_and_empty():
    a = square(8, 1, 1, 3)
    assert float(jaccard(a, a)) == 1.0
    assert float(jaccard(a, square(8, 5, 5, 3))) == 0.0
    empty = np.zeros_like(a)
    assert float(jaccard(empty, empty)) == 1.0  # empty union
    assert float(jaccard(a, empty)) == 0.0
    assert float(jaccard(empty, a)) == 0.0


def test_jaccard_per_frame_and_void():
    a = square(8, 1, 1, 3)
    stack_gt = np.stack([a, a, np.zeros_like(a)])
    stack_pred = np.stack([a, np.zeros_like(a), np.zeros_like(a)])
    np.testing.assert_array_equal(jaccard(stack_gt, stack_pred), [1.0, 0.0, 1.0])
    # Void pixels are ignored in both intersection and union.
    pred = a.copy()
    pred[6, 6] = True
    void = np.zeros_like(a)
    void[6, 6] = True
    assert float(jaccard(a, pred, void)) == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(EvaluationError):
        jaccard(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(EvaluationError):
        boundary_f(np.zeros((4, 4)), np.zeros((5, 4)))


# --- F ----------------------------------------------------------------------------------------


def test_disk_matches_skimage_shape():
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )
    assert disk(8).shape == (17, 17) and disk(8).sum() == 197
    # skimage builds the grid with arange(-r, r + 1): a half-integer radius gives an even kernel.
    assert disk(2.5).shape == (6, 6)


def test_bound_pixels():
    assert bound_pixels((480, 854)) == 8.0  # ceil(0.008 * 979.6)
    assert bound_pixels((10, 10)) == 1.0
    assert bound_pixels((480, 854), bound_th=3) == 3.0


def test_seg2bmap_square_is_offset_ring():
    # A square's boundary map is the outline of the square grown by one pixel up and left.
    np.testing.assert_array_equal(seg2bmap(square(10, 2, 2, 4)), ring(10, 1, 1, 5))
    # On the last row/column only east/south neighbours count; the corner is never set.
    full = np.ones((4, 4), bool)
    assert not seg2bmap(full).any()
    edge = np.zeros((4, 4), bool)
    edge[3, 3] = True
    expect = np.zeros((4, 4), bool)
    expect[3, 2] = expect[2, 3] = expect[2, 2] = True
    np.testing.assert_array_equal(seg2bmap(edge), expect)


def test_boundary_f_shifted_square_hand_computed():
    # 10x10 image: tolerance ceil(0.008 * 14.1) = 1 px, a 4-neighbour cross.
    # GT ring rows 1..5 x cols 1..5, prediction ring shifted right by 2 (cols 3..7). Of the 16
    # predicted boundary pixels, 10 lie within the cross of the GT ring: top and bottom rows
    # cols 3..6 (8) and the left column's ends (2); the symmetric count gives recall 10/16.
    gt = square(10, 2, 2, 4)
    pred = square(10, 2, 4, 4)
    p, r = boundary_precision_recall(gt, pred)
    assert (p, r) == (10 / 16, 10 / 16)
    assert float(boundary_f(gt, pred)) == pytest.approx(10 / 16)
    # With a 2-px tolerance (disk(2)) the right column (2 px away) and left middle match too.
    assert float(boundary_f(gt, pred, bound_th=2)) == 1.0


def test_boundary_f_empty_conventions():
    a = square(10, 2, 2, 4)
    empty = np.zeros_like(a)
    assert float(boundary_f(empty, empty)) == 1.0
    assert boundary_precision_recall(a, empty) == (1.0, 0.0)  # nothing predicted
    assert boundary_precision_recall(empty, a) == (0.0, 1.0)  # nothing to find
    assert float(boundary_f(a, empty)) == 0.0
    assert float(boundary_f(empty, a)) == 0.0
    assert float(boundary_f(a, a)) == 1.0
    assert float(boundary_f(a, square(10, 7, 7, 2))) == 0.0  # far apart: P = R = 0


# --- properties -------------------------------------------------------------------------------

masks = st.integers(2, 12).flatmap(
    lambda n: st.tuples(arrays(np.bool_, (n, n)), arrays(np.bool_, (n, n)))
)


@settings(max_examples=60, deadline=None)
@given(masks)
def test_jaccard_properties(pair):
    a, b = pair
    j = float(jaccard(a, b))
    assert 0.0 <= j <= 1.0
    assert j == float(jaccard(b, a))
    assert float(jaccard(a, a)) == 1.0
    assert (j == 1.0) == bool(np.array_equal(a, b))


@settings(max_examples=60, deadline=None)
@given(masks)
def test_boundary_f_properties(pair):
    a, b = pair
    f = float(boundary_f(a, b))
    assert 0.0 <= f <= 1.0
    assert f == pytest.approx(float(boundary_f(b, a)))
    assert float(boundary_f(a, a)) == 1.0


# --- statistics and aggregation ---------------------------------------------------------------


def test_statistics_hand_computed():
    # 4 frames: bins [0:2], [1:3], [2:3], [2:4] (the toolkit's rounding of linspace(1, 4, 5)).
    s = statistics(np.array([1.0, 0.8, 0.4, 0.2]))
    assert s.mean == pytest.approx(0.6)
    assert s.recall == pytest.approx(0.5)
    assert s.decay == pytest.approx(0.9 - 0.3)
    # NaN frames are skipped by mean, counted as failures by recall.
    s = statistics(np.array([1.0, np.nan, 1.0, 1.0]))
    assert (s.mean, s.recall) == (1.0, 0.75)
    assert all(math.isnan(x) for x in vars(statistics(np.zeros(0))).values())


def test_evaluate_sequence_drops_first_and_last():
    gt = np.zeros((5, 10, 10), np.uint8)
    gt[:, 1:4, 1:4] = 1
    gt[:, 6:9, 6:9] = 2
    pred = gt.copy()
    pred[0] = 0  # first and last frames are not scored
    pred[-1] = 2
    res = evaluate_sequence("toy", gt, pred)
    assert [r.name for r in res] == ["toy_1", "toy_2"]
    for r in res:
        assert r.j.shape == r.f.shape == (3,)
        assert r.jf_mean == 1.0
    pred[2] = 0  # object lost in the middle frame
    res = evaluate_sequence("toy", gt, pred)
    np.testing.assert_array_equal(res[0].j, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(res[1].f, [1.0, 0.0, 1.0])


def test_evaluate_sequence_rejects_unknown_ids_and_shapes():
    gt = np.zeros((3, 6, 6), np.uint8)
    gt[:, :2, :2] = 1
    with pytest.raises(EvaluationError, match="object id 2"):
        evaluate_sequence("toy", gt, gt * 2)
    with pytest.raises(EvaluationError):
        evaluate_sequence("toy", gt, gt[:2])


def test_summarize_weighs_objects():
    a = ObjectResult("a", 1, j=np.array([1.0, 1.0]), f=np.array([1.0, 1.0]))
    b = ObjectResult("b", 1, j=np.array([0.0, 0.0]), f=np.array([0.5, 0.5]))
    c = ObjectResult("b", 2, j=np.array([0.0, 0.0]), f=np.array([0.5, 0.5]))
    g = summarize([a, b, c])
    assert g.j_mean == pytest.approx(1 / 3)
    assert g.f_mean == pytest.approx(2 / 3)
    assert g.jf_mean == pytest.approx(0.5)
    assert g.j_recall == pytest.approx(1 / 3)
    assert g.f_recall == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    assert list(g.as_row()) == [
        "J&F-Mean",
        "J-Mean",
        "J-Recall",
        "J-Decay",
        "F-Mean",
        "F-Recall",
        "F-Decay",
    ]
    with pytest.raises(EvaluationError):
        summarize([])


# --- DAVIS reader -----------------------------------------------------------------------------


def test_read_sequence_layout(tmp_path):
    img_dir = tmp_path / "JPEGImages/480p/toy"
    ann_dir = tmp_path / "Annotations/480p/toy"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t in range(3):
        cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), np.zeros((6, 8, 3), np.uint8))
        lab = np.zeros((6, 8), np.uint8)
        lab[t : t + 2, :2] = 1
        lab[:, 6:] = 2
        write_labels(ann_dir / f"{t:05d}.png", lab)
    seq = read_sequence(tmp_path, "toy")
    assert [p.name for p in seq.frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert seq.labels.shape == (3, 6, 8) and seq.num_objects == 2
    assert list_sequences(tmp_path) == ["toy"]
    (ann_dir / "00002.png").unlink()
    with pytest.raises(DatasetError, match="annotated"):
        read_sequence(tmp_path, "toy")
    with pytest.raises(DatasetError):
        read_sequence(tmp_path, "missing")


def test_real_davis_ground_truth():
    """A demo clip (DAVIS layout) and its annotations."""
    root = demo_root()
    seq = read_sequence(root, ONE)
    assert seq.labels.shape == (50, 480, 854) and seq.num_objects == 1
    assert set(np.unique(seq.labels)) == {0, 1}
    assert list_sequences(root, DavisLayout(root).split_file("demo")) == [ONE,
                                                                          TWO]
    assert read_sequence(root, TWO).num_objects == 2

    (same,) = evaluate_sequence(ONE, seq.labels, seq.labels)
    assert same.j.shape == (48,)
    assert same.j_stats.mean == 1.0 and same.f_stats.mean == 1.0

    # Grow every mask by 3 px: the region loses a lot of IoU, but the boundary moves less than
    # the 8-px tolerance so F stays close to 1.
    kernel = np.ones((7, 7), np.uint8)
    grown = np.stack([cv2.dilate(lab, kernel) for lab in seq.labels])
    (res,) = evaluate_sequence(ONE, seq.labels, grown)
    assert res.j_stats.mean < 0.95
    assert res.f_stats.mean > 0.97
    assert res.jf_mean < 1.0
