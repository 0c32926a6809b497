"""Grow a trained EfficientNet-Lite0 QDMN into Lite1 that computes exactly the same function.

Lite1 has Lite0's widths and one more block at the end of stages 2-5, each a stride-1 residual
block. The trained blocks keep their places; each new block takes Lite1's ImageNet weights but
its last convolution, which starts at zero, with its BatchNorm's mean and shift at zero, so the
block adds nothing until training moves that convolution (Net2Net's deepening: training starts
from the trained model, not from ImageNet). Training keeps BatchNorm fixed
(`training.model.freeze_batchnorm`), so zeroing its scale instead would leave the block dead.
Everything outside the two trunks has the same shapes and is copied.

    python scripts/deepen_lite.py models/qdmn-light.pth lite1-init.pth
    python training/train.py --config configs/lite1-deepened.yaml --init lite1-init.pth
"""

from __future__ import annotations

import argparse

import torch

from runtime.cli import fail, path_arg
from training.backbones import LITE_VARIANTS, lite_weights_path
from training.checkpoint import CheckpointError, load_model, save_weights
from training.config import ModelConfig
from training.model import QDMN

TRUNKS = ("rgb_encoder", "mask_rgb_encoder")


def block_map(small: str, deep: str) -> dict[int, int | None]:
    """Each block of `deep` -> the block of `small` it copies, or None for a new last block."""
    out, s, d = {}, 0, 0
    for (n_small, *shape_s), (n_deep, *shape_d) in zip(LITE_VARIANTS[small].stages,
                                                        LITE_VARIANTS[deep].stages, strict=True):
        if shape_s != shape_d or n_deep < n_small:
            raise ValueError(f"{deep} is not {small} deepened")
        for i in range(n_deep):
            out[d + i] = s + i if i < n_small else None
        s, d = s + n_small, d + n_deep
    return out


def deepen(state: dict[str, torch.Tensor], deep_model: QDMN, small: str,
           deep: str) -> dict[str, torch.Tensor]:
    imagenet = torch.load(lite_weights_path(deep), map_location="cpu", weights_only=True)
    mapping = block_map(small, deep)
    out = {}
    for name, target in deep_model.state_dict().items():
        trunk = next((t for t in TRUNKS if name.startswith(f"{t}.") and "._blocks." in name), None)
        if trunk is None:
            out[name] = state[name]
            continue
        rest = name.split("._blocks.", 1)[1]
        index, leaf = rest.split(".", 1)
        src = mapping[int(index)]
        if src is not None:
            out[name] = state[f"{name.split('._blocks.')[0]}._blocks.{src}.{leaf}"]
        elif leaf in ("_project_conv.weight", "_bn2.running_mean", "_bn2.bias"):
            out[name] = torch.zeros_like(target)  # the residual branch adds nothing at first
        else:
            out[name] = imagenet[f"_blocks.{index}.{leaf}"].to(target.dtype)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg, help="a trained efficientnet_lite0 QDMN")
    ap.add_argument("out", type=path_arg, help="the deepened checkpoint to write (FP32)")
    ap.add_argument("--to", default="efficientnet_lite1", choices=["efficientnet_lite1"])
    args = ap.parse_args()
    try:
        model, meta = load_model(args.checkpoint)
    except CheckpointError as e:
        return fail(e)
    small = model.cfg.backbone
    if small != "efficientnet_lite0":
        return fail(f"{args.checkpoint} is {small}, not efficientnet_lite0")
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "backbone": args.to})
    deep_model = QDMN(cfg)
    deep_model.load_state_dict(deepen(model.state_dict(), deep_model, small, args.to))
    meta = dict(meta)
    meta["config"] = {**meta["config"], "model": cfg.to_dict()}
    meta["deepened_from"] = str(args.checkpoint)
    save_weights(deep_model, args.out, meta)
    print(f"wrote {args.out}: {small} -> {args.to}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
