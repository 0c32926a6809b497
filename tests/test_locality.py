"""The per-object locality prior (runtime.core.locality): unit and property tests, no backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.config import RuntimeConfig
from runtime.core.errors import RuntimeConfigError
from runtime.core.locality import (
    DEFAULT_LOCALITY,
    GRID,
    MIN_SIGMA,
    WINDOW_FLOOR,
    apply_locality,
    locality_window,
    object_owners,
)


def onehot(labels: np.ndarray, k: int) -> np.ndarray:
    """(k, H, W) float32 probabilities of a label map, as the segmenter keeps the last frame's."""
    return np.stack([labels == i for i in range(1, k + 1)]).astype(np.float32)


def disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_window_is_one_on_the_mask_and_falls_off_with_distance() -> None:
    mask = disc(200, 600, 100, 100, 40)
    w = locality_window(mask, 0.5)
    assert w is not None and w.dtype == np.float32
    assert np.all(w[mask] == 1.0)
    row = w[100, 141:]  # to the right of the disc, moving away
    assert np.all(np.diff(row) <= 1e-6) and row[0] > 0.9
    assert w.min() >= WINDOW_FLOOR and w[100, -1] == pytest.approx(WINDOW_FLOOR, abs=1e-3)
    sigma = 0.5 * np.sqrt(mask.sum())  # about 35 px, above MIN_SIGMA
    assert sigma > MIN_SIGMA
    expected = WINDOW_FLOOR + (1 - WINDOW_FLOOR) * np.exp(-0.5 * (40 / sigma) ** 2)
    assert w[100, 180] == pytest.approx(expected, rel=0.02)  # 40 px beyond the edge


def test_window_width_grows_with_the_object_and_has_a_floor() -> None:
    small, big = disc(100, 200, 50, 50, 3), disc(100, 200, 50, 50, 30)
    w_small, w_big = locality_window(small, 0.5), locality_window(big, 0.5)
    assert w_small is not None and w_big is not None
    # 40 px beyond each edge: the big object's window is wider
    assert w_big[50, 50 + 30 + 40] > w_small[50, 50 + 3 + 40]
    # a tiny object's window is at least MIN_SIGMA wide
    d = 8
    assert w_small[50, 50 + 3 + d] >= WINDOW_FLOOR + (1 - WINDOW_FLOOR) * np.exp(
        -0.5 * (d / MIN_SIGMA) ** 2) - 1e-3


def test_absent_object_gets_no_window() -> None:
    assert locality_window(np.zeros((16, 16), bool), 0.5) is None


def test_object_owners_is_the_argmax_with_background() -> None:
    probs = np.zeros((2, 2, 3), np.float32)
    probs[0, 0, 0], probs[1, 0, 1] = 0.9, 0.6
    probs[0, 1, 2], probs[1, 1, 2] = 0.3, 0.35  # background 0.35 ties object 2: first wins
    assert object_owners(probs).tolist() == [[1, 2, 0], [0, 0, 0]]


def test_two_objects_keep_their_own_side() -> None:
    """Both objects claim both places (as with keys that do not match); the window gives each
    place back to the object that was there, and the background keeps its share."""
    h, w = 48, 96
    left, right = disc(h, w, 24, 20, 8), disc(h, w, 24, 76, 8)
    prev = np.zeros((h, w), np.int64)
    prev[left], prev[right] = 1, 2
    prob = np.full((3, h, w), 0.1, np.float32)
    prob[0] = 0.8
    fg = left | right
    prob[:, fg] = np.array([0.1, 0.46, 0.44], np.float32)[:, None]  # object 1 wins everywhere
    assert (prob.argmax(0)[right] == 1).all()
    out = apply_locality(prob, onehot(prev, 2), DEFAULT_LOCALITY)
    labels = out.argmax(0)
    assert (labels[left] == 1).all() and (labels[right] == 2).all()
    assert np.array_equal(out[0], prob[0])
    assert np.allclose(out.sum(0), 1.0, atol=1e-5)


def test_one_object_and_zero_locality_are_left_alone() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 2):
        prob = rng.dirichlet(np.ones(k + 1), size=(8, 8)).transpose(2, 0, 1).astype(np.float32)
        prev = onehot(rng.integers(0, k + 1, (8, 8)), k)
        assert np.array_equal(apply_locality(prob, prev, 0.0), prob)
        if k == 1:
            assert np.array_equal(apply_locality(prob, prev, DEFAULT_LOCALITY), prob)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(0, 2**31 - 1), st.floats(0.05, 3.0))
def test_only_the_objects_share_of_the_foreground_moves(k: int, seed: int,
                                                         locality: float) -> None:
    rng = np.random.default_rng(seed)
    block = 4 * GRID  # previous masks made of blocks, so the coarse grid sees them exactly
    cells = np.kron(rng.integers(0, k + 1, (2, 2)), np.ones((3, 5), np.int64))  # 4 regions
    prev = np.kron(cells, np.ones((block, block), np.int64))
    prev = prev[: prev.shape[0] - int(rng.integers(GRID)), : prev.shape[1] - int(rng.integers(GRID))]
    h, w = prev.shape  # not always a multiple of GRID
    prob = rng.dirichlet(np.ones(k + 1), size=(h, w)).transpose(2, 0, 1).astype(np.float32)
    out = apply_locality(prob, onehot(prev, k), locality)
    assert out.shape == prob.shape and np.all(out >= 0)
    assert np.allclose(out.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(out[0], prob[0])  # the background is never touched
    assert np.allclose(out[1:].sum(0), prob[1:].sum(0), atol=1e-5)
    # in the middle of a block whose neighbours all had the same object, that object's share of
    # the foreground never drops (its window is 1 there, the others' at most 1)
    checked = 0
    for i in range(1, cells.shape[0] - 1):
        for j in range(1, cells.shape[1] - 1):
            obj = cells[i, j]
            if obj and (cells[i - 1:i + 2, j - 1:j + 2] == obj).all():
                y, x = i * block + block // 2, j * block + block // 2
                assert out[obj, y, x] >= prob[obj, y, x] * (1 - 1e-4)
                checked += 1
    assert checked or not cells.any()


def test_config_checks_locality() -> None:
    assert RuntimeConfig(locality=0).locality == 0
    for bad in (-0.1, float("nan"), True, "0.5"):
        with pytest.raises(RuntimeConfigError, match="locality"):
            RuntimeConfig(locality=bad)  # type: ignore[arg-type]
