"""Runtime on real DAVIS frames: ORT CPU (and OpenVINO) vs the PyTorch reference.

Same checkpoint, exported at 128x224 with 2 objects and 2 dynamic slots: per-frame IoU of the
label maps, identical memory decisions, and identical bank contents slot by slot.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import runtime_support as rs

from runtime.config import RuntimeConfig
from runtime.frames import read_frame, read_mask
from runtime.segmenter import Segmenter, summarize

# mem_every 1 and sigma 1 (the top of its range) on this model: normalised scores vary
# 0.95..1.39 (two below 1, the nearest 0.983), so frames are accepted and rejected and the 2
# dynamic slots overflow; runtime and reference scores agree to 1e-4, far inside that margin.
POLICY = RuntimeConfig(memory_size=2, mem_every=1, quality_threshold=1.0, threads=1)


@pytest.fixture(scope="module")
def engine(request) -> tuple[Path, Path]:
    return rs.cached_engine(request)


def run_both(engine, frames, mask, config, backend="ort-cpu"):
    from training.reference import reference_segmenter

    ckpt, graphs = engine
    seg = Segmenter(graphs, backend, config)
    ref = reference_segmenter(ckpt, manifest=seg.manifest, config=config)
    out = []
    for s in (seg, ref):
        labels, records = [], []
        for lab in s.segment(frames, mask, finite=True):
            labels.append(lab)
            records.append(s.last_record)
        out.append((labels, records))
    return seg, ref, out


def decisions(records):
    """Decisions without the float score (compared with a tolerance separately)."""
    out = []
    for r in records:
        d = r.decision
        out.append(None if d is None else (d["frame"], d["candidate"], d["accepted"], d["slot"],
                                           d["index"], d["evicted"] and d["evicted"]["frame"]))
    return out


def test_ort_cpu_matches_reference_single_object(engine):
    paths, mask_path = rs.davis_clip("blackswan", 12)
    frames, mask = [read_frame(p) for p in paths], read_mask(mask_path)
    seg, ref, ((la, ra), (lb, rb)) = run_both(engine, frames, mask, POLICY)
    ious = [rs.iou(a, b) for a, b in zip(la, lb)]
    print("per-frame IoU", np.round(ious, 4), "decisions", decisions(ra))
    assert np.mean(ious) >= 0.99 and min(ious) >= 0.97
    assert all(a.shape == (480, 854) and a.dtype == np.uint8 for a in la)
    assert decisions(ra) == decisions(rb)
    assert [r.slots for r in ra] == [r.slots for r in rb]
    np.testing.assert_allclose([r.score or 0 for r in ra], [r.score or 0 for r in rb], atol=1e-4)
    s = summarize(ra)
    assert s["insertions"] >= 2 and s["evictions"] >= 1, "policy not exercised: retune POLICY"
    assert any(d and not d["accepted"] for d in (r.decision for r in ra))
    # The foreground is neither empty nor everything: IoU above is not vacuous.
    assert 0.05 < np.mean([(a > 0).mean() for a in la[1:]]) < 0.95
    # Bank contents agree slot by slot (ORT's physical slot map vs the reference's slots).
    valid = seg.backend.bank.valid
    for slot in np.flatnonzero(valid):
        for x, y in zip(seg.backend.bank.read(int(slot)), ref.backend.bank.read(int(slot))):
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)
    assert set(np.flatnonzero(valid)) == set(ra[-1].slots)
    # Every stage was timed.
    assert set(ra[5].ms) >= {"pre", "encoder", "memory_read", "decoder", "qam", "bank", "post"}


def test_two_objects_side_by_side(engine, tmp_path):
    folder, mask_path = rs.side_by_side(("blackswan", "car-shadow"), 6, tmp_path)
    frames = [read_frame(p) for p in sorted(folder.glob("*.jpg"))]
    mask = read_mask(mask_path)
    assert set(np.unique(mask)) == {0, 1, 2}
    cfg = RuntimeConfig(memory_size=2, mem_every=1, quality_threshold=0.0, threads=1)
    seg, _, ((la, ra), (lb, rb)) = run_both(engine, frames, mask, cfg)
    ious = [rs.iou(a, b) for a, b in zip(la, lb)]
    print("per-frame IoU", np.round(ious, 4))
    assert np.mean(ious) >= 0.99
    assert seg.object_ids == (1, 2)
    assert all(len(r.quality) == 2 for r in ra[:-1])
    assert decisions(ra) == decisions(rb) and summarize(ra)["evictions"] >= 1
    assert set(np.unique(la[-1])) <= {0, 1, 2}


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino missing")
def test_openvino_matches_ort_cpu(engine):
    paths, mask_path = rs.davis_clip("blackswan", 6)
    frames, mask = [read_frame(p) for p in paths], read_mask(mask_path)
    _, graphs = engine
    out = {}
    for name in ("ort-cpu", "openvino"):
        seg = Segmenter(graphs, name, POLICY)
        assert seg.backend.name == name
        out[name] = ([lab for lab in seg.segment(frames, mask)], seg)
    ious = [rs.iou(a, b) for a, b in zip(out["ort-cpu"][0], out["openvino"][0])]
    assert np.mean(ious) >= 0.99


def test_fewer_objects_than_graphs_and_stream_api(engine):
    """One object in 2-object graphs: padded object stays empty; `segment` as a generator."""
    paths, mask_path = rs.davis_clip("blackswan", 3)
    _, graphs = engine
    seg = Segmenter(graphs, "ort-cpu", RuntimeConfig(memory_size=1))
    assert seg.config.memory_size == 1 and seg.config.mem_every == 5
    gen = seg.segment((read_frame(p) for p in paths), read_mask(mask_path))
    labels = list(gen)
    assert len(labels) == 3 and seg.frame_index == 2
    assert seg.last_prob.shape == (3, *rs.SIZE) and float(seg.last_prob[2].max()) < 1e-3
    # a new video restarts cleanly (memory reset, slot 0 rewritten)
    seg.start(read_frame(paths[0]), read_mask(mask_path))
    assert seg.backend.bank.valid.tolist() == [1, 0, 0, 0] and seg.frame_index == 0
