"""Runtime building blocks without a model: masks, pre/post-processing, config, bank, sources."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import script_env
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from runtime.backends import create_backend
from runtime.backends.base import HostBank
from runtime.core.config import RuntimeConfig, default_threads
from runtime.core.errors import BackendUnavailableError, InputError, MaskError, RuntimeConfigError
from runtime.core.manifest import STRIDE, Manifest, ManifestError, graph_specs
from runtime.core.memory_policy import (
    DEFAULT_MEM_EVERY,
    DEFAULT_QUALITY_THRESHOLD,
    FIXED_SLOTS,
    MemoryPolicy,
    bank_capacity,
)
from runtime.core.owners import owners
from runtime.core.resize import onehot, prob_to_labels, resize_frame
from runtime.media.masks import fit_mask, read_mask
from runtime.media.palette import PALETTE
from runtime.media.sources import open_source, with_last


def manifest(memory_size: int = 3) -> Manifest:
    specs = graph_specs(32, 48, 2, memory_size, 4, 6, (16, 8, 4), qam_size=4)
    return Manifest(height=32, width=48, max_objects=2, memory_size=memory_size, top_k=5,
                    key_dim=4, value_dim=6, precision="fp32", graphs=specs)


def test_davis_palette():
    assert PALETTE[0].tolist() == [0, 0, 0]
    assert PALETTE[1].tolist() == [128, 0, 0] and PALETTE[2].tolist() == [0, 128, 0]
    assert PALETTE[3].tolist() == [128, 128, 0] and PALETTE[4].tolist() == [0, 0, 128]
    assert len({tuple(c) for c in PALETTE}) == 256


def test_mask_refusals(tmp_path):
    with pytest.raises(MaskError, match="not found"):
        read_mask(tmp_path / "none.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "z.png")
    with pytest.raises(MaskError, match="empty"):
        read_mask(tmp_path / "z.png")
    Image.fromarray(np.array([[0, 255, 3]], np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(MaskError, match=r"values \[3\]"):
        read_mask(tmp_path / "g.png")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(MaskError, match=r"\(255, 0, 0\)"):
        read_mask(tmp_path / "c.png")
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(MaskError, match="unsupported image mode F"):
        read_mask(tmp_path / "f.tiff")


def test_fit_mask_warns():
    m = np.zeros((10, 20), np.uint8)
    m[:, 10:] = 3
    with pytest.warns(UserWarning, match="resizing the mask"):
        out = fit_mask(m, 20, 40)
    assert out.shape == (20, 40) and set(np.unique(out)) == {0, 3}
    assert fit_mask(m, 10, 20) is m


def test_pre_and_post_processing():
    frame = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    assert resize_frame(frame, 32, 48).shape == (32, 48, 3)
    assert resize_frame(frame, 200, 300).shape == (200, 300, 3)
    with pytest.raises(InputError):
        resize_frame(frame[..., 0], 32, 48)
    labels = np.zeros((100, 150), np.uint8)
    labels[:50, :75], labels[50:, 75:] = 3, 9
    oh = onehot(labels, (3, 9), 4, 32, 48)
    assert oh.shape == (4, 32, 48) and oh.dtype == np.float32
    assert oh[0, :16, :24].all() and oh[1, 16:, 24:].all() and not oh[2:].any()
    prob = np.concatenate([1 - oh[:2].sum(0, keepdims=True), oh[:2], np.zeros((2, 32, 48))])
    out = prob_to_labels(prob.astype(np.float32), (3, 9), 100, 150)
    assert out.shape == (100, 150) and out.dtype == np.uint8
    assert (out == labels).mean() > 0.97
    single = prob_to_labels(prob[:2].astype(np.float32), (3,), 100, 150)
    assert set(np.unique(single)) == {0, 3}


def test_memory_constants_are_defined_once():
    """beta + 2 slots, mem_every and sigma: one definition (runtime.core.memory_policy), used by the
    manifest, the graphs' shapes and the policy alike."""
    m = manifest(3)
    assert m.capacity == bank_capacity(3) == 3 + FIXED_SLOTS
    assert m.graphs["memory_read"].input("mem_keys").shape[1] == m.capacity  # (N, S, P, CK)
    assert (m.mem_every, m.quality_threshold) == (DEFAULT_MEM_EVERY, DEFAULT_QUALITY_THRESHOLD)
    policy = MemoryPolicy(3, DEFAULT_MEM_EVERY, DEFAULT_QUALITY_THRESHOLD)
    assert policy.temp_slot == m.temp_slot == m.capacity - 1
    assert (m.height // STRIDE, m.width // STRIDE) == m.feature_size == (2, 3)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API (Linux)")
def test_default_threads_follow_the_cpu_affinity_set():
    assert default_threads() == len(os.sched_getaffinity(0))
    assert RuntimeConfig().resolve(manifest()).threads == default_threads()
    # A process restricted to one CPU (taskset, a container's cpuset) gets one thread.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from runtime.core.config import default_threads; print(default_threads())")
    r = subprocess.run([sys.executable, "-c", code], env=script_env(), capture_output=True,
                       text=True, timeout=60, check=True)
    assert r.stdout.strip() == "1"


def test_with_last():
    assert list(with_last([])) == []
    assert list(with_last("ab")) == [("a", False), ("b", True)]


def test_runtime_config():
    m = manifest(3)
    r = RuntimeConfig().resolve(m)
    assert (r.memory_size, r.mem_every, r.quality_threshold) == (3, 5, 0.8) and r.threads >= 1
    assert RuntimeConfig(memory_size=2, quality_threshold=1).resolve(m).quality_threshold == 1.0
    with pytest.raises(RuntimeConfigError, match="--memory-size 4"):
        RuntimeConfig(memory_size=4).resolve(m)
    for bad in ({"memory_size": 0}, {"mem_every": -1}, {"threads": 1.5},
                {"quality_threshold": float("nan")}, {"device": -1}, {"mem_every": True}):
        with pytest.raises(RuntimeConfigError):
            RuntimeConfig(**bad)
    with pytest.raises(AttributeError):
        r.memory_size = 1  # frozen


def test_gate_score_comes_from_the_manifest_unless_overridden():
    """The exporter writes the gate's score into the manifest (the paper's for an official
    checkpoint); a RuntimeConfig (--quality-score) overrides it; an unknown one is refused."""
    m = manifest()
    assert RuntimeConfig().resolve(m).quality_score == "qam*confidence"
    paper = dataclasses.replace(m, quality_score="qam")
    assert RuntimeConfig().resolve(paper).quality_score == "qam"
    assert RuntimeConfig(quality_score="qam*confidence").resolve(paper).quality_score == \
        "qam*confidence"
    with pytest.raises(ManifestError, match="quality_score 'iou'"):
        dataclasses.replace(m, quality_score="iou").validate()


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not text", "not valid JSON"), (b'"abc"', "a JSON object expected"),
    (b"[]", "a JSON object expected"), ("height", "malformed manifest")])
def test_a_corrupt_manifest_is_one_manifest_error(tmp_path, content, message):
    """Whatever is in manifest.json, loading it raises ManifestError (run.py's one line),
    never UnicodeDecodeError, ValueError or TypeError from inside the reader."""
    if isinstance(content, str):  # one field of the wrong type in a valid manifest
        d = json.loads(manifest().to_json())
        d[content] = "wide"
        content = json.dumps(d).encode()
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=message):
        Manifest.load(tmp_path)


def test_host_bank_slot_semantics():
    m = manifest(2)  # 2 objects, 2 x 3 positions, CK 4, CV 6
    src = {f"mem_key_{i}": np.full((6, 4), 1 + i, np.float32) for i in range(2)}
    src.update({f"mem_value_{i}": np.full((6, 6), 10 + i, np.float32) for i in range(2)})
    bank = HostBank(m, src)
    keys, values = bank.arrays["mem_keys"], bank.arrays["mem_values"]
    assert keys.shape == (2, 4, 6, 4) and values.shape == (2, 4, 6, 6)  # (N, S, P, C)
    assert bank.valid.tolist() == [0, 0, 0, 0]
    bank.write(0)
    bank.write(3)  # temp slot: previous frame
    assert bank.valid.tolist() == [1, 0, 0, 1]
    assert (keys[1, 3] == 2).all() and (values[0, 3] == 10).all() and not keys[:, 1:3].any()
    # each object's chunk sits where the manifest says
    offset, count = m.bank_chunk("mem_values", 1, 3)
    assert (values.reshape(-1)[offset:offset + count] == 11).all()
    src["mem_key_0"] *= 5
    bank.write(1)  # accepted: the temp slot is emptied
    assert bank.valid.tolist() == [1, 1, 0, 0] and bank.read(1)[0].max() == 5
    assert bank.read(1)[0].shape == (2, 6, 4)
    bank.reset()
    assert not bank.valid.any()
    with pytest.raises(IndexError):
        bank.write(4)


def test_sources(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_source(tmp_path / "x")
    for name in ("00001.jpg", "00000.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    src = open_source(tmp_path)
    assert [p.name for p in src.files] == ["00000.png", "00001.jpg"] and not src.live
    with pytest.raises(InputError, match="single image"):
        open_source(tmp_path / "00000.png")
    with pytest.raises(InputError, match="cannot decode"):
        next(iter(src))


def test_unpadded_frame_names_keep_their_time_order(tmp_path, monkeypatch):
    """`ffmpeg -i v.mp4 %d.jpg` writes 1.jpg ... 10.jpg: sorted as text, 10 came before 2 and
    every mask was written for another frame than its name says, without a word."""
    folder = tmp_path / "123"  # a folder named like a camera index is still the folder
    folder.mkdir()
    for n in (10, 2, 1, 11, 9):
        (folder / f"{n}.jpg").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for arg in (folder, "123"):
        src = open_source(arg)
        assert [p.name for p in src.files] == ["1.jpg", "2.jpg", "9.jpg", "10.jpg", "11.jpg"]


def test_unknown_backend():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'cuda'"):
        create_backend("cuda", manifest(), ".", RuntimeConfig().resolve(manifest()))


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_owners_is_argmax_ties_to_the_lower_index(planes: int, seed: int) -> None:
    """Coarse values make ties common: every tie goes where numpy's argmax puts it."""
    probs = np.random.default_rng(seed).integers(0, 4, (planes, 5, 7)).astype(np.float32) / 4
    assert np.array_equal(owners(probs), probs.argmax(0))
    assert np.array_equal(owners(list(probs)), probs.argmax(0))  # planes one at a time


def test_sigterm_re_raised_as_ctrl_c_by_a_library_still_exits_143():
    """Ray re-raises the interrupt it caught as a plain KeyboardInterrupt: the corpus runner
    exited 130 for SIGTERM, which the summary's clear-up had forgotten by then."""
    import os
    import signal

    from runtime.media.outputs import (
        Terminated,
        as_received,
        interrupt_exit_code,
        terminate_as_interrupt,
    )

    with terminate_as_interrupt():
        try:
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line
                pytest.fail("SIGTERM did not interrupt")
            except Terminated:
                raise KeyboardInterrupt from None  # what the library gives back
        except KeyboardInterrupt as e:
            stop = as_received(e)
    assert interrupt_exit_code(stop) == 143
    assert interrupt_exit_code(as_received(KeyboardInterrupt())) == 130  # Ctrl-C stays Ctrl-C


def test_a_block_that_fails_with_a_signal_held_keeps_its_error():
    """deferred_signals holds Ctrl-C until the block is done; a block that raises keeps its own
    error (the held Ctrl-C replaced it, so a failure read as an interrupt whose work was done),
    and the handlers are back as they were."""
    import os
    import signal

    from runtime.media.outputs import deferred_signals

    before = signal.getsignal(signal.SIGINT)
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError("disk full")
    except OSError as e:
        assert str(e) == "disk full"
    except KeyboardInterrupt:
        pytest.fail("the held Ctrl-C replaced the block's error")
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), deferred_signals():  # a clean block: then Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
