"""Train QDMN: `python training/train.py --config configs/light.yaml [--resume]`.

Each step segments frames 1 and 2 of a 3-frame clip from the first frame's mask, memorising
frame 1's own prediction (as at inference), and trains the QAM score to predict the IoU of those
predictions and of deliberately corrupted masks (so it learns what a bad mask looks like).
Samples and dropout are seeded by (seed, step), so `--resume` continues exactly; with
`--resume-weights` (committed FP16 weights, no optimizer state) it continues with a fresh
optimizer and a short learning-rate warm-up. Validation runs every `val_every` steps and the
best checkpoint by validation J&F is kept beside the latest.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from runtime.cli import fail
from runtime.core.config import check_threads
from runtime.core.errors import OutputError
from runtime.core.manifest import STRIDE
from runtime.media.davis import list_sequences
from runtime.media.outputs import (
    OutputLock,
    as_received,
    deferred_signals,
    interrupt_exit_code,
    replacing,
    terminate_as_interrupt,
)
from training.checkpoint import load_state, read_checkpoint, save_weights
from training.config import ConfigError, ModelConfig, from_dict, register_dataclass
from training.correspondence import correspondence_loss, flow_correspondence_loss
from training.data import (
    Pool,
    Sample,
    SampleSpec,
    Sources,
    copy_paste_sample,
    load_sequences,
    load_stills,
    side_by_side,
    static_sample,
    video_sample,
)
from training.losses import BootstrapSchedule, bootstrapped_ce, mask_iou, quality_loss
from training.model import QDMN, freeze_batchnorm, normalize_uint8

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
LOG_NAME = "log.csv"
VAL_NAME = "val.csv"
HISTORY_NAME = "segments.txt"  # where each segment of the run started from


@register_dataclass
@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig.light)
    pretrained_backbone: bool = True
    data_root: str = "../shared/data/DAVIS2016"
    # one split file, or several whose sequences are trained on together (e.g. DAVIS-2016's
    # train and val splits, less the val_sequences)
    split_file: str | tuple[str, ...] = "ImageSets/2016/val.txt"
    val_sequences: tuple[str, ...] = ()  # never trained on
    train_sequences: tuple[str, ...] = ()  # empty: every sequence of the split not in val
    image_size: tuple[int, int] = (240, 432)  # frames are resized to this (inference size)
    crop_size: tuple[int, int] = (192, 320)
    batch_size: int = 4
    steps: int = 3000
    # Frames are stored at image_size * scale_range[1] and each clip is taken at a log-uniform
    # scale in scale_range of image_size, so a larger export still sees familiar object sizes.
    scale_range: tuple[float, float] = (1.0, 1.0)
    static_fraction: float = 0.3  # share of static-image pseudo-videos among samples
    multi_object_fraction: float = 0.25  # share of batches with several objects
    three_object_fraction: float = 0.0  # share of those with three objects (else two)
    side_by_side_fraction: float = 1.0  # share of 2-object clips built side by side (else
    # copy-paste: objects of other clips pasted, moving, in front of or behind the clip's own)
    # share of single-object and copy-paste clips that also get 1-2 unlabelled pasted objects
    # (other clips' objects, never a copy of the target) that the model must leave as background
    distractor_fraction: float = 0.0
    # Relative weights of clips with 1, 2, ... objects (empty: multi_object_fraction and
    # three_object_fraction decide between 1, 2 and 3). Clips of 3+ objects are copy-paste.
    object_weights: tuple[float, ...] = ()
    twin_fraction: float = 0.25  # share of pasted targets that copy an object already there
    crossing_fraction: float = 0.0  # share of pasted objects whose path crosses an object's
    leave_fraction: float = 0.0  # share of pasted targets out of the middle frame, back after
    small_fraction: float = 0.0  # share of copy-paste clips whose pastes are all small
    carry_fraction: float = 0.0  # share of pasted targets carried by an object (a bag, a rider)
    # Photos with masks (a folder with images/ and masks/, e.g. ../shared/data/pets): static
    # pseudo-videos and objects to paste; a clip's source is one with probability still_fraction.
    stills_root: str = ""
    still_fraction: float = 0.0
    # Many-object validation videos (DAVIS-2017 layout), never trained on: root, its resolution
    # folder and the sequence names.
    val_many_root: str = ""
    val_many_resolution: str = "480p"
    val_many: tuple[str, ...] = ()
    quality_weight: float = 1.0  # QAM loss on the model's own predictions
    corrupt_quality_weight: float = 0.0  # QAM loss on corrupted ground-truth masks
    # Scale on the gradient the QAM losses send into the value encoder (the score head itself
    # always gets the full gradient). The value encoder also writes the memory values: at 1.0
    # the score losses, larger than the mask loss, pull it away from segmentation.
    quality_feature_grad: float = 1.0
    # Weight of the dense correspondence loss (training.correspondence): the memory keys learn to
    # match on a warped copy of each clip's first frame, whose true matches are known.
    correspondence_weight: float = 0.0
    # The same between a clip's real frames 0 and 2, matches from optical flow (real motion).
    flow_correspondence_weight: float = 0.0
    # Parameter-name prefixes to train, the rest frozen; empty: all. ["score"] is a stage that
    # calibrates the QAM score head of a trained model without touching its segmentation.
    trainable: tuple[str, ...] = ()
    # lr multiplier for the two ImageNet encoders (rgb_encoder, mask_rgb_encoder): they must adapt
    # (frozen was worse) but fit the few training videos fastest.
    encoder_lr_scale: float = 1.0
    # lr multiplier for the two key projections: with the correspondence loss at the base lr
    # the keys flatten to uniform read weights instead of matching (they pass that plateau at
    # 1e-3, stage 2), while the rest of the model must move slowly.
    key_lr_scale: float = 1.0
    # (fraction of training done, max frame skip) pairs: grow the skip, then narrow it again.
    max_skip: tuple[tuple[float, int], ...] = ((0.1, 5), (0.4, 15), (0.8, 10), (1.0, 5))
    lr: float = 1e-4
    # fraction of steps after which lr is multiplied by lr_gamma; >= 1: never, also when a run
    # is continued past `steps` (`--steps`), where every other schedule stays at its end
    lr_decay_at: float = 0.8
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
    # Processes that build batches ahead of the training step (0: in the training process). A
    # batch depends only on (seed, step), so the run is the same with any number of workers.
    workers: int = 0
    amp: bool = True  # mixed precision on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU (FP32 master weights)
    val_every: int = 0  # validate (and keep the best checkpoint) every N steps; 0: never
    # Decay of an exponential moving average of the weights (0: none). When on, validation,
    # best.pt and --export-fp16 use the average: on 12 training videos validation J&F swings by
    # up to 0.17 between checkpoints 150 steps apart, and averaging over the trajectory
    # (Polyak averaging) smooths what a single step's weights overfit.
    ema_decay: float = 0.0
    warmup_steps: int = 100  # lr ramp for a fresh optimizer on loaded weights

    def __post_init__(self) -> None:
        for name in ("image_size", "crop_size"):
            h, w = getattr(self, name)
            if h % STRIDE or w % STRIDE:
                raise ConfigError(f"train.{name}={h}x{w}: both must be multiples of {STRIDE}")
        if any(c > s for c, s in zip(self.crop_size, self.image_size)):
            raise ConfigError(f"train.crop_size {self.crop_size} exceeds image_size {self.image_size}")
        object.__setattr__(self, "max_skip", tuple(tuple(x) for x in self.max_skip))
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"train.scale_range={self.scale_range}: expected 0 < min <= max")
        # A clip's frame is never smaller than the crop (training.data clamps the scale up), so a
        # smaller minimum would silently pile those clips onto the crop's scale.
        floor = max(c / s for c, s in zip(self.crop_size, self.image_size))
        if lo < floor - 1e-6:
            raise ConfigError(
                f"train.scale_range={self.scale_range}: at scale {lo:g} a {self.image_size[0]}x"
                f"{self.image_size[1]} frame is smaller than the {self.crop_size[0]}x"
                f"{self.crop_size[1]} crop; the smallest reachable scale is {floor:.3f}: raise the "
                "minimum or lower crop_size")
        if self.object_weights and (min(self.object_weights) < 0 or not sum(self.object_weights)):
            raise ConfigError(f"train.object_weights={self.object_weights}: expected weights >= 0 "
                              "that are not all 0")
        if self.still_fraction and not self.stills_root:
            raise ConfigError("train.still_fraction is set but stills_root is empty")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay={self.ema_decay}: expected 0 <= decay < 1")

    @property
    def load_size(self) -> tuple[int, int]:
        """Size the training sequences are held at: the largest scale clips are taken at."""
        s = self.scale_range[1]
        return round(self.image_size[0] * s), round(self.image_size[1] * s)

    def skip_at(self, step: int) -> int:
        done = step / max(1, self.steps)
        for until, skip in self.max_skip:
            if done < until:
                return int(skip)
        return int(self.max_skip[-1][1])

    def lr_at(self, step: int) -> float:
        decayed = self.lr_decay_at < 1.0 and step >= self.lr_decay_at * self.steps
        return self.lr * (self.lr_gamma if decayed else 1.0)

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


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; `scale` x its gradient in the backward pass."""
    if scale == 1.0:
        return x
    base = x.detach()
    return base if scale == 0.0 else base + (x - base) * scale  # (x - base) is exactly 0


def forward_clip(model: QDMN, frames: torch.Tensor, masks: torch.Tensor,
                 object_valid: torch.Tensor, qam_masks: torch.Tensor | None = None,
                 quality_feature_grad: float = 1.0) -> dict[str, torch.Tensor]:
    """frames: (B, 3, H, W, 3) uint8; masks: (B, 3, N, H, W) -> logits/probs/scores of frames 1, 2
    (+ `score_c`, the QAM scores of qam_masks (B, N, H, W) on frame 2, when given).

    quality_feature_grad: see TrainConfig."""
    b = frames.shape[0]
    images = [normalize_uint8(frames[:, t]) for t in range(3)]

    def encode_memory(image: torch.Tensor, m: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, v, features = model.memory_kv(image, m)
        score = model.assess_quality(scale_grad(features, quality_feature_grad))
        return k, v, score.view(m.shape[:2])

    k0, v0, _ = encode_memory(images[0], masks[:, 0])
    out: dict[str, torch.Tensor] = {}
    keys, values, prev = [k0], [v0], masks[:, 0]
    for t in (1, 2):
        qk, qv, f8, f4 = model.encode_query(images[t], prev.detach())
        mk, mv = torch.stack(keys, 1), torch.stack(values, 1)
        readout = model.read_memory(qk, mk, mv, mk.new_ones(b, len(keys)), None)
        logits, prob = model.decode(readout, qv, f8, f4, object_valid)
        k, v, score = encode_memory(images[t], prob[:, 1:])
        keys.append(k)
        values.append(v)
        prev = prob[:, 1:]
        out[f"logits_{t}"], out[f"prob_{t}"], out[f"score_{t}"] = logits, prob, score
        out[f"query_key_{t}"] = qk
    if qam_masks is not None:
        out["score_c"] = encode_memory(images[2], qam_masks)[2]
    out["key_0"] = k0
    return out


def clip_loss(out: dict[str, torch.Tensor], masks: torch.Tensor, object_valid: torch.Tensor,
              p: float, score_activation: str, qam_masks: torch.Tensor | None = None,
              weights: tuple[float, float] = (1.0, 1.0), void: torch.Tensor | None = None,
              ) -> dict[str, torch.Tensor]:
    """Segmentation loss + weights[0] x QAM loss on the predictions + weights[1] x QAM loss on
    the corrupted masks (when given). void: (B, 3, H, W) pixels no loss scores (not the mask
    loss, not the IoU the QAM score is trained towards)."""
    seg = qual = iou = 0.0
    for t in (1, 2):
        gt = masks[:, t]
        bg = (gt.sum(1, keepdim=True) < 0.5).float()
        target = torch.cat([bg, gt], 1).argmax(1)
        scored = None if void is None else ~void[:, t]
        seg = seg + bootstrapped_ce(out[f"logits_{t}"].float(), target, p, scored)
        qual = qual + quality_loss(out[f"score_{t}"], out[f"prob_{t}"][:, 1:], gt, object_valid,
                                   score_activation, scored)
        ious = mask_iou(out[f"prob_{t}"][:, 1:].detach(), gt, scored)
        iou = iou + (ious * object_valid).sum() / object_valid.sum().clamp(min=1) / 2
    qual_c = torch.zeros(())
    if qam_masks is not None and "score_c" in out:
        qual_c = quality_loss(out["score_c"], qam_masks, masks[:, 2], object_valid,
                              score_activation, None if void is None else ~void[:, 2])
    loss = seg + weights[0] * qual + weights[1] * qual_c
    return {"loss": loss, "seg_loss": seg, "quality_loss": qual, "quality_loss_c": qual_c,
            "iou": iou}


def object_count(cfg: TrainConfig, rng: np.random.Generator) -> int:
    if cfg.object_weights:
        w = np.asarray(cfg.object_weights, np.float64)
        return int(rng.choice(len(w), p=w / w.sum())) + 1
    if rng.random() < cfg.multi_object_fraction:
        return 3 if rng.random() < cfg.three_object_fraction else 2
    return 1


def make_batch(cfg: TrainConfig, sources: Sources, step: int) -> list[Sample]:
    """One batch; all its clips have the same number of object channels."""
    rng = np.random.default_rng([cfg.seed, step])
    n = object_count(cfg, rng)
    spec = SampleSpec(cfg.crop_size, n, cfg.image_size, cfg.scale_range)
    skip = cfg.skip_at(step)

    def distractors() -> int:
        # No draw at 0: runs from before the option keep their exact sample stream.
        if cfg.distractor_fraction and rng.random() < cfg.distractor_fraction:
            return int(rng.integers(1, 3))
        return 0

    def single() -> Sample:
        if rng.random() < cfg.static_fraction:
            return static_sample(rng, sources, spec)
        return video_sample(rng, sources, spec, skip)

    def pasted(d: int) -> Sample:
        return copy_paste_sample(rng, sources, spec, skip, cfg.static_fraction, d,
                                 cfg.twin_fraction, cfg.crossing_fraction,
                                 cfg.leave_fraction, cfg.small_fraction, cfg.carry_fraction)

    def one() -> Sample:
        if n == 1:
            d = distractors()
            return pasted(d) if d else single()
        if n == 2 and rng.random() < cfg.side_by_side_fraction:
            return side_by_side(rng, single(), single())
        return pasted(distractors())

    return [one() for _ in range(cfg.batch_size)]


# frames, masks, object_valid, qam_masks, void
Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def stack_batch(samples: list[Sample]) -> Batch:
    """Samples -> frames, masks, object_valid, qam_masks, void, each stacked over the batch."""
    return tuple(np.stack([getattr(s, k) for s in samples])  # type: ignore[return-value]
                 for k in ("frames", "masks", "object_valid", "qam_masks", "void"))


class BatchStream(torch.utils.data.Dataset):
    """Batches `start` .. `end` - 1 of a run, for a DataLoader whose workers build them ahead of
    the training step (on a GPU, building clips is slower than training on them)."""

    def __init__(self, cfg: TrainConfig, sources: Sources, start: int, end: int):
        self.cfg, self.sources, self.start, self.end = cfg, sources, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __getitem__(self, i: int) -> Batch:
        return stack_batch(make_batch(self.cfg, self.sources, self.start + i))


def _one_thread(_: int) -> None:
    """One torch thread per batch worker: the workers are the parallelism."""
    torch.set_num_threads(1)


def batch_loader(cfg: TrainConfig, sources: Sources, start: int, end: int,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches start .. end - 1 in order, built by cfg.workers processes (or in this one).

    With workers, OpenCV is set to one thread here, process-wide, before they fork: they inherit
    it (setting it in a forked worker hangs on the parent's thread pool)."""
    if cfg.workers:
        cv2.setNumThreads(1)
    return torch.utils.data.DataLoader(
        BatchStream(cfg, sources, start, end), batch_size=None, shuffle=False,
        num_workers=cfg.workers, pin_memory=pin_memory,
        worker_init_fn=_one_thread if cfg.workers else None,
        prefetch_factor=4 if cfg.workers else None)


# ---------------------------------------------------------------- the loop


class Trainer:
    def __init__(self, cfg: TrainConfig, device: torch.device | None = None):
        self.cfg = cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.out_dir = Path(cfg.out_dir)
        self.model = QDMN(cfg.model, pretrained_backbone=cfg.pretrained_backbone).to(self.device)
        self.model.train()
        freeze_batchnorm(self.model)
        if cfg.trainable:
            prefixes = tuple(cfg.trainable)
            if not any(n.startswith(prefixes) for n, _ in self.model.named_parameters()):
                raise ConfigError(f"train.trainable={list(cfg.trainable)}: no parameter name "
                                  "starts with these")
            for name, p in self.model.named_parameters():
                if not name.startswith(prefixes):
                    p.requires_grad_(False)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        # One Adam group per lr multiplier in use; a single group when none is (as older
        # checkpoints' optimizer state has).
        scaled = {prefixes: scale for prefixes, scale in (
            (("rgb_encoder.", "mask_rgb_encoder."), cfg.encoder_lr_scale),
            (("kv_q_f16.key_proj.", "kv_m_f16.key_proj."), cfg.key_lr_scale)) if scale != 1.0}
        groups: list[dict[str, Any]] = [
            {"params": [p for n, p in named if not any(n.startswith(x) for x in scaled)],
             "lr_scale": 1.0}]
        groups += [{"params": [p for n, p in named if n.startswith(prefixes)], "lr_scale": scale}
                   for prefixes, scale in scaled.items()]
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # Averages from the first update on, which copies the weights trained so far.
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                                  use_buffers=True) if cfg.ema_decay else None)
        self.step = 0
        self.warmup_from: int | None = None  # step of a fresh-optimizer resume
        self.best_jf = -math.inf
        self.val_videos: list[Any] = []  # training.validation.ValVideo, set by the caller

    @property
    def eval_model(self) -> QDMN:
        """The weights that are validated and shipped: the average once there is one."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module  # type: ignore[return-value]
        return self.model

    @property
    def use_amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    def autocast(self) -> torch.autocast:
        if self.device.type == "cuda":
            return torch.autocast("cuda", enabled=self.use_amp)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.cpu_bf16)

    def lr_at(self, step: int) -> float:
        lr = self.cfg.lr_at(step)
        if self.warmup_from is not None and self.cfg.warmup_steps > 0:
            lr *= min(1.0, (step - self.warmup_from + 1) / self.cfg.warmup_steps)
        return lr

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"config": {"model": self.cfg.model.to_dict(),
                           "image_size": list(self.cfg.image_size),
                           "train": self.cfg.to_dict()},
                "step": self.step, "best_jf": self.best_jf, "warmup_from": self.warmup_from}

    def save(self, name: str = CHECKPOINT_NAME, optimizer: bool = True) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        # With the optimizer: the run's state (the trained weights, their average, the
        # optimizer). Without: the weights to use.
        weights = self.model if optimizer else self.eval_model
        state = {"model": weights.state_dict(), **self.checkpoint_meta()}
        if optimizer:
            state["optimizer"] = self.optimizer.state_dict()
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
        with replacing(path) as tmp:
            torch.save(state, tmp)
        return path

    def note(self, text: str) -> None:
        """Append a line to the run's segment history (where each segment started from)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.out_dir / HISTORY_NAME, "a") as f:
            f.write(f"{stamp} step {self.step}: {text}\n")

    def _check_model_config(self, obj: dict[str, Any], path: Path) -> None:
        saved = obj.get("config", {}).get("model")
        if saved is not None and saved != self.cfg.model.to_dict():
            raise ConfigError(f"{path} was trained with another model config; use a new out_dir")

    def resume(self) -> bool:
        path = self.out_dir / CHECKPOINT_NAME
        if not path.is_file():
            return False
        obj = read_checkpoint(path)
        self._check_model_config(obj, path)
        load_state(self.model, obj["model"], str(path))
        self.optimizer.load_state_dict(obj["optimizer"])
        if self.ema is not None:
            if "ema" not in obj:
                raise ConfigError(f"{path} has no weight average; ema_decay was off in this run")
            self.ema.load_state_dict(obj["ema"])
        self.step = int(obj["step"])
        self.best_jf = float(obj.get("best_jf", -math.inf))
        self.warmup_from = obj.get("warmup_from")
        self._truncate_log()
        return True

    def load_weights(self, path: str | Path, *, continue_run: bool) -> None:
        """Start from weights without optimizer state (e.g. committed FP16 weights).

        continue_run: take the step (and best J&F) recorded with them; else start at step 0.
        Either way the fresh optimizer's lr ramps up over `warmup_steps`.
        """
        path = Path(path)
        obj = read_checkpoint(path)
        self._check_model_config(obj, path)
        state = {k: v.float() if v.is_floating_point() else v for k, v in obj["model"].items()}
        load_state(self.model, state, str(path))
        if continue_run:
            self.step = int(obj.get("step", 0))
            self.best_jf = float(obj.get("best_jf", -math.inf))
            self._truncate_log()
            if self.ema is not None and "ema" in obj:  # the average goes on where it was
                self.ema.load_state_dict({k: v.float() if v.is_floating_point() else v
                                          for k, v in obj["ema"].items()})
        self.warmup_from = self.step  # a fresh Adam on trained weights: ramp the lr up

    def _truncate_log(self) -> None:
        """Drop log rows past the checkpoint: those steps are about to be trained again."""
        for name in (LOG_NAME, VAL_NAME):
            path = self.out_dir / name
            if path.is_file():
                lines = path.read_text().splitlines(keepends=True)
                keep = lines[:1] + [ln for ln in lines[1:]
                                    if int(ln.split(",", 1)[0]) <= self.step]
                path.write_text("".join(keep))

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """One update on batch `self.step`, as `batch_loader` yields it (stack_batch's arrays as
        tensors)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout, exactly resumable
        frames, masks, valid, qam_masks, void = (x.to(self.device, non_blocking=True)
                                                  for x in batch)
        use_corrupt = cfg.corrupt_quality_weight > 0
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # absent in older checkpoints
        p = cfg.bootstrap.fraction(self.step)
        with self.autocast():
            out = forward_clip(self.model, frames, masks, valid,
                               qam_masks if use_corrupt else None, cfg.quality_feature_grad)
            corr = torch.zeros(())
            if cfg.correspondence_weight > 0:
                corr = correspondence_loss(self.model, normalize_uint8(frames[:, 0]),
                                           masks[:, 0], out["key_0"][:, 0])
            flow = torch.zeros(())
            if cfg.flow_correspondence_weight > 0:
                flow = flow_correspondence_loss(out["query_key_2"], out["key_0"][:, 0], frames, 2)
        losses = clip_loss(out, masks, valid, p, cfg.model.score_activation,
                           qam_masks if use_corrupt else None,
                           (cfg.quality_weight, cfg.corrupt_quality_weight), void)
        losses["loss"] = (losses["loss"] + cfg.correspondence_weight * corr
                          + cfg.flow_correspondence_weight * flow)
        losses["corr_loss"], losses["flow_loss"] = corr, flow
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        stats = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}
        stats.update(p=p, lr=lr)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"loss is {stats['loss']} at step {self.step}")
        return stats

    def fit(self, sources: Sources, steps: int | None = None, quiet: bool = False,
            time_limit: float | None = None) -> list[dict]:
        """Train until `steps` (default cfg.steps), or until `time_limit` seconds have passed
        (then validated and saved as at the last step); returns the per-step stats of this call.
        """
        end = self.cfg.steps if steps is None else steps
        deadline = None if time_limit is None else time.monotonic() + time_limit
        log_path = self.out_dir / LOG_NAME
        self.out_dir.mkdir(parents=True, exist_ok=True)
        history = []
        fields = ["step", "loss", "seg_loss", "quality_loss", "quality_loss_c", "corr_loss",
                  "flow_loss", "iou", "p", "lr", "sec"]
        new_log = not log_path.is_file()
        if not new_log:  # a log begun before a column was added keeps its own columns
            with open(log_path, newline="") as f:
                fields = next(csv.reader(f), fields)
        with open(log_path, "a", newline="") as f, \
                tqdm(total=end, initial=self.step, desc="train", disable=quiet) as bar:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new_log:
                writer.writeheader()
            batches = iter(batch_loader(self.cfg, sources, self.step, end,
                                        pin_memory=self.device.type == "cuda")
                           if self.step < end else ())
            unvalidated = False  # the last step is due a validation that has not run
            whole = True  # no step is half taken (one that raised is not saved)
            try:
                while self.step < end:
                    t0 = time.perf_counter()
                    batch = next(batches)
                    # A step is taken whole, and logged, or not at all: Ctrl-C/SIGTERM wait for
                    # its end, so that the interrupt can save it (below). One that comes as the
                    # signals are being held finds the last step whole: it is saved.
                    with deferred_signals():
                        whole = False
                        stats = self.train_step(batch)
                        stats.update(step=self.step, sec=time.perf_counter() - t0)
                        history.append(stats)
                        writer.writerow(stats)
                        if deadline is not None and time.monotonic() >= deadline:
                            end = self.step  # out of time: finish as at the last step
                        unvalidated = bool(self.cfg.val_every and self.val_videos and (
                            self.step % self.cfg.val_every == 0 or self.step == end))
                        whole = True
                    if self.step % self.cfg.log_every == 0:
                        f.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats['iou']:.3f}")
                    if unvalidated:
                        f.flush()
                        self.validate_and_keep_best()
                        unvalidated = False
                    if self.step % self.cfg.ckpt_every == 0 or self.step == end:
                        self.save()
            except KeyboardInterrupt:
                # Saved as at the last step, so that a resume loses none of them; unless that
                # step was due a validation that did not run, which a resume from the last
                # checkpoint redoes (with the steps since).
                if whole and not unvalidated:
                    with deferred_signals():  # a second Ctrl-C does not cut the save short
                        f.flush()
                        self.save()
                raise
        return history

    def validate_and_keep_best(self) -> dict[str, Any]:
        """Validation row appended to val.csv; best.pt replaced when J&F improves."""
        t0 = time.perf_counter()
        row = validate(self)
        row["sec"] = round(time.perf_counter() - t0, 1)
        if row["jf_all"] > self.best_jf:
            self.best_jf = row["jf_all"]
            self.save(BEST_NAME, optimizer=False)
            row["best"] = 1
        append_row(self.out_dir / VAL_NAME, row)
        return row


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append to a CSV; when the row brings new columns, the file is rewritten with them
    (earlier rows get blanks) so no value ever lands under another column's header."""
    rows: list[dict[str, Any]] = []
    fields = list(row)
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            old = list(reader.fieldnames or [])
        fields = old + [k for k in row if k not in old]
        if fields == old:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
            return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows + [row])


def validate(trainer: Trainer) -> dict[str, Any]:
    """J&F (one and two objects) and QAM statistics of the PyTorch reference inference on the
    held-out videos."""
    from training.reference import ReferenceSegmenter
    from training.validation import validate as run_validation

    cfg = trainer.cfg
    model = trainer.eval_model.eval()
    seg = ReferenceSegmenter(model, size=cfg.image_size, threads=cfg.threads or None)
    try:
        report, _ = run_validation(model, trainer.val_videos, cfg.image_size, lambda: seg)
    finally:
        trainer.model.train()
        freeze_batchnorm(trainer.model)
    q = report.quality
    row: dict[str, Any] = {"step": trainer.step, "jf_all": round(report.jf_all, 4),
                           "jf_single": round(report.jf_single, 4),
                           "jf_multi": round(report.jf_multi, 4)}
    if np.isfinite(report.jf_many):
        row["jf_many"] = round(report.jf_many, 4)
    if report.switches:
        row["id_switch"] = round(report.switch_rate, 4)
    if q is not None:
        row.update(qam_pearson=round(q.pearson, 4), qam_pearson_within=round(q.pearson_within, 4),
                   score_pearson=round(q.pearson_score, 4),
                   qam_pearson_gate=round(q.pearson_gate, 4),
                   gate_reject_bad=round(q.reject_bad, 4),
                   gate_accept_good=round(q.accept_good, 4))
    row.update({f"jf_{k}": round(v, 4) for k, v in report.jf.items()})
    row["best"] = 0
    return row


def split_sequences(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    files = (cfg.split_file,) if isinstance(cfg.split_file, str) else cfg.split_file
    names = list(cfg.train_sequences) or list(dict.fromkeys(
        n for f in files for n in list_sequences(cfg.data_root, Path(cfg.data_root) / f)))
    val = list(cfg.val_sequences)
    # a many-object validation video is never trained on either, whichever root lists it
    train = [n for n in names if n not in val and n not in cfg.val_many]
    if not train:
        raise ConfigError("no training sequences left after removing the validation ones")
    return train, val


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML file with TrainConfig fields")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    ap.add_argument("--resume-weights", metavar="PATH",
                    help="when out_dir has no checkpoint: continue from these weights (their "
                         "recorded step) with a fresh optimizer and a warm-up")
    ap.add_argument("--init", metavar="PATH",
                    help="when out_dir has no checkpoint: initialise from these weights, step 0")
    ap.add_argument("--steps", type=int, help="stop at this step (default: config steps)")
    ap.add_argument("--out-dir", help="override the config's out_dir")
    ap.add_argument("--data-root", help="override the config's data_root (a copy of the data "
                                        "on another machine)")
    ap.add_argument("--time-limit", type=float, metavar="SEC",
                    help="stop after this many seconds of training (validated and saved as at "
                         "the last step); for a machine lent for a fixed time")
    ap.add_argument("--validate", action="store_true",
                    help="after training, report validation J&F on the config's val_sequences "
                         "(and append the row to out_dir/validate.csv)")
    ap.add_argument("--export-fp16", metavar="PATH",
                    help="after training, write FP16 weights + config (no optimizer) here")
    args = ap.parse_args(argv)
    try:
        overrides = {k: v for k, v in (("out_dir", args.out_dir), ("data_root", args.data_root))
                     if v}
        cfg = load_config(args.config, overrides)
        if cfg.threads:
            torch.set_num_threads(check_threads(cfg.threads))
        lock = OutputLock(cfg.out_dir)  # two runs in one out_dir would mix checkpoints and logs
        try:
            # SIGTERM (how a scheduler or a closing session ends a background run, whose
            # SIGINT the shell ignores) stops a segment as Ctrl-C does
            with terminate_as_interrupt():
                try:
                    _train(args, cfg)
                except KeyboardInterrupt as e:  # as the signal that came, for the exit status
                    raise as_received(e) from None
        finally:
            lock.release()
    except (ConfigError, ValueError, FileNotFoundError, OutputError) as e:
        return fail(e)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: how a training segment is ended
        print(f"interrupted: continue from the run's last checkpoint with `--config "
              f"{args.config} --resume`", file=sys.stderr)
        return interrupt_exit_code(e)
    return 0


def _train(args: argparse.Namespace, cfg: TrainConfig) -> None:
    train_names, val_names = split_sequences(cfg)
    videos = load_sequences(cfg.data_root, train_names, cfg.load_size)
    stills = load_stills(cfg.stills_root) if cfg.stills_root else []
    sources = Pool(videos, stills, cfg.still_fraction)
    trainer = Trainer(cfg)
    if args.resume and trainer.resume():
        print(f"resumed from step {trainer.step}", file=sys.stderr)
        trainer.note(f"resumed from {trainer.out_dir / CHECKPOINT_NAME} (optimizer included)")
    elif args.resume_weights:
        trainer.load_weights(args.resume_weights, continue_run=True)
        trainer.note(f"continued from weights {args.resume_weights} with a fresh optimizer "
                     f"({cfg.warmup_steps}-step warm-up)")
    elif args.init:
        trainer.load_weights(args.init, continue_run=False)
        trainer.note(f"initialised from weights {args.init}, fresh optimizer")
    else:
        trainer.note("started from the ImageNet backbone")
    trainer.note(f"train on {len(videos)} sequences and {len(stills)} stills, cpu_bf16={cfg.cpu_bf16}, "
                 f"threads={cfg.threads or torch.get_num_threads()}, target step "
                 f"{args.steps or cfg.steps}")
    if val_names and (cfg.val_every or args.validate):
        from training.validation import load_val_videos

        trainer.val_videos = load_val_videos(cfg.data_root, val_names, cfg.val_many_root or None,
                                             cfg.val_many, cfg.val_many_resolution)
    trainer.fit(sources, args.steps, time_limit=args.time_limit)
    if args.validate and trainer.val_videos:
        row = validate(trainer)
        append_row(trainer.out_dir / "validate.csv", row)  # beside val.csv, the run's own rows
        print(f"validation at step {row['step']}: J&F one object {row['jf_single']:.3f}, "
              f"two objects {row['jf_multi']:.3f}, many {row.get('jf_many')}, identity "
              f"switches {row.get('id_switch')}, QAM pearson {row.get('qam_pearson')}")
    if args.export_fp16:
        save_weights(trainer.eval_model, args.export_fp16, trainer.checkpoint_meta(),
                     half=True)


if __name__ == "__main__":
    sys.exit(main())
