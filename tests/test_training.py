"""Training pipeline: loss schedule, dataset errors, real-data overfit, exact resume."""

from __future__ import annotations

import csv
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import ONE, TWO, load_script, signal_when_written
from PIL import Image

from training.config import ConfigError
from training.data import DatasetError, SampleSpec, _scale, load_sequence, load_sequences
from training.losses import BootstrapSchedule, bootstrapped_ce
from training.train import TrainConfig, Trainer, forward_clip, load_config, split_sequences

SIZE = (128, 224)


def test_bootstrap_schedule_values():
    s = BootstrapSchedule(start_warm=100, end_warm=300, top_p=0.15)
    assert s.fraction(0) == 1.0 and s.fraction(99) == 1.0
    assert s.fraction(100) == pytest.approx(1.0)
    assert s.fraction(200) == pytest.approx(0.575)
    assert s.fraction(300) == pytest.approx(0.15) and s.fraction(10_000) == pytest.approx(0.15)


def test_past_its_steps_a_run_keeps_every_schedule_at_its_end():
    """Continuing a run with `--steps` beyond the config's `steps` trains on as its last step
    did: the last frame skip, the last bootstrap share, the lr as it ended (never decayed when
    `lr_decay_at` >= 1). Raising `steps` in the config instead re-enters the curricula."""
    cfg = TrainConfig(steps=100, lr=1e-4, lr_decay_at=1.0)
    end, beyond = 99, 250
    assert cfg.lr_at(beyond) == cfg.lr_at(end) == 1e-4
    assert cfg.skip_at(beyond) == cfg.skip_at(end) == cfg.max_skip[-1][1]
    assert cfg.bootstrap.fraction(beyond) == cfg.bootstrap.fraction(end) == cfg.top_p
    decays = TrainConfig(steps=100, lr=1e-4, lr_decay_at=0.8)
    assert decays.lr_at(79) == 1e-4 and decays.lr_at(80) == decays.lr_at(beyond) == 1e-4 * 0.1


def test_bootstrapped_ce_keeps_hardest_pixels():
    logits = torch.log(torch.tensor([[[[0.9, 0.6, 0.2, 0.5]], [[0.1, 0.4, 0.8, 0.5]]]]))
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    per_pixel = -logits[0, 0, 0]
    assert bootstrapped_ce(logits, target, 1.0) == pytest.approx(per_pixel.mean().item())
    hardest = per_pixel.sort(descending=True).values[:2].mean()
    assert bootstrapped_ce(logits, target, 0.5) == pytest.approx(hardest.item())


def _copy_sequence(davis: Path, dst: Path, name: str, frames: int = 6) -> None:
    for kind, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        out = dst / kind / "480p" / name
        out.mkdir(parents=True)
        for i in range(frames):
            shutil.copy(davis / kind / "480p" / name / f"{i:05d}{ext}", out)


def test_dataset_errors_name_the_file(davis_root, tmp_path):
    _copy_sequence(davis_root, tmp_path, ONE)
    (tmp_path / f"Annotations/480p/{ONE}/00003.png").unlink()
    with pytest.raises(DatasetError, match="00003.jpg has no annotation"):
        load_sequence(tmp_path, ONE, SIZE)
    Image.fromarray(np.full((480, 854), 128, np.uint8)).save(tmp_path / f"Annotations/480p/{ONE}/00003.png")
    # The runtime's mask reader refuses it: a MaskError, a ValueError as train.py expects.
    with pytest.raises(ValueError, match=r"00003.png is grayscale with values \[128\]"):
        load_sequence(tmp_path, ONE, SIZE)
    for i in range(6):
        Image.fromarray(np.zeros((480, 854), np.uint8)).save(tmp_path / f"Annotations/480p/{ONE}/{i:05d}.png")
    with pytest.raises(DatasetError, match="first mask .* is empty"):
        load_sequence(tmp_path, ONE, SIZE)
    with pytest.raises(DatasetError, match="no frame folder"):
        load_sequence(tmp_path, "nosuchseq", SIZE)


def test_config_typo_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_sise: 4\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(cfg)
    cfg.write_text("model:\n  key_dimm: 4\n")
    with pytest.raises(ConfigError, match=r"model.*key_dimm"):
        load_config(cfg)


def test_a_scale_the_crop_cannot_reach_is_refused():
    """Below crop / image_size the sampler would clamp every clip up to that scale, silently."""
    with pytest.raises(ConfigError, match=r"smallest reachable scale is 0\.800"):
        TrainConfig(image_size=(240, 432), crop_size=(192, 320), scale_range=(0.6, 2.0))
    cfg = TrainConfig(image_size=(240, 432), crop_size=(144, 256), scale_range=(0.6, 2.0))
    spec = SampleSpec(cfg.crop_size, 1, cfg.image_size, cfg.scale_range)
    seq = SimpleNamespace(labels=np.zeros((1, *cfg.load_size), np.uint8))
    rng = np.random.default_rng(0)
    heights = [_scale(rng, seq, spec)[0] for _ in range(400)]
    assert min(heights) >= 144 and min(heights) < 0.65 * 240 and max(heights) > 1.9 * 240


def _tiny(tmp_path: Path, davis: Path, **kw) -> TrainConfig:
    base = {"data_root": str(davis), "image_size": SIZE, "crop_size": (96, 160),
            "batch_size": 2, "steps": 60, "lr": 3e-4, "bootstrap_start": 0.5,
            "bootstrap_end": 0.9, "static_fraction": 0.2, "multi_object_fraction": 0.0,
            "out_dir": str(tmp_path / "run"), "ckpt_every": 1000, "seed": 3}
    base.update(kw)
    return TrainConfig(**base)


def _clip_iou(trainer: Trainer, seq) -> float:
    """Mean IoU of frames 1 and 2 segmented from frame 0's mask, over clips of the sequence."""
    model = trainer.model.eval()
    ious = []
    with torch.no_grad():
        for start in range(0, len(seq.frames) - 4, 4):
            idx = [start, start + 2, start + 4]
            frames = torch.from_numpy(seq.frames[idx])[None]
            masks = torch.from_numpy((seq.labels[idx] == 1).astype(np.float32))[None, :, None]
            out = forward_clip(model, frames, masks, torch.ones(1, 1))
            for t in (1, 2):
                pred, gt = out[f"prob_{t}"][0, 1] > 0.5, masks[0, t, 0] > 0.5
                ious.append(((pred & gt).sum() / (pred | gt).sum().clamp(min=1)).item())
    model.train()
    return float(np.mean(ious))


@pytest.mark.slow
def test_overfits_one_real_sequence(davis_root, tmp_path):
    torch.manual_seed(0)
    # Plain CE throughout: bootstrapping (hardest pixels only) would inflate later losses.
    cfg = _tiny(tmp_path, davis_root, bootstrap_start=1.0, bootstrap_end=1.0)
    seqs = load_sequences(davis_root, [ONE], cfg.image_size)
    trainer = Trainer(cfg, torch.device("cpu"))
    before = _clip_iou(trainer, seqs[0])
    history = trainer.fit(seqs, quiet=True)
    after = _clip_iou(trainer, seqs[0])
    first = np.mean([h["seg_loss"] for h in history[:10]])
    last = np.mean([h["seg_loss"] for h in history[-10:]])
    assert last < 0.5 * first, (first, last)
    print(f"seg loss {first:.3f} -> {last:.3f}, clip IoU {before:.3f} -> {after:.3f}")
    assert after > 0.7 and after > before + 0.3, (before, after)


def test_batch_workers_train_the_same_run_and_a_time_limit_stops_it_cleanly(davis_root, tmp_path):
    seqs = load_sequences(davis_root, [ONE, TWO], SIZE)
    extra = {"multi_object_fraction": 0.5, "corrupt_quality_weight": 1.0, "steps": 3,
             "pretrained_backbone": False}
    runs = []
    for workers in (0, 2):
        cfg = _tiny(tmp_path, davis_root, workers=workers, out_dir=str(tmp_path / f"w{workers}"),
                    **extra)
        torch.manual_seed(0)
        runs.append([h["loss"] for h in Trainer(cfg, torch.device("cpu")).fit(seqs, quiet=True)])
    assert len(runs[0]) == 3
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6)  # batches built elsewhere, same run

    cfg = _tiny(tmp_path, davis_root, workers=1, out_dir=str(tmp_path / "timed"), **extra)
    trainer = Trainer(cfg, torch.device("cpu"))
    assert len(trainer.fit(seqs, quiet=True, time_limit=0.0)) == 1  # one step, then out of time
    saved = torch.load(Path(cfg.out_dir) / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 1  # saved as at the last step, so --resume continues from there


def test_resume_continues_with_identical_losses(davis_root, tmp_path):
    seqs = load_sequences(davis_root, [ONE], SIZE)
    # With every random part on: distractors, corrupted QAM masks, the correspondence warp (and
    # the flow-based correspondence, deterministic given the frames).
    extra = {"multi_object_fraction": 0.5, "distractor_fraction": 0.5,
             "corrupt_quality_weight": 1.0, "correspondence_weight": 0.5,
             "flow_correspondence_weight": 0.5, "ema_decay": 0.5}
    cfg = _tiny(tmp_path, davis_root, steps=4, pretrained_backbone=False, **extra)
    torch.manual_seed(0)
    straight_trainer = Trainer(cfg, torch.device("cpu"))
    straight = straight_trainer.fit(seqs, quiet=True)
    assert all(h["corr_loss"] > 0 and h["flow_loss"] >= 0 for h in straight)

    cfg2 = _tiny(tmp_path, davis_root, steps=4, pretrained_backbone=False, **extra,
                 out_dir=str(tmp_path / "resumed"))
    torch.manual_seed(0)
    first = Trainer(cfg2, torch.device("cpu"))
    part1 = first.fit(seqs, steps=2, quiet=True)  # saves its checkpoint at step 2
    ckpt = Path(cfg2.out_dir) / "checkpoint.pt"
    saved = ckpt.read_bytes()
    first.fit(seqs, steps=3, quiet=True)  # "crashes" after logging step 3...
    ckpt.write_bytes(saved)  # ...before its next checkpoint
    torch.manual_seed(123)  # a fresh process: the model is re-initialised before loading
    second = Trainer(cfg2, torch.device("cpu"))
    assert second.resume() and second.step == 2
    part2 = second.fit(seqs, quiet=True)
    got = [h["loss"] for h in part1 + part2]
    want = [h["loss"] for h in straight]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    logged = (Path(cfg2.out_dir) / "log.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in logged] == [1, 2, 3, 4]
    for a, b in zip(straight_trainer.eval_model.parameters(), second.eval_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # the weight average resumes too

    plot_run = load_script("curves").plot_run

    png = plot_run(Path(cfg2.out_dir), tmp_path / "curves.png", window=2)
    assert Image.open(png).size[0] > 500


def test_weight_average_is_what_gets_validated_and_kept(davis_root, tmp_path):
    """With ema_decay the average (first update = the weights, then decay * avg + (1 - decay)
    * weights) is what validation, best.pt and the exported weights hold; training goes on
    from the trained weights."""
    from training.checkpoint import read_checkpoint

    seqs = load_sequences(davis_root, [ONE], SIZE)
    decay = 0.75
    trainer = Trainer(_tiny(tmp_path, davis_root, steps=3, pretrained_backbone=False,
                            ema_decay=decay), torch.device("cpu"))
    assert trainer.eval_model is trainer.model  # nothing averaged yet
    name = "decoder.pred.weight"
    want = None
    for step in (1, 2, 3):
        trainer.fit(seqs, steps=step, quiet=True)
        w = dict(trainer.model.named_parameters())[name].detach().clone()
        want = w if want is None else decay * want + (1 - decay) * w
    got = dict(trainer.eval_model.named_parameters())[name]
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, dict(trainer.model.named_parameters())[name])
    best = read_checkpoint(trainer.save("best.pt", optimizer=False))["model"][name]
    torch.testing.assert_close(best, want)
    # the committed snapshot (FP16) carries the average, and --resume-weights goes on with it
    trainer.save("checkpoint.pt")
    half_copy = load_script("snapshot_training").half_copy
    assert half_copy(Path(trainer.cfg.out_dir) / "checkpoint.pt", tmp_path / "latest.pth") == 3
    again = Trainer(_tiny(tmp_path, davis_root, steps=3, pretrained_backbone=False,
                          ema_decay=decay, out_dir=str(tmp_path / "again")), torch.device("cpu"))
    again.load_weights(tmp_path / "latest.pth", continue_run=True)
    assert again.step == 3 and again.eval_model is not again.model  # an average, restored
    torch.testing.assert_close(dict(again.eval_model.named_parameters())[name], want,
                               rtol=1e-3, atol=1e-3)  # FP16
    with pytest.raises(ConfigError, match="ema_decay"):
        _tiny(tmp_path, davis_root, ema_decay=1.0)


def test_quality_gradient_reaches_value_encoder_scaled(davis_root):
    """quality_feature_grad scales what the score loss sends into the value encoder (which also
    writes the memory values) and leaves the score head's own gradient and every output as is."""
    from training.checkpoint import load_model
    from training.losses import quality_loss
    from training.model import freeze_batchnorm

    shipped = Path(__file__).parents[1] / "models" / "qdmn-light.pth"
    seq = load_sequences(davis_root, [ONE], SIZE)[0]
    frames = torch.from_numpy(seq.frames[[0, 2, 4]])[None]
    masks = torch.from_numpy((seq.labels[[0, 2, 4]] == 1).astype(np.float32))[None, :, None]
    grads, scores = {}, {}
    for scale in (1.0, 0.1, 0.0):
        torch.manual_seed(0)
        model = load_model(shipped)[0].train()  # trained: the score head's last layer is not 0
        freeze_batchnorm(model)
        out = forward_clip(model, frames, masks, torch.ones(1, 1), quality_feature_grad=scale)
        loss = quality_loss(out["score_2"], out["prob_2"][:, 1:].detach(), masks[:, 2],
                            torch.ones(1, 1))
        loss.backward()
        encoder = [p.grad.norm() for n, p in model.named_parameters()
                   if n.startswith("mask_rgb_encoder") and p.grad is not None]
        head = [p.grad.norm() for n, p in model.named_parameters()
                if n.startswith("score") and p.grad is not None]
        grads[scale] = (torch.stack(encoder).norm().item() if encoder else 0.0,
                        torch.stack(head).norm().item())
        scores[scale] = out["score_2"].detach()
    assert grads[1.0][0] > 0
    assert grads[0.1][0] == pytest.approx(0.1 * grads[1.0][0], rel=1e-3)
    assert grads[0.0][0] == 0.0
    assert grads[0.1][1] == pytest.approx(grads[1.0][1], rel=1e-5)
    assert torch.equal(scores[1.0], scores[0.1]) and torch.equal(scores[1.0], scores[0.0])


def test_trainable_prefixes_freeze_everything_else(davis_root, tmp_path):
    seqs = load_sequences(davis_root, [ONE], SIZE)
    cfg = _tiny(tmp_path, davis_root, steps=2, pretrained_backbone=False,
                corrupt_quality_weight=1.0, trainable=("score",))
    trainer = Trainer(cfg, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit(seqs, quiet=True)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("score.") for n in changed)
    assert "score.fc2.weight" in changed
    with pytest.raises(ConfigError, match="no parameter name starts with"):
        Trainer(_tiny(tmp_path, davis_root, trainable=("scroe",)), torch.device("cpu"))


@pytest.mark.parametrize("option, prefixes", [
    ("encoder_lr_scale", ("rgb_encoder.", "mask_rgb_encoder.")),
    ("key_lr_scale", ("kv_q_f16.key_proj.", "kv_m_f16.key_proj."))])
def test_lr_scale_acts_only_on_its_parameters(davis_root, tmp_path, option, prefixes):
    seqs = load_sequences(davis_root, [ONE], SIZE)
    moved = {}
    for scale in (1.0, 0.0):
        torch.manual_seed(0)
        cfg = _tiny(tmp_path, davis_root, steps=2, pretrained_backbone=False,
                    **{option: scale}, out_dir=str(tmp_path / f"run{scale}"))
        trainer = Trainer(cfg, torch.device("cpu"))
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.fit(seqs, quiet=True)
        moved[scale] = {n for n, p in trainer.model.named_parameters()
                        if not torch.equal(p, before[n])}
    assert any(n.startswith(prefixes) for n in moved[1.0])
    assert moved[0.0] and not any(n.startswith(prefixes) for n in moved[0.0])
    assert {n for n in moved[1.0] if not n.startswith(prefixes)} == moved[0.0]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path):
    cfg = load_config(path)  # unknown fields and invalid values fail here
    assert cfg.model.backbone.startswith("efficientnet_lite") and cfg.val_sequences
    assert not set(cfg.val_sequences) & set(cfg.train_sequences)


def test_several_split_files_are_trained_on_together(tmp_path):
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets/train.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets/val.txt").write_text("b\nc\nd\n")
    cfg = TrainConfig(data_root=str(tmp_path), val_sequences=("d",),
                      split_file=("ImageSets/train.txt", "ImageSets/val.txt"))
    assert split_sequences(cfg) == (["a", "b", "c"], ["d"])


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_ends_a_training_segment_with_one_line_and_loses_no_step(
        davis_root, tmp_path, signum, code):
    """Ctrl-C, or SIGTERM (a background run ignores SIGINT; a scheduler or a closing session
    sends SIGTERM), ends a segment: a line that says how to continue, the shell's exit status,
    not a traceback from inside torch, and the run saved as at its last step, however long
    before that the last checkpoint was (SIGTERM killed the run without a word, and either
    lost the steps since the last checkpoint)."""
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data_root": str(davis_root), "split_file": "ImageSets/demo.txt", "image_size": list(SIZE),
        "crop_size": [96, 160], "batch_size": 1, "steps": 100_000, "ckpt_every": 100_000,
        "pretrained_backbone": False, "threads": 1, "out_dir": str(out), "log_every": 1}))
    # once a step is logged (the header is written before the first batch is drawn)
    got, err = signal_when_written("training/train.py", ["--config", str(config)], out,
                                   "log.csv", signum,
                                   ready=lambda p: len(p.read_text().splitlines()) >= 2)
    assert got == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: continue from the run's last checkpoint with `--config {config} --resume`")
    with open(out / "log.csv") as f:
        logged = [int(row["step"]) for row in csv.DictReader(f)]
    assert logged and logged == list(range(1, len(logged) + 1))
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == len(logged)
