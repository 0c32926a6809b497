"""evaluation.sequences and benchmarks/evaluate.py on a tiny synthetic DAVIS folder with stub
segmenters."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ONE

from benchmarks import evaluate as ev
from evaluation.metrics import EvaluationError, statistics
from runtime.media.davis import DavisLayout, write_labels
from runtime.media.masks import MaskMode, read_labels

REPO = Path(__file__).resolve().parents[1]
T, H, W, SIDE = 6, 32, 48, 8


def toy_labels(shift: int = 1) -> np.ndarray:
    """Two SIDE x SIDE squares moving right by `shift` px per frame: (T,H,W) uint8."""
    lab = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        lab[t, 4 : 4 + SIDE, 2 + shift * t : 2 + shift * t + SIDE] = 1
        lab[t, 20 : 20 + SIDE, 30 - shift * t : 30 - shift * t + SIDE] = 2
    return lab


@pytest.fixture()
def toy_root(tmp_path: Path) -> Path:
    root = tmp_path / "davis"
    for name in ("alpha", "beta"):
        img_dir = root / "JPEGImages/480p" / name
        ann_dir = root / "Annotations/480p" / name
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for t, lab in enumerate(toy_labels()):
            cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), np.full((H, W, 3), t * 10, np.uint8))
            write_labels(ann_dir / f"{t:05d}.png", lab)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("alpha\nbeta\n")
    return root


class CopyFirst:
    """Keeps predicting the first mask: J per frame is computable by hand."""

    manifest = None

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        self.mask = mask.copy()
        return self.mask

    def step(self, frame: np.ndarray, *, last: bool = False) -> np.ndarray:
        return self.mask


class Oracle:
    manifest = None

    def __init__(self) -> None:
        self.gt = toy_labels()
        self.lasts: list[bool] = []

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.t = 0
        return self.gt[0]

    def step(self, frame: np.ndarray, *, last: bool = False) -> np.ndarray:
        self.t += 1
        self.lasts.append(last)
        return self.gt[self.t]


# Each square overlaps its first-frame copy in SIDE*(SIDE-t) px of a SIDE*(SIDE+t) union;
# frames 1..T-2 are scored.
COPY_J = np.array([(SIDE - t) / (SIDE + t) for t in range(1, T - 1)])


def test_oracle_scores_one(toy_root):
    res = ev.evaluate_sequences(Oracle, toy_root, ["alpha", "beta"], progress=False)
    g = res.summary()
    assert (g.jf_mean, g.j_mean, g.f_mean, g.j_recall, g.j_decay) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert [o.name for o in res.objects] == ["alpha_1", "alpha_2", "beta_1", "beta_2"]
    assert all(s.frames == T and s.seconds >= 0 for s in res.sequences)
    oracle = Oracle()
    ev.evaluate_sequences(lambda: oracle, toy_root, ["alpha"], progress=False)
    assert oracle.lasts == [False] * (T - 2) + [True]  # only the last frame is flagged


def test_copy_first_matches_hand_computed_j(toy_root, tmp_path):
    shared = CopyFirst()  # one object for every sequence: start() resets it
    res = ev.evaluate_sequences(
        lambda: shared, toy_root, ["alpha", "beta"], save_masks=tmp_path / "m", progress=False
    )
    for o in res.objects:
        np.testing.assert_allclose(o.j, COPY_J)
    g = res.summary()
    s = statistics(COPY_J)
    assert g.j_mean == pytest.approx(COPY_J.mean())
    assert g.j_recall == pytest.approx(0.5)  # 7/9 and 6/10 are > 0.5; 5/11 and 4/12 are not
    assert g.j_decay == pytest.approx(s.decay)
    assert g.j_decay == pytest.approx((7 / 9 + 6 / 10) / 2 - (5 / 11 + 4 / 12) / 2)
    assert 0 < g.f_mean < 1
    assert g.jf_mean == pytest.approx((g.j_mean + g.f_mean) / 2)
    # Saved predictions are palette PNGs in the toolkit's results layout.
    saved = sorted((tmp_path / "m/alpha").glob("*.png"))
    assert len(saved) == T
    np.testing.assert_array_equal(read_labels(saved[-1], MaskMode.GROUND_TRUTH), toy_labels()[0])


def test_write_csvs_toolkit_format(toy_root, tmp_path):
    res = ev.evaluate_sequences(CopyFirst, toy_root, ["alpha", "beta"], progress=False)
    paths = ev.write_csvs(res, tmp_path / "out")
    assert [p.name for p in paths] == [
        "global_results-val.csv",
        "per-sequence_results-val.csv",
        "timing-val.csv",
    ]
    with open(paths[0]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    g = res.summary()
    assert rows[1][1] == f"{COPY_J.mean():.3f}"
    assert rows[1][0] == f"{g.jf_mean:.3f}" and len(rows) == 2
    with open(paths[1]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Sequence", "J-Mean", "F-Mean"]
    assert [r[0] for r in rows[1:]] == ["alpha_1", "alpha_2", "beta_1", "beta_2"]
    assert all(r[1] == f"{COPY_J.mean():.3f}" for r in rows[1:])
    table = ev.format_table(res, "t")
    assert "alpha" in table and f"{g.jf_mean:.3f}" in table


def test_wrong_output_shape_raises(toy_root):
    class Bad(CopyFirst):
        def step(self, frame, *, last=False):
            return self.mask[:-1]

    with pytest.raises(EvaluationError, match="shape"):
        ev.evaluate_sequences(Bad, toy_root, ["alpha"], progress=False)


def test_cli_runtime_and_reference(toy_root, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_runtime(args):
        seen["runtime"] = (args.engine_dir, args.backend, args.memory_size)
        return Oracle()

    monkeypatch.setattr(ev, "build_runtime", fake_runtime)
    monkeypatch.setattr(ev, "build_reference", lambda args, manifest: CopyFirst())
    out = tmp_path / "out"
    rc = ev.main(
        ["--engine-dir", "eng", "--data", str(toy_root), "--out", str(out), "--reference",
         "x.pth", "--backend", "ort-cpu", "--memory-size", "3", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    assert seen["runtime"] == (Path("eng"), "ort-cpu", 3)
    assert (out / "global_results-val.csv").is_file()
    assert (out / "reference/per-sequence_results-val.csv").is_file()
    text = capsys.readouterr().out
    assert "runtime" in text and "reference" in text
    ref = ev.evaluate_sequences(CopyFirst, toy_root, ["alpha", "beta"], progress=False)
    ref_jf = ref.summary().jf_mean
    last = text.strip().splitlines()[-1].split()
    assert last == ["J&F-Mean", "1.000", f"{ref_jf:.3f}", f"{1.0 - ref_jf:+.3f}"]


def test_cli_sequences_and_errors(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ev, "build_runtime", lambda args: Oracle())
    out = tmp_path / "out"
    rc = ev.main(["--engine-dir", "e", "--data", str(toy_root), "--out", str(out),
                  "--sequences", "beta", "--set", "mini", "--no-progress"])  # fmt: skip
    assert rc == 0
    with open(out / "per-sequence_results-mini.csv") as f:
        assert [r[0] for r in csv.reader(f)][1:] == ["beta_1", "beta_2"]
    rc = ev.main(["--engine-dir", "e", "--data", str(tmp_path / "nowhere"), "--out", str(out),
                  "--no-progress"])  # fmt: skip
    assert rc == 1 and "error:" in capsys.readouterr().err
    rc = ev.main(["--engine-dir", "e", "--data", str(toy_root), "--out", str(out),
                  "--sequences", "gamma", "--no-progress"])  # fmt: skip
    assert rc == 1 and "gamma" in capsys.readouterr().err


def test_cli_checks_outputs_and_ranges_before_any_work(toy_root, tmp_path, monkeypatch, capsys):
    def no_work(args):
        raise AssertionError("evaluation started before the arguments were checked")

    monkeypatch.setattr(ev, "build_runtime", no_work)
    base = ["--engine-dir", "e", "--data", str(toy_root), "--no-progress"]
    for extra, message in ((["--out", "/proc/x"], "/proc/x"),
                           (["--out", str(tmp_path / "o"), "--quality-threshold", "2"],
                            "quality_threshold=2.0: expected a number in [0, 1]"),
                           (["--out", str(tmp_path / "o"), "--threads", "0"], "threads=0"),
                           (["--out", str(tmp_path / "o"), "--device", "-1"], "device=-1")):
        assert ev.main([*base, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_cli_reference_checkpoint_errors_in_our_words(request, toy_root, tmp_path, capsys):
    """--reference with random bytes / a code-running pickle: one line, no torch advice."""
    import os

    import runtime_support as rs
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    rand, unsafe = tmp_path / "random.pth", tmp_path / "unsafe.pth"
    rand.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    torch.save({"model": Payload()}, unsafe)
    _, engine = rs.cached_engine(request)
    for path, message in ((rand, "is not a PyTorch checkpoint"), (unsafe, "refused: ")):
        rc = ev.main(["--engine-dir", str(engine), "--data", str(toy_root), "--backend",
                      "ort-cpu", "--reference", str(path), "--out", str(tmp_path / "o"),
                      "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and message in err[0], err
        assert "weights_only" not in err[0]
    assert not (tmp_path / "pwned").exists()


def test_cli_on_exported_tiny_model(request, tmp_path, capsys):
    """The runtime tests' tiny exported model: runtime (ORT CPU) and reference on 4 frames."""
    import runtime_support as rs

    root = DavisLayout(tmp_path / "davis")
    for src, dst in ((rs.demo_layout().frames_dir(ONE), root.frames_dir(ONE)),
                     (rs.demo_layout().annotations_dir(ONE), root.annotations_dir(ONE))):
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir())[:4]:
            (dst / f.name).write_bytes(f.read_bytes())
    ckpt, engine = rs.cached_engine(request)
    out = tmp_path / "out"
    rc = ev.main(
        ["--engine-dir", str(engine), "--data", str(root.root), "--backend", "ort-cpu",
         "--reference", str(ckpt), "--threads", "1", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    scores = {}
    for label, d in (("runtime", out), ("reference", out / "reference")):
        with open(d / "global_results-val.csv") as f:
            rows = list(csv.reader(f))
        scores[label] = float(rows[1][0])
        assert 0.0 <= scores[label] <= 1.0
    # Same checkpoint, same decisions: FP32 graphs and PyTorch agree up to numerics.
    assert abs(scores["runtime"] - scores["reference"]) < 0.02
    assert "warning" not in capsys.readouterr().err
