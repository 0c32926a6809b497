"""Training data: copy-paste clips, corrupted QAM masks, scale jitter, the train/val split.

Clip tests use the demo clips (conftest.demo_root: real DAVIS frames where ../shared is here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE, TWO, demo_root
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from training.copy_paste import Cutout, paste, trajectory
from training.data import (
    VOID,
    Pool,
    SampleSpec,
    carried,
    copy_paste_sample,
    load_sequences,
    load_stills,
    static_sample,
    video_sample,
)
from training.losses import bootstrapped_ce, mask_iou
from training.mask_corruption import KINDS, corrupt, corrupt_masks
from training.train import TrainConfig, Trainer, load_config, make_batch, split_sequences
from training.validation import (
    identity_switches,
    load_val_videos,
    pasted_video,
    side_by_side_video,
)

SPEC3 = SampleSpec(crop=(96, 160), num_objects=3, image_size=(128, 224), scale_range=(0.8, 2.0))


@pytest.fixture(scope="module")
def demo_seqs():
    # Held at 2x the inference size, as training holds them for scale jitter.
    return load_sequences(demo_root(), [ONE, TWO], (256, 448))


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("in_front", [True, False])
def test_paste_keeps_labels_and_pixels_in_the_same_depth_order(in_front):
    h, w = 40, 60
    frames = [np.full((h, w, 3), 50, np.uint8) for _ in range(3)]
    labels = [_box(h, w, 10, 30, 10, 30).astype(np.uint8) for _ in range(3)]  # object 1
    patch = np.zeros((16, 16, 3), np.uint8)
    patch[..., 0] = 250
    cut = Cutout([patch] * 3, [np.ones((16, 16), bool)] * 3)
    positions = [(12, 20), (12, 24), (12, 28)]  # overlapping object 1, moving right
    paste(frames, labels, cut, 2, positions, in_front=in_front)
    for t, (y, x) in enumerate(positions):
        overlap = _box(h, w, y, y + 16, x, x + 16) & _box(h, w, 10, 30, 10, 30)
        assert overlap.any()
        owner = 2 if in_front else 1
        assert (labels[t][overlap] == owner).all()
        # Pixels agree with the labels: well inside the patch, donor red iff labelled 2.
        inner = _box(h, w, y + 2, y + 14, x + 2, x + 14)
        red = frames[t][..., 0] > 150
        assert (red[inner] == (labels[t][inner] == 2)).all()
        assert (labels[t] == 2).sum() == (256 if in_front else 256 - overlap.sum())
    assert not (frames[0][..., 0] > 200)[0:10].any()  # nothing pasted outside the patch


def test_copy_paste_sample_has_consistent_object_channels(demo_seqs):
    seen_multi = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        s = copy_paste_sample(rng, demo_seqs, SPEC3, max_skip=3, static_fraction=0.3)
        assert s.frames.shape == (3, 96, 160, 3) and s.masks.shape == (3, 3, 96, 160)
        assert s.qam_masks.shape == (3, 96, 160)
        valid = s.object_valid > 0
        # Every valid object is visible in frame 0 (its reference mask); padding is empty.
        assert all(s.masks[0, i].any() for i in np.flatnonzero(valid))
        assert not s.masks[:, ~valid].any()
        # One owner per pixel: occlusion order decided once, in the label map.
        assert s.masks.sum(1).max() <= 1
        seen_multi += int(valid.sum() >= 2)
    assert seen_multi >= 9, seen_multi  # pasting fills clips with several objects


def test_distractors_are_pasted_as_background(demo_seqs):
    spec = SampleSpec(crop=(96, 160), num_objects=1, image_size=(128, 224), scale_range=(0.8, 2.0))
    with_distractors = 0
    for seed in range(10):
        # Same seed: the same base clip, then with or without two distractors pasted in.
        plain = copy_paste_sample(np.random.default_rng(seed), demo_seqs, spec, 3, 0.3)
        s = copy_paste_sample(np.random.default_rng(seed), demo_seqs, spec, 3, 0.3,
                              distractors=2)
        assert s.masks.shape == (3, 1, 96, 160) and s.object_valid[0] == 1
        assert s.masks[0, 0].any()  # the target stays visible where its reference is given
        # A distractor only ever hides the target (in front); it never becomes the target.
        assert not (s.masks[:, 0] > plain.masks[:, 0]).any()
        changed = np.abs(s.frames.astype(int) - plain.frames).max(-1) > 40
        with_distractors += int(changed.mean() > 0.01)
        # Changed pixels are the distractors': background, up to the 1-px feathered edge.
        assert s.masks[:, 0][changed].mean() < 0.05
    assert with_distractors >= 8, with_distractors  # distractors were really pasted


def test_scale_jitter_changes_object_size(demo_seqs):
    sizes = {}
    for scale in (0.8, 2.0):
        spec = SampleSpec((96, 160), 1, (128, 224), (scale, scale))
        areas = []
        for seed in range(30):
            s = static_sample(np.random.default_rng(seed), demo_seqs[:1], spec)
            areas.append(s.masks[0, 0].mean())
        sizes[scale] = float(np.mean(areas))
    # 6x the area at 2.5x the scale when the object fits the crop; crops cut large objects.
    assert sizes[2.0] > 1.8 * sizes[0.8], sizes


def test_video_sample_frames_are_real_and_masked(demo_seqs):
    spec = SampleSpec((96, 160), 1, (128, 224), (1.0, 1.0))
    s = video_sample(np.random.default_rng(0), demo_seqs[:1], spec, max_skip=2)
    assert s.object_valid[0] == 1 and s.masks[0, 0].any()
    assert s.frames.std() > 10  # real image content, not padding


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(KINDS))
def test_corruptions_have_the_quality_their_kind_implies(seed, kind):
    rng = np.random.default_rng(seed)
    mask = _box(64, 96, 16, 48, 24, 72)
    other = _box(64, 96, 0, 10, 0, 20)
    out = corrupt(rng, mask, [other], kind)
    inter, union = (out & mask).sum(), (out | mask).sum()
    iou = inter / union
    if kind == "identity":
        assert iou == 1.0
    elif kind == "empty":
        assert not out.any()
    elif kind == "dilate":
        assert (out >= mask).all() and iou < 1.0
    elif kind in ("erode", "cutout"):
        assert (out <= mask).all() and iou < 1.0
    elif kind == "blob":
        assert (out >= mask).all()


def test_corrupt_masks_spread_quality_and_keep_absent_objects():
    rng = np.random.default_rng(0)
    gt = np.stack([_box(64, 96, 16, 48, 24, 72), _box(64, 96, 0, 10, 0, 20)]).astype(np.float32)
    ious = []
    for _ in range(60):
        c = corrupt_masks(rng, gt) > 0.5
        ious.append((c[0] & (gt[0] > 0)).sum() / max((c[0] | (gt[0] > 0)).sum(), 1))
    ious = np.array(ious)
    assert (ious < 0.3).mean() > 0.1 and (ious > 0.9).mean() > 0.1 and ious.std() > 0.25


def test_batches_mix_object_counts(demo_seqs):
    cfg = TrainConfig(data_root=str(demo_root()), image_size=(128, 224), crop_size=(96, 160),
                      scale_range=(0.8, 2.0), batch_size=2, multi_object_fraction=0.5,
                      three_object_fraction=0.5, side_by_side_fraction=0.5)
    counts = [make_batch(cfg, demo_seqs, step)[0].masks.shape[1] for step in range(16)]
    assert set(counts) == {1, 2, 3}
    # Same step, same batch: exact resume depends on it.
    a, b = make_batch(cfg, demo_seqs, 7), make_batch(cfg, demo_seqs, 7)
    assert all(np.array_equal(x.frames, y.frames) and np.array_equal(x.qam_masks, y.qam_masks)
               for x, y in zip(a, b))


def test_validation_sequences_never_train():
    cfg = TrainConfig(data_root=str(demo_root()), split_file="ImageSets/demo.txt",
                      val_sequences=(ONE,))
    train, val = split_sequences(cfg)
    assert train == [TWO] and val == [ONE]
    cfg = TrainConfig(data_root=str(demo_root()), train_sequences=(ONE, TWO),
                      val_sequences=(ONE,))
    assert ONE not in split_sequences(cfg)[0]


def test_validation_videos_two_objects():
    singles = load_val_videos(demo_root(), [ONE])
    assert len(singles) == 1 and singles[0].num_objects == 1
    a = singles[0]
    sbs = side_by_side_video(a, a)
    assert sbs.num_objects == 2 and sbs.frames.shape == a.frames.shape
    assert (sbs.labels[:, :, : a.labels.shape[2] // 2] != 2).all()
    pasted = pasted_video(a, a)
    assert pasted.num_objects == 2
    # The pasted object moves left to right across the video.
    xs = [np.nonzero(pasted.labels[t] == 2)[1].mean() for t in (0, len(a.frames) - 1)]
    assert xs[1] > xs[0] + 100


def test_validation_log_keeps_columns_aligned_when_columns_are_added(tmp_path):
    from training.train import append_row

    path = tmp_path / "val.csv"
    append_row(path, {"step": 500, "jf": 0.5})
    append_row(path, {"step": 1000, "jf": 0.6})
    append_row(path, {"step": 1500, "jf": 0.7, "pearson": 0.8})
    import csv

    rows = list(csv.DictReader(path.open()))
    assert [r["jf"] for r in rows] == ["0.5", "0.6", "0.7"]
    assert [r["pearson"] for r in rows] == ["", "", "0.8"]


def test_pearson_needs_something_to_rank():
    from training.validation import _pearson

    assert np.isnan(_pearson([(1.0, 0.2), (1.0, 0.5), (1.0, 0.9)]))  # constant IoU
    assert _pearson([(0.1, 0.2), (0.5, 0.5), (0.9, 0.7)]) > 0.9


def test_gate_score_correlation_is_the_papers_normalised_score():
    """pearson_gate correlates eq. 3's score (mean over objects / the first frame's), which is
    what the gate thresholds, with each frame's mean IoU; the gate shares follow from it. With
    the default score each object's QAM score is weighted by the decoder's confidence."""
    from evaluation.metrics import jaccard
    from training.checkpoint import load_model
    from training.data import load_sequence
    from training.validation import ValVideo, frame_scores, quality_stats

    model, _ = load_model(Path(__file__).resolve().parents[1] / "models" / "qdmn-light.pth")
    seq = load_sequence(demo_root(), TWO)  # the cow as id 1, the dog as id 2
    v = ValVideo(seq.name, seq.frames[:7], seq.labels[:7])
    pred = v.labels.copy()
    pred[3] = 0  # both objects lost
    pred[4] = np.roll(v.labels[4], 40, axis=1)  # shifted
    pred[5][pred[5] == 2] = 0  # one object lost
    size = (240, 432)
    conf = np.linspace(1.0, 0.4, 7)[:, None].repeat(2, 1).astype(np.float32)  # falling
    first = frame_scores(model, v.frames[0], v.labels[0], 2, size)
    for mode, weight in (("qam", np.ones_like(conf)), ("qam*confidence", conf)):
        stats = quality_stats(model, [v], [pred], [conf], size, mode=mode)
        scores = [frame_scores(model, v.frames[t], pred[t], 2, size) * weight[t]
                  for t in range(1, 7)]
        # the paper's normaliser for "qam", each object's own for the default
        gate = [s.mean() / first.mean() if mode == "qam" else np.minimum(s / first, 1).mean()
                for s in scores]
        rows = [(np.mean([float(jaccard(v.labels[t] == i, pred[t] == i)) for i in (1, 2)]), g)
                for t, g in zip(range(1, 7), gate)]
        iou, score = np.array(rows).T
        assert stats.n_frames == 6 and len(stats.points) == 12 and stats.mode == mode
        assert stats.pearson_gate == pytest.approx(np.corrcoef(iou, score)[0, 1], abs=1e-6)
        assert stats.reject_bad == pytest.approx(np.mean(score[iou < 0.5] < 0.8))
        assert stats.accept_good == pytest.approx(np.mean(score[iou > 0.8] >= 0.8))
        qam, gated = np.array([p[1:] for p in stats.points]).T
        np.testing.assert_allclose(gated, qam * weight[1:].reshape(-1), rtol=1e-6)


def test_burst_data_keeps_every_frame_and_object_id(davis_root, tmp_path):
    from scripts.burst_data import SIZE, reduce

    reduce(davis_root, tmp_path, "ImageSets/demo.txt")
    for name in (ONE, TWO):
        src = sorted((davis_root / "Annotations/480p" / name).glob("*.png"))
        dst = sorted((tmp_path / "Annotations/480p" / name).glob("*.png"))
        assert [f.name for f in dst] == [f.name for f in src]
        for a, b in ((src[0], dst[0]), (src[-1], dst[-1])):
            small = np.array(Image.open(b))
            assert small.shape == (SIZE[1], SIZE[0])
            assert set(np.unique(small)) == set(np.unique(np.array(Image.open(a))))
    seqs = load_sequences(tmp_path, [ONE, TWO], (240, 432))  # trains as it is
    assert [s.num_objects for s in seqs] == [1, 2]


def test_burst_init_holds_the_imagenet_encoders(tmp_path):
    from scripts.burst_data import write_imagenet_init
    from training.backbones import lite_weights_path

    config = Path(__file__).resolve().parents[1] / "configs/gpu/light-scratch.yaml"
    write_imagenet_init(config, tmp_path / "init.pth")
    trainer = Trainer(load_config(config, {"out_dir": str(tmp_path / "run"), "workers": 0}),
                      torch.device("cpu"))
    trainer.load_weights(tmp_path / "init.pth", continue_run=False)  # as gpu_burst.sh's --init
    imagenet = torch.load(lite_weights_path("efficientnet_lite0"), weights_only=True)
    own = trainer.model.rgb_encoder.state_dict()
    for name in ("_conv_stem.weight", "_blocks.5._project_conv.weight"):
        torch.testing.assert_close(own[name], imagenet[name], atol=2e-3, rtol=1e-3)  # FP16


def _write_stills(folder: Path, n: int) -> Path:
    """Photos with masks as the pets folder holds them: 1 = the object, 255 = a void band."""
    import cv2

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        h, w = (300, 400) if i % 2 else (400, 300)  # landscape and portrait
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (w // 2, h // 2), 80, 255, -1)
        cv2.circle(mask, (w // 2, h // 2), 74, 1, -1)
        img[mask == 1] = (200, 40 * i, 90)
        Image.fromarray(img).save(folder / "images" / f"cat_{i}.jpg", quality=95)
        Image.fromarray(mask).save(folder / "masks" / f"cat_{i}.png")
    return folder


def test_stills_give_static_clips_whose_void_band_no_loss_scores(tmp_path, demo_seqs):
    stills = load_stills(_write_stills(tmp_path / "pets", 4))
    assert len(stills) == 4
    for s in stills:  # cropped to a landscape shape around the object, void kept apart
        h, w = s.labels.shape[1:]
        assert w >= h and set(np.unique(s.labels)) == {0, 1, VOID} and s.num_objects == 1
    pool = Pool(demo_seqs, stills, still_fraction=1.0)
    spec = SampleSpec(crop=(96, 160), num_objects=1, image_size=(128, 224))
    for seed in range(6):
        s = static_sample(np.random.default_rng(seed), pool, spec)
        assert s.masks[0, 0].any() and s.void.any()
        assert not (s.masks[:, 0].astype(bool) & s.void).any()  # void is never the object
        red = s.frames[0][..., 0].astype(float)  # the object is the red disc, after jitter
        assert red[s.masks[0, 0] > 0].mean() > red[~s.void[0] & (s.masks[0, 0] == 0)].mean() + 30


def test_void_pixels_do_not_count_in_the_losses():
    logits = torch.randn(1, 2, 8, 8).log_softmax(1)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    scored = torch.ones(1, 8, 8, dtype=torch.bool)
    scored[:, :4] = False
    other = logits.clone()
    other[:, :, :4] = torch.randn(1, 2, 4, 8).log_softmax(1)  # changes only void pixels
    for p in (1.0, 0.3):
        assert torch.isclose(bootstrapped_ce(logits, target, p, scored),
                             bootstrapped_ce(other, target, p, scored))
    prob = torch.zeros(1, 1, 8, 8)
    gt = torch.zeros(1, 1, 8, 8)
    gt[..., 4:, :] = prob[..., 4:, :] = 1
    prob[..., :4, :] = 1  # predicted object over the void band: not a mistake there
    assert mask_iou(prob, gt, scored).item() == 1.0 and mask_iou(prob, gt).item() == 0.5


def test_identity_clips_hold_up_to_five_objects_and_look_alikes(demo_seqs):
    spec = SampleSpec(crop=(96, 160), num_objects=5, image_size=(128, 224),
                      scale_range=(0.8, 2.0))
    counts, twins = [], 0
    for seed in range(10):
        s = copy_paste_sample(np.random.default_rng(seed), demo_seqs, spec, 3, 0.3,
                              twin_fraction=1.0, crossing_fraction=1.0)
        valid = np.flatnonzero(s.object_valid)
        counts.append(len(valid))
        assert all(s.masks[0, i].any() for i in valid) and s.masks.sum(1).max() <= 1
        # a twin: two objects of one look (mean colour of their frame-0 pixels)
        colours = [s.frames[0][s.masks[0, i] > 0].mean(0) for i in valid]
        twins += any(np.abs(a - b).max() < 12 for j, a in enumerate(colours)
                     for b in colours[j + 1:])
    assert max(counts) == 5 and np.mean(counts) >= 3.5, counts
    assert twins >= 6, twins


def test_a_crossing_path_passes_over_the_point_it_is_given():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = trajectory(rng, (96, 160), (20, 30), 3, through=(40.0, 70.0))
        y, x = pos[1]
        assert abs(y + 10 - 40) <= 1 and abs(x + 15 - 70) <= 1


def test_batches_of_up_to_five_objects(demo_seqs):
    cfg = TrainConfig(data_root=str(demo_root()), image_size=(128, 224), crop_size=(96, 160),
                      scale_range=(0.8, 2.0), batch_size=1, object_weights=(1, 1, 1, 1, 1))
    counts = {make_batch(cfg, demo_seqs, step)[0].masks.shape[1] for step in range(30)}
    assert counts == {1, 2, 3, 4, 5}


def test_many_object_validation_videos_never_train():
    cfg = TrainConfig(data_root=str(demo_root()), split_file="ImageSets/demo.txt",
                      val_many=(TWO,))
    assert TWO not in split_sequences(cfg)[0]


def test_identity_switches_count_masks_that_lie_on_another_objects_truth():
    truth = np.zeros((3, 20, 20), np.uint8)
    truth[:, :, :10], truth[:, :, 10:] = 1, 2
    assert identity_switches(truth, truth) == 0.0
    swapped = truth.copy()
    swapped[1:] = 3 - truth[1:]  # ids swapped after the first frame
    assert identity_switches(truth, swapped) == 1.0
    spread = truth.copy()
    spread[2, :, 10:14] = 1  # object 1 spreads a little over object 2: neither has switched
    assert identity_switches(truth, spread) == 0.0
    void = truth.copy()
    void[:, 0] = 255  # void in the truth is no object's
    assert identity_switches(void, truth) == 0.0


def test_objects_that_leave_come_back_and_small_objects_are_small(demo_seqs):
    spec = SampleSpec(crop=(96, 160), num_objects=4, image_size=(128, 224),
                      scale_range=(0.8, 2.0))
    left, small_areas, large_areas = 0, [], []
    for seed in range(10):
        s = copy_paste_sample(np.random.default_rng(seed), demo_seqs, spec, 3, 0.3,
                              leave_fraction=1.0, small_fraction=1.0)
        valid = np.flatnonzero(s.object_valid)
        assert all(s.masks[0, i].any() for i in valid)
        # every pasted target is gone from the middle frame and back in the last
        gone = [i for i in valid if not s.masks[1, i].any()]
        assert len(gone) >= len(valid) - 1, (seed, valid, gone)  # all but the clip's own
        left += sum(s.masks[2, i].any() for i in gone)
        small_areas += [s.masks[0, i].mean() for i in gone]
        big = copy_paste_sample(np.random.default_rng(seed), demo_seqs, spec, 3, 0.3)
        large_areas += [big.masks[0, i].mean() for i in np.flatnonzero(big.object_valid)[1:]]
    assert left >= 15, left
    assert max(small_areas) < 0.05 and np.median(small_areas) < np.median(large_areas) / 3


def test_a_carried_object_sits_on_its_host_and_moves_with_it():
    h, w = 80, 120
    host = [_box(h, w, 20 + 5 * t, 60 + 5 * t, 30 + 8 * t, 70 + 8 * t) for t in range(3)]
    host[1][:] = False  # hidden in the middle frame: the carried object holds its place
    cut = Cutout([np.zeros((50, 50, 3), np.uint8)] * 3, [np.ones((50, 50), bool)] * 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        small, positions = carried(rng, cut, host)
        ph, pw = small.masks[0].shape
        assert 0.2 * 40 - 1 <= ph <= 0.5 * 40 + 1 and ph == pw  # a fifth to a half of the host
        (y0, x0), (y1, x1), (y2, x2) = positions
        assert host[0][round(y0 + ph / 2), round(x0 + pw / 2)]  # centred on the host
        assert (y1, x1) == (y0, x0)
        assert (y2 - y0, x2 - x0) == (10, 16)  # the host's motion


def test_carried_targets_lie_on_other_objects(demo_seqs):
    spec = SampleSpec(crop=(96, 160), num_objects=3, image_size=(128, 224),
                      scale_range=(0.8, 2.0))
    on_host = pasted = 0
    for seed in range(10):
        s = copy_paste_sample(np.random.default_rng(seed), demo_seqs, spec, 3, 0.3,
                              carry_fraction=1.0)
        valid = np.flatnonzero(s.object_valid)
        assert all(s.masks[0, i].any() for i in valid) and s.masks.sum(1).max() <= 1
        for i in valid:
            # a carried object is in front of its host: the host's pixels ring it
            m = np.pad(s.masks[0, i] > 0, 2)
            ring = (m[:-4, 2:-2] | m[4:, 2:-2] | m[2:-2, :-4] | m[2:-2, 4:]) & ~m[2:-2, 2:-2]
            others = s.masks[0, [j for j in valid if j != i]].any(0)
            pasted += 1
            on_host += int(others[ring].mean() > 0.3)
    assert on_host >= pasted // 2, (on_host, pasted)
