"""Thin wrappers that turn QDMN's four methods into the four exported graphs.

Each wrapper only adds/removes the batch dim of 1 (and normalises the uint8 image), then calls
the trained method, so an exported graph is exactly the function training optimised. Tensor
names and shapes are those of `runtime.manifest.graph_specs`.
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.manifest import GRAPH_NAMES, GraphSpec, graph_specs
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
    """Memory encoder + quality-assessment head: what a frame would add to the memory bank."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(
        self, image: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image: (1, H, W, 3) uint8 RGB; masks: (N, H, W)
        -> mem_key (N, CK, h, w), mem_value (N, CV, h, w), quality (N,)"""
        key, value, quality = self.model.encode_memory(normalize_uint8(image), masks.unsqueeze(0))
        return key.squeeze(0), value.squeeze(0), quality.squeeze(0)


class MemoryReadGraph(nn.Module):
    """Top-k space-time memory read over a fixed bank; empty slots are masked by `mem_valid`."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(
        self, query_key: torch.Tensor, mem_keys: torch.Tensor, mem_values: torch.Tensor,
        mem_valid: torch.Tensor,
    ) -> torch.Tensor:
        """query_key: (1, CK, h, w); mem_keys: (S, N, CK, h, w); mem_values: (S, N, CV, h, w);
        mem_valid: (S,) 1/0 -> readout (N, CV, h, w)"""
        readout = self.model.read_memory(query_key, mem_keys.unsqueeze(0), mem_values.unsqueeze(0),
                                         mem_valid.unsqueeze(0), top_k=self.model.cfg.top_k)
        return readout.squeeze(0)


class DecoderGraph(nn.Module):
    """Decoder + soft aggregation: per-pixel distribution over background and N objects."""

    def __init__(self, model: QDMN):
        super().__init__()
        self.model = model

    def forward(
        self, readout: torch.Tensor, query_value: torch.Tensor, f8: torch.Tensor,
        f4: torch.Tensor, object_valid: torch.Tensor,
    ) -> torch.Tensor:
        """readout: (N, CV, h, w); query_value: (1, CV, h, w); f8, f4: (1, C, H/s, W/s);
        object_valid: (N,) 1/0 -> prob (N+1, H, W), background first"""
        _, prob = self.model.decode(readout.unsqueeze(0), query_value, f8, f4,
                                    object_valid.unsqueeze(0))
        return prob.squeeze(0)


WRAPPERS: dict[str, type[nn.Module]] = {
    "encoder": EncoderGraph, "qam": QamGraph, "memory_read": MemoryReadGraph,
    "decoder": DecoderGraph,
}
assert tuple(WRAPPERS) == GRAPH_NAMES


def build_graphs(model: QDMN) -> dict[str, nn.Module]:
    """One eval-mode wrapper per graph name, sharing `model`'s parameters."""
    model.eval()
    return {name: cls(model).eval() for name, cls in WRAPPERS.items()}


def specs_for(model: QDMN, height: int, width: int, max_objects: int,
              memory_size: int) -> dict[str, GraphSpec]:
    """The manifest's I/O declaration for `model` at one static configuration."""
    cfg = model.cfg
    return graph_specs(height, width, max_objects, memory_size, cfg.key_dim, cfg.value_dim,
                       cfg.feature_dims)


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
