"""Train QDMN: `python training/train.py --config configs/light.yaml [--resume]`.

Each step segments frames 1 and 2 of a 3-frame clip from the first frame's mask, memorising
frame 1's own prediction (as at inference), and trains the QAM score to predict the IoU of those
predictions. Samples and dropout are seeded by (seed, step), so `--resume` continues exactly.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml
from tqdm import tqdm

from training.checkpoint import load_state, read_checkpoint, save_weights
from training.config import ConfigError, ModelConfig, from_dict, register_dataclass
from training.data import (
    Sample,
    SampleSpec,
    Sequence,
    load_sequences,
    read_split,
    side_by_side,
    static_sample,
    video_sample,
)
from training.losses import BootstrapSchedule, bootstrapped_ce, mask_iou, quality_loss
from training.model import QDMN, freeze_batchnorm, normalize_uint8

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"


@register_dataclass
@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig.light)
    pretrained_backbone: bool = True
    data_root: str = "../shared/data/DAVIS2016"
    split_file: str = "ImageSets/2016/val.txt"
    val_sequences: tuple[str, ...] = ()  # never trained on
    train_sequences: tuple[str, ...] = ()  # empty: every sequence of the split not in val
    image_size: tuple[int, int] = (240, 432)  # frames are resized to this (inference size)
    crop_size: tuple[int, int] = (192, 320)
    batch_size: int = 4
    steps: int = 3000
    static_fraction: float = 0.3  # share of static-image pseudo-videos among samples
    multi_object_fraction: float = 0.25  # share of batches made of 2-object side-by-side clips
    # (fraction of training done, max frame skip) pairs: grow the skip, then narrow it again.
    max_skip: tuple[tuple[float, int], ...] = ((0.1, 5), (0.4, 15), (0.8, 10), (1.0, 5))
    lr: float = 1e-4
    lr_decay_at: float = 0.8  # fraction of steps after which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    weight_decay: float = 1e-7
    grad_clip: float = 3.0
    bootstrap_start: float = 0.1  # fractions of `steps` (plain CE before, top-p after)
    bootstrap_end: float = 0.6
    top_p: float = 0.15
    seed: int = 0
    out_dir: str = "runs/light"
    ckpt_every: int = 100
    log_every: int = 10
    threads: int = 0  # 0: all cores
    amp: bool = True  # mixed precision on CUDA only

    def __post_init__(self) -> None:
        for name in ("image_size", "crop_size"):
            h, w = getattr(self, name)
            if h % 16 or w % 16:
                raise ConfigError(f"train.{name}={h}x{w}: both must be multiples of 16")
        if any(c > s for c, s in zip(self.crop_size, self.image_size)):
            raise ConfigError(f"train.crop_size {self.crop_size} exceeds image_size {self.image_size}")
        object.__setattr__(self, "max_skip", tuple(tuple(x) for x in self.max_skip))

    def skip_at(self, step: int) -> int:
        done = step / max(1, self.steps)
        for until, skip in self.max_skip:
            if done < until:
                return int(skip)
        return int(self.max_skip[-1][1])

    def lr_at(self, step: int) -> float:
        return self.lr * (self.lr_gamma if step >= self.lr_decay_at * self.steps else 1.0)

    @property
    def bootstrap(self) -> BootstrapSchedule:
        return BootstrapSchedule(int(self.bootstrap_start * self.steps),
                                 int(self.bootstrap_end * self.steps), self.top_p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    data.update(overrides or {})
    return from_dict(TrainConfig, data, f"{path}")


# ---------------------------------------------------------------- one training step


def forward_clip(model: QDMN, frames: torch.Tensor, masks: torch.Tensor,
                 object_valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """frames: (B, 3, H, W, 3) uint8; masks: (B, 3, N, H, W) -> logits/probs/scores of frames 1, 2."""
    b = frames.shape[0]
    images = [normalize_uint8(frames[:, t]) for t in range(3)]
    k0, v0, _ = model.encode_memory(images[0], masks[:, 0])
    out: dict[str, torch.Tensor] = {}
    keys, values, prev = [k0], [v0], masks[:, 0]
    for t in (1, 2):
        qk, qv, f8, f4 = model.encode_query(images[t], prev.detach())
        mk, mv = torch.stack(keys, 1), torch.stack(values, 1)
        readout = model.read_memory(qk, mk, mv, mk.new_ones(b, len(keys)), None)
        logits, prob = model.decode(readout, qv, f8, f4, object_valid)
        k, v, score = model.encode_memory(images[t], prob[:, 1:])
        keys.append(k)
        values.append(v)
        prev = prob[:, 1:]
        out[f"logits_{t}"], out[f"prob_{t}"], out[f"score_{t}"] = logits, prob, score
    return out


def clip_loss(out: dict[str, torch.Tensor], masks: torch.Tensor, object_valid: torch.Tensor,
              p: float, score_activation: str) -> dict[str, torch.Tensor]:
    seg = qual = iou = 0.0
    for t in (1, 2):
        gt = masks[:, t]
        bg = (gt.sum(1, keepdim=True) < 0.5).float()
        target = torch.cat([bg, gt], 1).argmax(1)
        seg = seg + bootstrapped_ce(out[f"logits_{t}"].float(), target, p)
        qual = qual + quality_loss(out[f"score_{t}"], out[f"prob_{t}"][:, 1:], gt, object_valid,
                                   score_activation)
        ious = mask_iou(out[f"prob_{t}"][:, 1:].detach(), gt)
        iou = iou + (ious * object_valid).sum() / object_valid.sum().clamp(min=1) / 2
    return {"loss": seg + qual, "seg_loss": seg, "quality_loss": qual, "iou": iou}


def make_batch(cfg: TrainConfig, seqs: list[Sequence], step: int) -> list[Sample]:
    rng = np.random.default_rng([cfg.seed, step])
    multi = rng.random() < cfg.multi_object_fraction
    spec = SampleSpec(cfg.crop_size, 2 if multi else 1)

    def one() -> Sample:
        if rng.random() < cfg.static_fraction:
            return static_sample(rng, seqs, spec)
        return video_sample(rng, seqs, spec, cfg.skip_at(step))

    if multi:
        return [side_by_side(one(), one()) for _ in range(cfg.batch_size)]
    return [one() for _ in range(cfg.batch_size)]


def collate(samples: list[Sample], device: torch.device) -> tuple[torch.Tensor, ...]:
    frames = torch.from_numpy(np.stack([s.frames for s in samples])).to(device)
    masks = torch.from_numpy(np.stack([s.masks for s in samples])).to(device)
    valid = torch.from_numpy(np.stack([s.object_valid for s in samples])).to(device)
    return frames, masks, valid


# ---------------------------------------------------------------- the loop


class Trainer:
    def __init__(self, cfg: TrainConfig, device: torch.device | None = None):
        self.cfg = cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.out_dir = Path(cfg.out_dir)
        self.model = QDMN(cfg.model, pretrained_backbone=cfg.pretrained_backbone).to(self.device)
        self.model.train()
        freeze_batchnorm(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0

    @property
    def use_amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"config": {"model": self.cfg.model.to_dict(),
                           "image_size": list(self.cfg.image_size),
                           "train": self.cfg.to_dict()},
                "step": self.step}

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    **self.checkpoint_meta()}, tmp)
        os.replace(tmp, path)
        return path

    def resume(self) -> bool:
        path = self.out_dir / CHECKPOINT_NAME
        if not path.is_file():
            return False
        obj = read_checkpoint(path)
        saved = obj.get("config", {}).get("train", {}).get("model")
        if saved is not None and saved != self.cfg.model.to_dict():
            raise ConfigError(f"{path} was trained with another model config; use a new out_dir")
        load_state(self.model, obj["model"], str(path))
        self.optimizer.load_state_dict(obj["optimizer"])
        self.step = int(obj["step"])
        self._truncate_log()
        return True

    def _truncate_log(self) -> None:
        """Drop log rows past the checkpoint: those steps are about to be trained again."""
        path = self.out_dir / LOG_NAME
        if path.is_file():
            lines = path.read_text().splitlines(keepends=True)
            keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= self.step]
            path.write_text("".join(keep))

    def train_step(self, seqs: list[Sequence]) -> dict[str, float]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout, exactly resumable
        frames, masks, valid = collate(make_batch(cfg, seqs, self.step), self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        p = cfg.bootstrap.fraction(self.step)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            out = forward_clip(self.model, frames, masks, valid)
        losses = clip_loss(out, masks, valid, p, cfg.model.score_activation)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        stats = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}
        stats.update(p=p, lr=cfg.lr_at(self.step - 1))
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"loss is {stats['loss']} at step {self.step}")
        return stats

    def fit(self, seqs: list[Sequence], steps: int | None = None, quiet: bool = False) -> list[dict]:
        """Train until `steps` (default cfg.steps); returns the per-step stats of this call."""
        end = self.cfg.steps if steps is None else steps
        log_path = self.out_dir / LOG_NAME
        self.out_dir.mkdir(parents=True, exist_ok=True)
        history = []
        fields = ["step", "loss", "seg_loss", "quality_loss", "iou", "p", "lr", "sec"]
        new_log = not log_path.is_file()
        with open(log_path, "a", newline="") as f, \
                tqdm(total=end, initial=self.step, desc="train", disable=quiet) as bar:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new_log:
                writer.writeheader()
            while self.step < end:
                t0 = time.perf_counter()
                stats = self.train_step(seqs)
                stats.update(step=self.step, sec=time.perf_counter() - t0)
                history.append(stats)
                writer.writerow({k: stats[k] for k in fields})
                if self.step % self.cfg.log_every == 0:
                    f.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats['iou']:.3f}")
                if self.step % self.cfg.ckpt_every == 0 or self.step == end:
                    self.save()
        return history


def validate(trainer: Trainer, names: list[str]) -> dict[str, float]:
    """J&F of the PyTorch reference inference on the held-out sequences (DAVIS toolkit rules),
    appended to out_dir/val.csv."""
    # The metric code is numpy-only and shared with the benchmarks; imported here so training
    # without --validate does not need it.
    from evaluation.sequences import evaluate_sequences
    from training.reference import ReferenceSegmenter

    cfg = trainer.cfg
    seg = ReferenceSegmenter(trainer.model.eval(), size=cfg.image_size,
                             threads=cfg.threads or None)
    summary = evaluate_sequences(lambda: seg, cfg.data_root, names).summary()
    trainer.model.train()
    freeze_batchnorm(trainer.model)
    row = {"step": trainer.step, "jf": summary.jf_mean, "j": summary.j_mean, "f": summary.f_mean}
    path = trainer.out_dir / "val.csv"
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    return row


def split_sequences(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    names = list(cfg.train_sequences) or read_split(cfg.data_root, cfg.split_file)
    val = list(cfg.val_sequences)
    train = [n for n in names if n not in val]
    if not train:
        raise ConfigError("no training sequences left after removing the validation ones")
    return train, val


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML file with TrainConfig fields")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    ap.add_argument("--steps", type=int, help="stop at this step (default: config steps)")
    ap.add_argument("--out-dir", help="override the config's out_dir")
    ap.add_argument("--validate", action="store_true",
                    help="after training, report J&F on the config's val_sequences")
    ap.add_argument("--export-fp16", metavar="PATH",
                    help="after training, write FP16 weights + config (no optimizer) here")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, {"out_dir": args.out_dir} if args.out_dir else None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        train_names, val_names = split_sequences(cfg)
        seqs = load_sequences(cfg.data_root, train_names, cfg.image_size)
        trainer = Trainer(cfg)
        if args.resume and trainer.resume():
            print(f"resumed from step {trainer.step}", file=sys.stderr)
        trainer.fit(seqs, args.steps)
        if args.validate and val_names:
            row = validate(trainer, val_names)
            print(f"validation at step {row['step']} on {', '.join(val_names)}: "
                  f"J&F {row['jf']:.3f}  J {row['j']:.3f}  F {row['f']:.3f}")
        if args.export_fp16:
            save_weights(trainer.model, args.export_fp16, trainer.checkpoint_meta(), half=True)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
