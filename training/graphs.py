"""Thin wrappers that turn QDMN's methods into the exported graphs.

Each wrapper only adds/removes the batch dim of 1 (and normalises the uint8 image, or lays the
memory out as the bank stores it), then calls the trained method, so an exported graph is the
function training optimised. Two exact rewrites make the graphs faster: the memory read works
on the runtime's bank layout (training/memory_read.py), and the decoder's final x4 bilinear
upsampling is two matrix products (`BilinearUpsample`). Tensor names and shapes are those of
`runtime.core.manifest.graph_specs`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime.core.manifest import GRAPH_NAMES, GraphSpec, graph_specs
from training.memory_read import banked_memory_read
from training.model import QDMN, normalize_uint8


class EncoderGraph(nn.Module):
    """Query encoder: the frame's key/value (PEM-gated by the previous prediction) + skips."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(
        self, image: torch.Tensor, prev_prob: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image: (1, H, W, 3) uint8 RGB; prev_prob: (N, H, W)
        -> query_key (1, CK, h, w), query_value (1, CV, h, w), f8, f4"""
        return self.model.encode_query(normalize_uint8(image), prev_prob.unsqueeze(0))


class QamGraph(nn.Module):
    """Memory encoder: what a frame adds to the memory bank, one bank chunk per object, and
    the quality head's input."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image: (1, H, W, 3) uint8 RGB; masks: (N, H, W)
        -> mem_key_i (P, CK) for i < N, mem_value_i (P, CV) for i < N,
           quality_features (N, C16, qam, qam)"""
        key, value, features = self.model.memory_kv(normalize_uint8(image), masks.unsqueeze(0))
        keys, values = (as_bank_rows(x[0]) for x in (key, value))
        return (*keys.unbind(0), *values.unbind(0), features)


class QualityGraph(nn.Module):
    """QAM score head: run only for frames that may enter the long-term memory."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """quality_features (N, C16, qam, qam) -> quality (N,)"""
        return self.model.assess_quality(features)


class MemoryReadGraph(nn.Module):
    """Top-k space-time memory read over a fixed bank; empty slots are masked by `mem_valid`."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(
        self, query_key: torch.Tensor, mem_keys: torch.Tensor, mem_values: torch.Tensor,
        mem_valid: torch.Tensor,
    ) -> torch.Tensor:
        """query_key: (1, CK, h, w); mem_keys: (N, S, P, CK); mem_values: (N, S, P, CV);
        mem_valid: (S,) 1/0 -> readout (N, CV, h, w)"""
        return banked_memory_read(query_key, mem_keys, mem_values, mem_valid,
                                  self.model.cfg.top_k)


def as_bank_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h*w, C): one row of channels per position, the bank's layout."""
    return x.flatten(2).transpose(1, 2)


class BilinearUpsample(nn.Module):
    """x4 bilinear upsampling (align_corners=False, edges clamped, = F.interpolate) as two
    products with constant interpolation matrices: on the decoder's one-channel logits far
    cheaper than OpenVINO's Interpolate (docs/export.md)."""

    def __init__(self, height: int, width: int, scale: int = 4):
        super().__init__()
        self.register_buffer("rows", _interpolation_matrix(height, scale), persistent=False)
        self.register_buffer("cols", _interpolation_matrix(width, scale).t().contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 1, h, w) -> (M, 1, scale*h, scale*w)"""
        return torch.matmul(torch.matmul(self.rows, x), self.cols)


def _interpolation_matrix(size: int, scale: int) -> torch.Tensor:
    """(scale*size, size): row o holds the two bilinear weights of output o (half-pixel
    centres; source coordinates below 0 clamp to the first pixel, past the end to the last)."""
    out = np.arange(scale * size)
    src = np.maximum((out + 0.5) / scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = src - i0
    m = np.zeros((scale * size, size), np.float64)
    np.add.at(m, (out, i0), 1.0 - frac)
    np.add.at(m, (out, i1), frac)
    return torch.from_numpy(m.astype(np.float32))


class DecoderGraph(nn.Module):
    """Decoder + soft aggregation: per-pixel distribution over background and N objects."""

    def __init__(self, model: QDMN, height: int, width: int):
        super().__init__()
        self.model = model
        self.upsample = BilinearUpsample(height // 4, width // 4)

    def forward(
        self, readout: torch.Tensor, query_value: torch.Tensor, f8: torch.Tensor,
        f4: torch.Tensor, object_valid: torch.Tensor,
    ) -> torch.Tensor:
        """readout: (N, CV, h, w); query_value: (1, CV, h, w); f8, f4: (1, C, H/s, W/s);
        object_valid: (N,) 1/0 -> prob (N+1, H, W), background first"""
        _, prob = self.model.decode(readout.unsqueeze(0), query_value, f8, f4,
                                    object_valid.unsqueeze(0), upsample=self.upsample)
        return prob.squeeze(0)


def build_graphs(model: QDMN, height: int, width: int) -> dict[str, nn.Module]:
    """One eval-mode wrapper per graph name (in GRAPH_NAMES order), sharing `model`'s
    parameters, for graphs of H x W frames."""
    model.eval()
    graphs: dict[str, nn.Module] = {
        "encoder": EncoderGraph(model), "qam": QamGraph(model), "quality": QualityGraph(model),
        "memory_read": MemoryReadGraph(model), "decoder": DecoderGraph(model, height, width),
    }
    assert tuple(graphs) == GRAPH_NAMES
    return {name: g.eval() for name, g in graphs.items()}


def specs_for(model: QDMN, height: int, width: int, max_objects: int,
              memory_size: int) -> dict[str, GraphSpec]:
    """The manifest's I/O declaration for `model` at one static configuration."""
    cfg = model.cfg
    return graph_specs(height, width, max_objects, memory_size, cfg.key_dim, cfg.value_dim,
                       cfg.feature_dims, cfg.qam_size)


def example_inputs(spec: GraphSpec, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, ...]:
    """Random inputs with the spec's shapes/dtypes (tracing only needs shapes; parity tests
    use real frames)."""
    out = []
    for t in spec.inputs:
        if t.dtype == "uint8":
            out.append(torch.randint(0, 256, t.shape, dtype=torch.uint8, generator=generator))
        elif t.name in ("mem_valid", "object_valid"):
            out.append(torch.ones(t.shape))
        else:
            out.append(torch.rand(t.shape, generator=generator))
    return tuple(out)
