"""An official-format QDMN checkpoint with RANDOM weights, for speed measurements only.

    python benchmarks/official_speed_checkpoint.py OUT.pth [--seed 0]

QDMN's own architecture (ResNet-50 encoders, ReLU score head) saved as a bare state dict with
the official parameter names, so it loads and exports exactly as an official `ckpt.pth` does.
Its masks mean nothing; it exists to time what users of the official weights deploy. Two
choices keep the timing representative: convolutions get He-normal weights (PyTorch's default
init shrinks activations layer by layer into denormals, which slows CPU kernels ~100x), and the
quality head outputs a constant 1.0 (zero fc2 weights, bias 1); `benchmarks/speed.py` accepts
every candidate frame whatever its score, so the bank fills as with trained weights.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from torch import nn

from runtime.cli import fail, path_arg
from training.checkpoint import official_config
from training.model import QDMN


def speed_only_model(seed: int = 0) -> QDMN:
    """The official architecture with He-normal random convolutions and a constant score."""
    torch.manual_seed(seed)
    model = QDMN(official_config({}))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        model.score.fc2.weight.zero_()
        model.score.fc2.bias.fill_(1.0)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=path_arg, help="where to write the bare state dict (.pth)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(speed_only_model(args.seed).state_dict(), args.out)
    except OSError as e:
        return fail(f"cannot write {args.out}: {e.strerror or e}")
    print(f"wrote {args.out} (official QDMN layout, RANDOM weights: for speed measurements only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
