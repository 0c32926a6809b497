"""The memory gate's score (runtime.core.quality): unit and property tests, no backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from runtime.core.config import RuntimeConfig
from runtime.core.errors import RuntimeConfigError
from runtime.core.quality import (
    DEFAULT_QUALITY_SCORE,
    frame_score,
    mask_confidence,
    object_scores,
)


def test_a_given_mask_is_certain_and_a_lost_object_scores_zero() -> None:
    prob = np.zeros((3, 4, 6), np.float32)  # background, object 1, object 2 (never wins)
    prob[0, :, :3] = 1.0
    prob[1, :, 3:] = 1.0
    conf = mask_confidence(prob, 2)
    assert conf.tolist() == [1.0, 0.0]
    assert object_scores(np.array([0.7, 0.6], np.float32), conf, "qam*confidence").tolist() == \
        pytest.approx([0.7, 0.0])


def test_confidence_is_the_mean_probability_over_the_pixels_the_object_wins() -> None:
    # One object: it wins the pixels at 0.9 and 0.6; those at 0.3 go to the background.
    fg = np.array([[0.9, 0.6, 0.3]], np.float32)
    prob = np.stack([1 - fg, fg])
    assert mask_confidence(prob, 1)[0] == pytest.approx(0.75)
    # Two objects share a pixel the background also wants: the most probable one owns it.
    prob = np.array([[[0.2, 0.1]], [[0.45, 0.8]], [[0.35, 0.1]]], np.float32)
    assert mask_confidence(prob, 2).tolist() == pytest.approx([(0.45 + 0.8) / 2, 0.0])


def test_the_papers_score_is_the_qam_score_unchanged() -> None:
    prob = np.stack([np.full((2, 2), 0.4), np.full((2, 2), 0.6)]).astype(np.float32)
    q, conf = np.array([0.55], np.float32), mask_confidence(prob, 1)
    assert object_scores(q, conf, "qam") is q
    assert object_scores(q, conf, DEFAULT_QUALITY_SCORE)[0] == pytest.approx(0.55 * 0.6)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (3, 5, 7), elements=st.floats(0.0625, 1.0, width=32)))
def test_confidence_lies_between_a_tie_and_certainty(raw: np.ndarray) -> None:
    prob = raw / raw.sum(0, keepdims=True)  # a distribution per pixel, as the decoder gives
    conf = mask_confidence(prob, 2)
    for i in (1, 2):
        mine = prob.argmax(0) == i  # ties go to the lower index (runtime.core.owners)
        if mine.any():
            assert 1 / 3 - 1e-6 <= conf[i - 1] <= 1 + 1e-6
            assert conf[i - 1] == pytest.approx(prob[i][mine].mean(), rel=1e-5)
        else:
            assert conf[i - 1] == 0.0


def test_unknown_quality_score_is_refused() -> None:
    with pytest.raises(RuntimeConfigError, match="quality_score='iou'"):
        RuntimeConfig(quality_score="iou")
    assert RuntimeConfig(quality_score="qam").quality_score == "qam"


def test_each_object_is_measured_against_its_own_reference() -> None:
    """A small object the QAM scores low even on its ground truth does not sink the frame:
    every object at its reference scores 1 whatever the sizes; the paper's normaliser does not."""
    reference = np.array([0.6, 0.25, 0.25], np.float32)  # one large object, two small ones
    assert frame_score(reference, reference, DEFAULT_QUALITY_SCORE) == pytest.approx(1.0)
    assert frame_score(reference * 0.5, reference, DEFAULT_QUALITY_SCORE) == pytest.approx(0.5)
    assert frame_score(reference, reference, "qam") == pytest.approx(1.0)
    lost_large = np.array([0.0, 0.25, 0.25], np.float32)  # the large object lost
    assert frame_score(lost_large, reference, DEFAULT_QUALITY_SCORE) == pytest.approx(2 / 3)
    assert frame_score(lost_large, reference, "qam") == pytest.approx(0.5 / 1.1)
    # an object whose reference scored 0 (a ReLU head) is left out; none left: undefined
    assert frame_score(np.array([0.3, 0.9]), np.array([0.6, 0.0]), DEFAULT_QUALITY_SCORE) == \
        pytest.approx(0.5)
    assert np.isnan(frame_score(np.array([0.3]), np.array([0.0]), DEFAULT_QUALITY_SCORE))
    # a poor mask the head scores above its object's ground truth counts as the truth, no more:
    # one small object cannot carry a frame whose other objects are lost
    small_over = np.array([0.0, 0.0, 0.75], np.float32)  # three times its reference
    assert frame_score(small_over, reference, DEFAULT_QUALITY_SCORE) == pytest.approx(1 / 3)
    assert frame_score(small_over, reference, "qam") == pytest.approx(0.25 / (1.1 / 3))
