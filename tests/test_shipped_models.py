"""The checkpoints shipped in models/: what the README promises about each one holds for the
file in the repository (format, size, export default), and each segments a held-out real clip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE, TWO, load_script, require_real_frames

from evaluation.metrics import jaccard
from training.checkpoint import load_model, read_checkpoint
from training.data import load_sequence
from training.reference import ReferenceSegmenter

MODELS = Path(__file__).resolve().parents[1] / "models"
FRAMES = 12  # enough for the bank to take frames in (mem_every 5), quick at 480x864 on 2 cores

# name: (backbone, export default size), as docs/training-log.md documents them
SHIPPED = {
    "qdmn-light.pth": ("efficientnet_lite0", [240, 432]),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_is_what_the_readme_says(name):
    path = MODELS / name
    model, meta = load_model(path)  # strict: a missing or extra tensor raises
    backbone, size = SHIPPED[name]
    assert model.cfg.backbone == backbone
    assert meta["config"]["image_size"] == size
    assert {v.dtype for v in read_checkpoint(path)["model"].values()
            if v.is_floating_point()} == {torch.float16}
    assert path.stat().st_size < 20e6


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_follows_a_held_out_clip(name, davis_root):
    """blackswan was never trained on: at the model's own export size the reference keeps the
    swan (per-frame IoU) over the first frames, including after the bank takes a frame in."""
    require_real_frames()
    seq = load_sequence(davis_root, ONE)
    labels = (seq.labels[:FRAMES] > 0).astype(np.uint8)
    torch.set_num_threads(2)
    seg = ReferenceSegmenter.from_checkpoint(MODELS / name)
    preds = [seg.start(seq.frames[0], labels[0])]
    preds += [seg.step(seq.frames[t], last=t == FRAMES - 1) for t in range(1, FRAMES)]
    ious = [float(jaccard(lab == 1, p == 1)) for p, lab in zip(preds[1:], labels[1:])]
    assert min(ious) > 0.7, ious


def test_two_objects_keep_their_identities_and_the_prior_costs_nothing(davis_root):
    """The demo's two-object clip (held-out cows | libby, side by side). Without the locality
    prior the 42-video model gave much of the dog's pixels to the cow from frame 2 on; the
    identity-trained model keeps the dog either way. With the prior (the default,
    runtime.core.locality) each object keeps its own, and the prior never costs the dog."""
    require_real_frames()
    seq = load_sequence(davis_root, TWO)
    torch.set_num_threads(2)
    ious = {}
    for locality in (0.0, None):
        seg = ReferenceSegmenter.from_checkpoint(MODELS / "qdmn-light.pth", locality=locality)
        preds = [seg.start(seq.frames[0], seq.labels[0])]
        preds += [seg.step(seq.frames[t], last=t == FRAMES - 1) for t in range(1, FRAMES)]
        ious[locality] = np.array([[float(jaccard(lab == k, p == k)) for k in (1, 2)]
                                   for p, lab in zip(preds[2:], seq.labels[2:FRAMES])])
    assert ious[None][:, 1].mean() >= ious[0.0][:, 1].mean() - 0.02, (ious[0.0], ious[None])
    assert ious[None][:, 1].min() > 0.5 and ious[None][:, 0].min() > 0.7, ious[None]


def ship(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MODELS.parent / "scripts" / "ship_model.py"), *args],
                          check=False, capture_output=True, text=True)


def test_ship_model_sets_the_export_size_and_keeps_the_weights(tmp_path):
    """scripts/ship_model.py: a training snapshot made a shipped file for another export size."""
    src = MODELS / "qdmn-light.pth"
    out = tmp_path / "shipped.pth"
    assert ship(str(src), str(out), "--size", "480", "864").returncode == 0
    (a, meta_a), (b, meta_b) = load_model(src), load_model(out)
    assert meta_b["config"]["image_size"] == [480, 864]
    assert meta_a["config"]["image_size"] == [240, 432]  # the source is left as it was
    assert meta_b["step"] == meta_a["step"]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    bad = ship(str(src), str(tmp_path / "bad.pth"), "--size", "480", "860")
    assert bad.returncode == 2 and "multiples of 16" in bad.stderr
    assert not (tmp_path / "bad.pth").exists()


def test_gate_oracle_scores_candidates_by_their_true_iou(davis_root):
    """scripts/gate_oracle.py: with the oracle gate a candidate frame's
    score is its masks' real IoU, so the gate memorises a frame exactly when that IoU reaches
    sigma; accept_all / reject_all memorise every candidate / none."""
    require_real_frames()
    GatedReference = load_script("gate_oracle").GatedReference
    from training.validation import ValVideo

    seq = load_sequence(davis_root, ONE)
    video = ValVideo(ONE, seq.frames[:FRAMES], (seq.labels[:FRAMES] > 0).astype(np.uint8))
    model, _ = load_model(MODELS / "qdmn-light.pth")
    torch.set_num_threads(2)
    inserted = {}
    for gate in ("oracle", "accept_all", "reject_all"):
        seg = GatedReference(model, video, gate, size=(240, 432), quality_threshold=0.8)
        seg.start(video.frames[0], video.labels[0])
        for t in range(1, FRAMES):
            pred = seg.step(video.frames[t], last=t == FRAMES - 1)
            record = seg.last_record
            if gate == "oracle" and record.quality is not None:
                iou = float(jaccard(video.labels[t] == 1, pred == 1))
                assert abs(record.score - iou) < 0.03, (t, record.score, iou)
                assert record.decision["accepted"] == (record.score >= 0.8)
        inserted[gate] = seg.insertions
    assert inserted["reject_all"] == 0 and inserted["accept_all"] == 2  # frames 5 and 10
    assert 0 <= inserted["oracle"] <= 2
    with pytest.raises(ValueError, match="unknown gate 'perfect'"):
        GatedReference(model, video, "perfect")


def test_read_back_loses_small_objects_first(davis_root):
    """scripts/read_back.py: segmenting the annotated frame from a memory of itself, the shipped
    model gives both demo objects (held out) most of their probability at its own size; shrink
    the graphs and both lose some, the dog, the smaller one, the larger share (as `schoolgirls`'
    backpacks do at 240x432)."""
    require_real_frames()
    seq = load_sequence(davis_root, TWO)
    read_back = load_script("read_back").read_back
    torch.set_num_threads(2)
    shares = {size: read_back(ReferenceSegmenter.from_checkpoint(MODELS / "qdmn-light.pth",
                                                                 size=size),
                              seq.frames[0], seq.labels[0])
              for size in ((240, 432), (96, 176))}
    assert min(shares[240, 432]) > 0.6, shares
    (cow, dog), (cow_small, dog_small) = shares[240, 432], shares[96, 176]
    assert cow_small < cow and dog_small / dog < cow_small / cow, shares


@pytest.mark.parametrize("script", ["read_back", "model_report"])
@pytest.mark.parametrize("size, message", [("240x", "expected HxW"), ("240-432", "expected HxW"),
                                           ("0x432", "must be >= 1")])
def test_bad_sizes_are_a_usage_error_in_one_line(script, size, message, tmp_path, capsys):
    """Both research scripts read `--sizes HxW` through runtime.cli.size_arg: argparse's usage
    error naming the value, before any model or data is loaded."""
    with pytest.raises(SystemExit) as stop:
        load_script(script).main([str(tmp_path / "absent.pth"), "--data", str(tmp_path),
                                  "--out", str(tmp_path / "out"), "--sizes", "240x432", size])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and repr(size) in err, err
