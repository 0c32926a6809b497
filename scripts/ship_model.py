"""Make a training snapshot a shipped model, exported by default at the size it is shipped for:

    python scripts/ship_model.py models/qdmn-light.pth qdmn-light-304x544.pth --size 304 544

Copies the weights, config and step as they are and sets the config's `image_size`: the size
`export/to_onnx.py`, `demo.py` and the PyTorch reference use when not given one. A model trained
at 240x432 that does better exported at another size (the light model at 304x544,
docs/training-log.md "Export size") then exports there unless told otherwise.
"""

from __future__ import annotations

import argparse

import torch

from export.errors import ExportError
from export.to_onnx import check_size
from runtime.cli import path_arg
from runtime.core.manifest import STRIDE
from training.checkpoint import CheckpointError, read_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=path_arg, help="a checkpoint with weights and config")
    ap.add_argument("out", type=path_arg, help="the shipped file")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True,
                    help=f"default export size (multiples of {STRIDE})")
    args = ap.parse_args(argv)
    try:
        check_size(args.size)  # the exporter's rule: the size is where it will export
    except ExportError as e:
        ap.error(str(e))
    try:
        obj = read_checkpoint(args.snapshot)
    except CheckpointError as e:
        ap.error(str(e))
    if not isinstance(obj.get("config"), dict) or "model" not in obj:
        ap.error(f"{args.snapshot}: not a training snapshot (no weights and config)")
    obj = {k: v for k, v in obj.items() if k != "optimizer"}
    obj["config"] = {**obj["config"], "image_size": list(args.size)}
    tmp = args.out.with_suffix(".tmp")  # a failed write leaves no half-written model
    torch.save(obj, tmp)
    tmp.replace(args.out)
    print(f"{args.out}: step {obj.get('step')}, exports at {args.size[0]}x{args.size[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
