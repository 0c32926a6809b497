"""The PyTorch reference: same Segmenter as the runtime, sparse bank, unbounded mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.core.config import RuntimeConfig
from runtime.core.memory_policy import DEFAULT_MEMORY_SIZE
from training.config import ModelConfig
from training.model import QDMN, memory_readout
from training.reference import (
    UNBOUNDED_MEMORY,
    ReferenceSegmenter,
    TorchBackend,
    reference_manifest,
    reference_segmenter,
)


@pytest.fixture(scope="module")
def model() -> QDMN:
    # The ImageNet trunk where available: a random trunk's ~1e-5 activations underflow into
    # denormals deeper in, which makes the CPU convolutions ~100x slower.
    torch.manual_seed(0)
    try:
        return QDMN(ModelConfig.light(), pretrained_backbone=True).eval()
    except (RuntimeError, ImportError, OSError):
        return QDMN(ModelConfig.light()).eval()


def clip(n: int, h: int = 64, w: int = 96) -> tuple[list[np.ndarray], np.ndarray]:
    """A bright square moving over noise, with its first-frame mask (ids 1 and 2)."""
    rng = np.random.default_rng(0)
    frames = []
    for t in range(n):
        f = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        f[10 + t: 30 + t, 10 + 2 * t: 30 + 2 * t] = (250, 200, 50)
        f[40:60, 60:90] = (40, 90, 250)
        frames.append(f)
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 10:30] = 1
    mask[40:60, 60:90] = 2
    return frames, mask


@pytest.mark.parametrize("top_k", [5, 1000])  # k below and above the valid positions
def test_dropping_invalid_slots_is_exact(top_k):
    """The sparse bank's claim: masked slots contribute exactly nothing (bias -1e4 in FP32)."""
    g = torch.Generator().manual_seed(0)
    s, n, ck, cv, h, w = 5, 2, 8, 6, 3, 4
    qk = torch.randn(1, ck, h, w, generator=g)
    mk, mv = torch.randn(1, s, n, ck, h, w, generator=g), torch.randn(1, s, n, cv, h, w, generator=g)
    valid = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]])
    full = memory_readout(qk, mk * 30, mv, valid, top_k)  # large invalid affinities too
    idx = valid[0].nonzero()[:, 0]
    sparse = memory_readout(qk, mk[:, idx] * 30, mv[:, idx], torch.ones(1, len(idx)), top_k)
    torch.testing.assert_close(full, sparse, rtol=1e-5, atol=1e-6)


def test_unbounded_never_evicts(model):
    frames, mask = clip(8)
    seg = reference_segmenter(model, size=(64, 96), max_objects=2, unbounded=True,
                              config=RuntimeConfig(mem_every=1, quality_threshold=0.0, threads=1))
    assert seg.manifest.memory_size == UNBOUNDED_MEMORY
    labels = list(seg.segment(frames, mask))
    assert len(labels) == 8 and labels[0].shape == (64, 96)
    assert len(seg.policy) == 8 and len(seg.backend.bank.valid_slots()) == 8
    assert all(seg.backend.bank.read(s)[0].shape == (2, 4 * 6, 64)  # (N, P, CK)
               for s in seg.backend.bank.valid_slots())


def test_unbounded_has_one_meaning(model):
    """memory_size=None is the default bank everywhere; only unbounded=True is unbounded."""
    seg = reference_segmenter(model, size=(64, 96), max_objects=1)
    assert seg.manifest.memory_size == DEFAULT_MEMORY_SIZE
    assert reference_manifest(model.cfg, 64, 96, 1).memory_size == DEFAULT_MEMORY_SIZE
    with pytest.raises(ValueError, match="exclude each other"):
        reference_segmenter(model, size=(64, 96), max_objects=1, memory_size=3, unbounded=True)


def test_bounded_reference_evicts_and_reuses_slots(model):
    frames, mask = clip(6)
    seg = reference_segmenter(model, size=(64, 96), max_objects=3, memory_size=2,
                              config=RuntimeConfig(mem_every=1, quality_threshold=0.0, threads=1))
    records = []
    for lab in seg.segment(frames, mask):
        records.append(seg.last_record)
    assert set(np.unique(lab)) <= {0, 1, 2}
    assert [r.decision["slot"] for r in records] == [0, 1, 2, 1, 2, 1]  # equal scores: oldest
    assert records[3].decision["evicted"]["frame"] == 1
    assert sorted(records[-1].slots) == [0, 1, 2]


def test_reference_segmenter_sizes_itself_per_video(model):
    frames, mask = clip(3, 70, 100)
    ref = ReferenceSegmenter(model, memory_size=3, threads=1)
    out = [ref.start(frames[0], mask), *(ref.step(f) for f in frames[1:])]
    m = ref.segmenter.manifest
    assert (m.height, m.width, m.max_objects, m.memory_size) == (80, 112, 2, 3)
    assert all(o.shape == (70, 100) for o in out)
    first = ref.segmenter
    ref.start(frames[0], mask)
    assert ref.segmenter is first  # same size and objects: reused
    small, smask = clip(2, 48, 64)
    ref.start(small[0], smask)
    assert (ref.segmenter.manifest.height, ref.segmenter.manifest.width) == (48, 64)


def test_from_checkpoint(model, tmp_path):
    from training.checkpoint import save_weights

    path = tmp_path / "m.pt"
    save_weights(model, path, {"config": {"model": model.cfg.to_dict(), "image_size": [48, 64]}})
    ref = ReferenceSegmenter.from_checkpoint(path, memory_size=None, mem_every=2,
                                             quality_threshold=0.5, threads=1)
    frames, mask = clip(2)
    ref.start(frames[0], mask)
    ref.step(frames[1])
    seg = ref.segmenter
    assert (seg.manifest.height, seg.manifest.width) == (48, 64)
    assert seg.config.mem_every == 2 and seg.config.quality_threshold == 0.5
    assert seg.manifest.memory_size == DEFAULT_MEMORY_SIZE
    assert len(seg.manifest.checkpoint_sha256) == 64


def test_torch_backend_matches_model_methods(model):
    m = reference_manifest(model.cfg, 64, 96, 2, 2)
    be = TorchBackend(model, m)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (1, 64, 96, 3), dtype=np.uint8)
    masks = rng.random((2, 64, 96), dtype=np.float32)
    kv = be.run("qam", {"image": img, "masks": masks}, fetch=("mem_key_1", "mem_value_0"))
    q = be.run("quality", fetch=("quality",))
    from training.model import normalize_uint8

    with torch.no_grad():
        k, v, quality = model.encode_memory(normalize_uint8(torch.from_numpy(img)),
                                            torch.from_numpy(masks)[None])
    np.testing.assert_allclose(q["quality"], quality[0].numpy(), rtol=1e-6)
    # bank layout: one row of channels per position
    np.testing.assert_allclose(kv["mem_key_1"], k[0, 1].flatten(1).T.numpy(), rtol=1e-6)
    np.testing.assert_allclose(kv["mem_value_0"], v[0, 0].flatten(1).T.numpy(), rtol=1e-6)
