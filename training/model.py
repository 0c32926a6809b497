"""QDMN network (Liu et al., ECCV 2022) with the official checkpoint's parameter names.

The network is used through four stateless methods, which the five exported graphs wrap
(training/graphs.py; encode_memory is two graphs, qam and quality), so the graphs are exactly
what was trained:

    encode_query  frame + previous probabilities -> query key/value (PEM applied) + skips
    encode_memory frame + object masks            -> memory key/value + QAM quality score
                  (= memory_kv, then assess_quality: the deployed graphs run the score head
                  only for frames that may enter the memory)
    read_memory   query key + memory bank         -> per-object readout (top-k softmax)
    decode        readout + query value + skips   -> soft-aggregated probabilities

Shapes: B batch, N objects, T memory frames, CK/CV key/value dims, h x w = H/16 x W/16.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from training.backbones import EfficientNetLiteTrunk, ResNet50Trunk, load_imagenet_lite
from training.config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Invalid memory slots get this added to their affinity: exp() of it underflows to exactly 0
# in FP32 and it stays finite in FP16 (unlike -inf, which TensorRT and FP16 handle poorly).
INVALID_SLOT_BIAS = -1.0e4


def normalize_uint8(image: torch.Tensor) -> torch.Tensor:
    """image: (B, H, W, 3) uint8 RGB -> (B, 3, H, W) float, ImageNet-normalised."""
    # Cast first: TensorRT takes UINT8 only as a network input feeding a Cast (no uint8 Transpose).
    x = image.float().permute(0, 3, 1, 2) / 255.0
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ResBlock(nn.Module):
    def __init__(self, indim: int, outdim: int):
        super().__init__()
        self.downsample = nn.Conv2d(indim, outdim, 3, padding=1) if indim != outdim else None
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class UpsampleBlock(nn.Module):
    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv1 = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.skip_conv2 = ResBlock(up_c, up_c)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """skip: (B, C, H, W) shared by all objects; up: (B*N, C', H/2, W/2)."""
        s = self.skip_conv2(self.skip_conv1(skip))
        b = s.shape[0]
        u = F.interpolate(up, size=s.shape[-2:], mode="bilinear", align_corners=False)
        # The skip branch does not depend on the object, so it runs once and broadcasts. With
        # one frame (every exported graph) that is a plain 4-D broadcast: no 5-D reshape, which
        # made OpenVINO convert the layout of u twice.
        if b == 1:
            return self.out_conv(u + s)
        x = u.view(b, -1, *u.shape[1:]) + s.unsqueeze(1)
        return self.out_conv(x.flatten(0, 1))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _, c8, c4 = cfg.feature_dims
        d16, d8, d4 = cfg.decoder_dims
        self.compress = ResBlock(2 * cfg.value_dim, d16)
        self.up_16_8 = UpsampleBlock(c8, d16, d8)
        self.up_8_4 = UpsampleBlock(c4, d8, d4)
        self.pred = nn.Conv2d(d4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                upsample: Upsample | None = None) -> torch.Tensor:
        """x: (B*N, 2CV, h, w); f8, f4: (B, C, ...) -> logits (B*N, 1, 4*H/4, 4*W/4).

        upsample: the final x4 bilinear upsampling (default F.interpolate); the exported graph
        passes an exact equivalent that runs faster (training/graphs.py)."""
        x = self.compress(x)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        x = self.pred(F.relu(x))
        if upsample is not None:
            return upsample(x)
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


Upsample = Callable[[torch.Tensor], torch.Tensor]


class KeyValue(nn.Module):
    def __init__(self, indim: int, keydim: int, valdim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)
        self.val_proj = nn.Conv2d(indim, valdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key_proj(x), self.val_proj(x)


class Score(nn.Module):
    """QAM score head: 3 convs, a stride-2 conv, two FC layers -> one score per object."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.score_dim
        self.conv1 = nn.Conv2d(cfg.feature_dims[0], d, 3, 1, 1)
        self.conv2 = nn.Conv2d(d, d, 3, 1, 1)
        self.conv3 = nn.Conv2d(d, d, 3, 1, 1)
        self.conv4 = nn.Conv2d(d, d, 3, 2, 1)
        self.fc1 = nn.Linear(d * (cfg.qam_size // 2) ** 2, cfg.score_hidden)
        self.fc2 = nn.Linear(cfg.score_hidden, 1)
        self.activation = cfg.score_activation
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        if self.activation == "sigmoid":
            # fc1's activations are large (norm ~200 on real features): the official init puts
            # the sigmoid deep in saturation (logits ~ -75), where it never learns. Start at 0.5.
            nn.init.zeros_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, C, qam, qam) -> (M,)"""
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        x = self.fc2(F.relu(self.fc1(x.flatten(1))))
        x = torch.sigmoid(x) if self.activation == "sigmoid" else F.relu(x)
        return x.squeeze(1)


class ASPPBranch(nn.Module):
    def __init__(self, inplanes: int, planes: int, kernel: int, dilation: int):
        super().__init__()
        pad = 0 if kernel == 1 else dilation
        self.atrous_conv = nn.Conv2d(inplanes, planes, kernel, padding=pad, dilation=dilation,
                                     bias=False)
        self.bn = nn.BatchNorm2d(planes)
        nn.init.kaiming_normal_(self.atrous_conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.aspp1 = ASPPBranch(inplanes, planes, 1, 1)
        self.aspp2 = ASPPBranch(inplanes, planes, 3, 6)
        self.aspp3 = ASPPBranch(inplanes, planes, 3, 12)
        self.aspp4 = ASPPBranch(inplanes, planes, 3, 18)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(inplanes, planes, 1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(),
        )
        self.conv1 = nn.Conv2d(5 * planes, inplanes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.dropout = nn.Dropout(0.1)
        nn.init.kaiming_normal_(self.global_avg_pool[1].weight)
        nn.init.kaiming_normal_(self.conv1.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_avg_pool(x).expand(-1, -1, *x.shape[-2:])
        x = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], 1)
        return self.dropout(F.relu(self.bn1(self.conv1(x))))


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Soft aggregation (STM/STCN): per-object sigmoids -> a distribution with background first.

    prob: (..., N, ...) along `dim` -> (..., N+1, ...)
    """
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    p = torch.cat([bg, prob], dim).clamp(1e-7, 1 - 1e-7)
    return F.softmax(torch.log(p / (1 - p)), dim=dim)


def key_affinity(query_key: torch.Tensor, mem_key: torch.Tensor) -> torch.Tensor:
    """The read's affinity: query_key (M, CK, P), mem_key (M, CK, S) -> (M, P, S), the dot
    product over CK / sqrt(CK). The correspondence losses train exactly this."""
    return torch.bmm((query_key / math.sqrt(query_key.shape[1])).transpose(1, 2), mem_key)


def memory_readout(
    query_key: torch.Tensor,
    mem_keys: torch.Tensor,
    mem_values: torch.Tensor,
    mem_valid: torch.Tensor,
    top_k: int | None,
) -> torch.Tensor:
    """Space-time memory read with top-k softmax over the valid memory positions only.

    query_key: (B, CK, h, w); mem_keys: (B, T, N, CK, h, w); mem_values: (B, T, N, CV, h, w);
    mem_valid: (B, T) 1 = slot holds a frame, 0 = empty -> (B, N, CV, h, w)

    The affinity is query-major (B*N, hw, T*hw) so top-k and softmax run along the contiguous
    last axis; with top-k only the k selected values are gathered and weighted, instead of a
    dense (CV x T*hw) @ (T*hw x hw) product over mostly-zero weights (the official scatter).
    """
    b, t, n, ck, h, w = mem_keys.shape
    cv = mem_values.shape[3]
    hw = h * w
    mk = mem_keys.permute(0, 2, 3, 1, 4, 5).reshape(b * n, ck, t * hw)
    qk = query_key.reshape(b, 1, ck, hw).expand(b, n, ck, hw).reshape(b * n, ck, hw)
    affinity = key_affinity(qk, mk)  # (B*N, hw, T*hw)
    bias = (1.0 - mem_valid) * INVALID_SLOT_BIAS  # (B, T)
    affinity = affinity + bias.view(b, 1, t, 1).expand(b, n, t, hw).reshape(b * n, 1, t * hw)
    if top_k is not None and top_k < t * hw:
        top, index = torch.topk(affinity, top_k, dim=2)  # (B*N, hw, k)
        weights = F.softmax(top, dim=2)
        mv = mem_values.permute(0, 2, 1, 4, 5, 3).reshape(b * n, t * hw, cv)
        picked = torch.gather(mv, 1, index.reshape(b * n, hw * top_k, 1).expand(-1, -1, cv))
        out = (picked.view(b * n, hw, top_k, cv) * weights.unsqueeze(-1)).sum(2)  # (B*N, hw, CV)
        return out.transpose(1, 2).reshape(b, n, cv, h, w)
    weights = F.softmax(affinity, dim=2)
    mv = mem_values.permute(0, 2, 3, 1, 4, 5).reshape(b * n, cv, t * hw)
    return torch.bmm(mv, weights.transpose(1, 2)).view(b, n, cv, h, w)


class QDMN(nn.Module):
    """Parameters named as in the official PropagationNetwork so official ckpts load strictly."""

    def __init__(self, cfg: ModelConfig, pretrained_backbone: bool = False):
        super().__init__()
        self.cfg = cfg
        c16 = cfg.feature_dims[0]
        if cfg.backbone == "resnet50":
            self.mask_rgb_encoder = ResNet50Trunk(cfg.value_encoder_channels, "layer1")
            self.rgb_encoder = ResNet50Trunk(3, "res2")
            if pretrained_backbone:
                raise ValueError("no ImageNet ResNet-50 weights ship with this project")
        else:
            self.mask_rgb_encoder = EfficientNetLiteTrunk(cfg.backbone, cfg.value_encoder_channels)
            self.rgb_encoder = EfficientNetLiteTrunk(cfg.backbone, 3)
            if pretrained_backbone:
                load_imagenet_lite(self.mask_rgb_encoder)
                load_imagenet_lite(self.rgb_encoder)
        self.kv_m_f16 = KeyValue(c16, cfg.key_dim, cfg.value_dim)
        self.kv_q_f16 = KeyValue(c16, cfg.key_dim, cfg.value_dim)
        self.decoder = Decoder(cfg)
        self.aspp = ASPP(2 * cfg.value_dim, cfg.aspp_dim)
        self.score = Score(cfg)
        self.concat_conv = nn.Conv2d(c16 + 1, 1, 3, 1, 1)  # PEM prior gate

    def encode_query(
        self, image: torch.Tensor, prev_prob: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image: (B, 3, H, W) normalised; prev_prob: (B, N, H, W) previous-frame object probs
        -> query_key (B, CK, h, w), query_value (B, CV, h, w), f8, f4"""
        f16, f8, f4 = self.rgb_encoder(image)
        prior = prev_prob.max(dim=1, keepdim=True).values
        prior = F.interpolate(prior, size=f16.shape[-2:], mode="bilinear", align_corners=False)
        gate = torch.sigmoid(self.concat_conv(torch.cat([f16, prior], 1)))
        key, value = self.kv_q_f16(f16 * gate)
        return key, value, f8, f4

    def encode_memory(
        self, image: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image: (B, 3, H, W) normalised; masks: (B, N, H, W) object probabilities
        -> mem_key (B, N, CK, h, w), mem_value (B, N, CV, h, w), quality (B, N)"""
        key, value, features = self.memory_kv(image, masks)
        return key, value, self.assess_quality(features).view(masks.shape[:2])

    def memory_kv(
        self, image: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The value encoder: what every memorised frame needs (the previous frame always
        enters the memory as the temporary slot).

        -> mem_key (B, N, CK, h, w), mem_value (B, N, CV, h, w),
           quality_features (B*N, C16, qam, qam): the QAM score head's input"""
        b, n, h, w = masks.shape
        others = masks.sum(dim=1, keepdim=True) - masks
        planes = [image.unsqueeze(1).expand(b, n, 3, h, w), masks.unsqueeze(2)]
        if self.cfg.value_encoder_channels == 5:
            planes.append(others.unsqueeze(2))
        x = torch.cat(planes, 2).flatten(0, 1)
        f16, _, _ = self.mask_rgb_encoder(x)
        key, value = self.kv_m_f16(f16)
        q = self.cfg.qam_size
        features = F.interpolate(f16, size=(q, q), mode="bilinear", align_corners=False)
        return key.view(b, n, *key.shape[1:]), value.view(b, n, *value.shape[1:]), features

    def assess_quality(self, features: torch.Tensor) -> torch.Tensor:
        """QAM score head: (M, C16, qam, qam) -> (M,). Only frames that may enter the long-term
        memory need it (the official loop uses the score only `mem_every` frames after the last
        insertion)."""
        return self.score(features)

    def read_memory(
        self, query_key: torch.Tensor, mem_keys: torch.Tensor, mem_values: torch.Tensor,
        mem_valid: torch.Tensor, top_k: int | None,
    ) -> torch.Tensor:
        return memory_readout(query_key, mem_keys, mem_values, mem_valid, top_k)

    def decode(
        self, readout: torch.Tensor, query_value: torch.Tensor, f8: torch.Tensor,
        f4: torch.Tensor, object_valid: torch.Tensor, upsample: Upsample | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """readout: (B, N, CV, h, w); query_value: (B, CV, h, w); object_valid: (B, N) 1/0
        -> logits (B, N+1, H, W) of the aggregated distribution, prob (B, N+1, H, W)

        upsample: see Decoder.forward."""
        b, n = readout.shape[:2]
        qv = query_value.unsqueeze(1).expand_as(readout)
        x = self.aspp(torch.cat([readout, qv], 2).flatten(0, 1))
        logits = self.decoder(x, f8, f4, upsample)
        obj_prob = torch.sigmoid(logits).view(b, n, *logits.shape[-2:])
        obj_prob = obj_prob * object_valid.view(b, n, 1, 1)
        prob = aggregate(obj_prob, dim=1)
        return torch.log(prob), prob


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm statistics and affine parameters fixed (small batches, as in STCN)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
