"""The one mask reader (runtime.media.masks.read_labels): a PNG means the same object ids for the
runtime's first mask, the DAVIS ground truth and the training data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import ONE, TWO, demo_root
from PIL import Image

from runtime.core.errors import MaskError
from runtime.media.davis import DavisLayout, read_sequence
from runtime.media.masks import VOID_ID, MaskMode, read_labels, read_mask
from runtime.media.palette import PALETTE, save_palette_png

MODES = (MaskMode.FIRST, MaskMode.GROUND_TRUTH)


def labels_2obj() -> np.ndarray:
    lab = np.zeros((12, 16), np.uint8)
    lab[1:5, 1:6], lab[6:11, 9:15] = 1, 2
    return lab


@pytest.mark.parametrize("kind", ["palette", "gray", "rgb", "rgba", "1bit"])
def test_every_format_reads_the_same_in_both_modes(kind, tmp_path):
    lab = labels_2obj() if kind in ("palette", "rgb", "rgba") else (labels_2obj() > 0) * 1
    lab = lab.astype(np.uint8)
    path = tmp_path / f"{kind}.png"
    if kind == "palette":
        save_palette_png(lab, path)
    elif kind == "gray":
        Image.fromarray(lab * 255).save(path)
    elif kind == "1bit":
        Image.fromarray(lab > 0).save(path)
    elif kind == "rgb":
        Image.fromarray(PALETTE[lab]).save(path)
    else:
        Image.fromarray(np.dstack([PALETTE[lab], np.full(lab.shape, 255, np.uint8)])).save(path)
    for mode in MODES:
        out = read_labels(path, mode)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, lab)


def test_void_is_background_everywhere(tmp_path):
    lab = labels_2obj()
    with_void = lab.copy()
    with_void[0, :] = VOID_ID
    save_palette_png(with_void, tmp_path / "v.png")
    Image.fromarray(PALETTE[with_void]).save(tmp_path / "v_rgb.png")
    for mode in MODES:
        np.testing.assert_array_equal(read_labels(tmp_path / "v.png", mode), lab)
        np.testing.assert_array_equal(read_labels(tmp_path / "v_rgb.png", mode), lab)
    only_void = np.zeros_like(lab)
    only_void[3:5, 3:5] = VOID_ID
    save_palette_png(only_void, tmp_path / "only_void.png")
    with pytest.raises(MaskError, match="empty.*void"):
        read_mask(tmp_path / "only_void.png")


def test_modes_differ_only_on_empty_masks(tmp_path):
    save_palette_png(np.zeros((4, 4), np.uint8), tmp_path / "empty.png")
    with pytest.raises(MaskError, match="first mask .* is empty"):
        read_labels(tmp_path / "empty.png", MaskMode.FIRST)
    assert not read_labels(tmp_path / "empty.png", MaskMode.GROUND_TRUTH).any()
    assert not read_labels(tmp_path / "empty.png", "ground_truth").any()  # by value too
    with pytest.raises(ValueError):
        read_labels(tmp_path / "empty.png", "labels")  # no such mode


def test_refusals_name_the_file_in_each_mode(tmp_path):
    Image.fromarray(np.array([[0, 255, 128]], np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(MaskError, match=r"^annotation .*g.png is grayscale with values \[128\]"):
        read_labels(tmp_path / "g.png", MaskMode.GROUND_TRUTH)
    with pytest.raises(MaskError, match=r"^first mask .*g.png is grayscale"):
        read_mask(tmp_path / "g.png")
    with pytest.raises(MaskError, match="annotation not found"):
        read_labels(tmp_path / "none.png", MaskMode.GROUND_TRUTH)
    # A ValueError too: training's CLI reports ValueErrors in one line.
    assert issubclass(MaskError, ValueError)


def test_training_and_evaluation_read_the_shipped_annotations_alike():
    """Training data, DAVIS evaluation and the runtime's first mask agree on real PNGs."""
    from training.data import load_sequence

    layout = DavisLayout(demo_root())
    for seq in (ONE, TWO):
        gt = read_sequence(layout.root, seq).labels
        first = read_mask(layout.annotation(seq, "00000"))
        np.testing.assert_array_equal(first, gt[0])
        train = load_sequence(layout.root, seq, (240, 432))
        want = np.stack([cv2.resize(g, (432, 240), interpolation=cv2.INTER_NEAREST) for g in gt])
        np.testing.assert_array_equal(train.labels, want)
        assert train.num_objects == int(gt[0].max()) == (2 if "+" in seq else 1)
