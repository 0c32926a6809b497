"""The decoder's previous masks (training.config.ModelConfig.previous_masks): a model with them
exports, runs in the runtime as in the reference, uses them, and starts from a model without
them exactly as that model was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from export.to_onnx import export_checkpoint
from export.trt_check import check_model, errors_of
from runtime.core.manifest import Manifest
from runtime.segmenter import Segmenter
from training.checkpoint import load_model, save_weights
from training.config import ModelConfig
from training.graphs import build_graphs
from training.model import QDMN
from training.reference import ReferenceSegmenter
from training.train import TrainConfig, Trainer

H, W, N = 64, 96, 2
WITH = dataclasses.replace(ModelConfig.light(), previous_masks=True)


def clip(n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A bright square moving over noise beside a still blue box, with the first mask."""
    rng = np.random.default_rng(0)
    frames = []
    for t in range(n):
        f = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
        f[10 + t: 30 + t, 10 + 2 * t: 30 + 2 * t] = (250, 200, 50)
        f[40:60, 60:90] = (40, 90, 250)
        frames.append(f)
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 10:30] = 1
    mask[40:60, 60:90] = 2
    return frames, mask


def model(cfg: ModelConfig, seed: int = 0) -> QDMN:
    """ImageNet trunks where the package is there; the previous masks' convolutions random (not
    their zeros), so that a graph which dropped them would differ."""
    torch.manual_seed(seed)
    try:
        m = QDMN(cfg, pretrained_backbone=True)
    except (RuntimeError, ImportError, OSError):
        m = QDMN(cfg)
    if m.decoder.previous is not None:
        for p in m.decoder.previous.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return m.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "previous.pth"
    save_weights(model(WITH), path, {"config": {"model": WITH.to_dict(), "image_size": [H, W]}})
    return path


def test_the_decoder_reads_the_previous_masks(checkpoint):
    m, _ = load_model(checkpoint)
    dec = build_graphs(m, H, W)["decoder"]
    rng = np.random.default_rng(1)
    cv, h, w = m.cfg.value_dim, H // 16, W // 16
    c8, c4 = m.cfg.feature_dims[1:]
    args = [torch.from_numpy(rng.standard_normal(s, dtype=np.float32)) for s in
            ((N, cv, h, w), (1, cv, h, w), (1, c8, H // 8, W // 8), (1, c4, H // 4, W // 4))]
    with torch.no_grad():
        a = dec(*args, torch.ones(N), torch.zeros(N, H, W))
        prev = torch.zeros(N, H, W)
        prev[0, :32] = 1
        b = dec(*args, torch.ones(N), prev)
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="previous frame's masks"):
        m.decode(args[0][None], *args[1:], torch.ones(1, N))


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_exported_runtime_equals_the_reference(checkpoint, tmp_path, backend):
    export_checkpoint(checkpoint, tmp_path / "g", max_objects=N, memory_size=3)
    manifest = Manifest.load(tmp_path / "g")
    assert [t.name for t in manifest.graphs["decoder"].inputs][-1] == "prev_prob"
    issues = check_model(tmp_path / "g" / "decoder.onnx")  # TensorRT takes it (op table)
    assert not errors_of(issues), [str(i) for i in issues]
    frames, mask = clip(8)
    runtime = Segmenter(tmp_path / "g", backend=backend)
    ref = ReferenceSegmenter(load_model(checkpoint)[0], size=(H, W), max_objects=N)
    got = [runtime.start(frames[0], mask)] + [runtime.step(f) for f in frames[1:]]
    want = [ref.start(frames[0], mask)] + [ref.step(f) for f in frames[1:]]
    for g, w in zip(got, want, strict=True):
        assert np.mean(g != w) < 1e-3
    assert any(np.any(g == 1) for g in got[1:])


def test_a_model_without_them_starts_one_with_them_unchanged(tmp_path):
    """--init: weights trained without the previous masks; those start at zero, so the new
    model decodes exactly as the old one, whatever the previous masks."""
    base = model(ModelConfig.light(), seed=1)
    path = tmp_path / "base.pth"
    save_weights(base, path, {"config": {"model": ModelConfig.light().to_dict()}})
    trainer = Trainer(TrainConfig(model=WITH, pretrained_backbone=False,
                                  out_dir=str(tmp_path / "run")), torch.device("cpu"))
    trainer.load_weights(path, continue_run=False)
    grown = trainer.model.eval()
    assert all(not p.any() for p in grown.decoder.previous.parameters())
    frames, mask = clip(4)
    want = ReferenceSegmenter(base, size=(H, W), max_objects=N)
    got = ReferenceSegmenter(grown, size=(H, W), max_objects=N)
    assert np.array_equal(want.start(frames[0], mask), got.start(frames[0], mask))
    for f in frames[1:]:
        assert np.array_equal(want.step(f), got.step(f))
    with pytest.raises(Exception, match="another model config"):  # resuming is not starting
        trainer.load_weights(path, continue_run=True)
