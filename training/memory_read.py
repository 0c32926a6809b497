"""The deployed memory read: training.model.memory_readout over the runtime's bank layout.

The bank is stored as the read consumes it (runtime.core.manifest.BANK_AXES: object, slot,
position, channel), so per object the keys of all slots are one (S*P, CK) matrix and the values
one (S*P, CV) table of rows. Per frame this computes

    affinity = q K^T / sqrt(CK) + slot bias   (N, P, S*P)   one GEMM per object, no transpose
    top-k along the last axis                  (N, P, k)     one TopK (k <= 3840 for TensorRT)
    readout  = softmax(top) . V[index]         row gather of k rows of CV channels per position

and returns the same top-k selection as `memory_readout` (same positions up to ties within
float rounding; tests/test_memory_read.py). Measured alternatives (benchmarks/read_options.py):
GatherElements with an int64 index expanded over every value channel, transposing the bank per
frame, a two-stage TopK (per slot, then over the slots' candidates), OpenVINO's TopK.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.model import INVALID_SLOT_BIAS


def affinity(query_key: torch.Tensor, mem_keys: torch.Tensor,
             mem_valid: torch.Tensor) -> torch.Tensor:
    """query_key (1, CK, h, w); mem_keys (N, S, P, CK); mem_valid (S,) 1/0
    -> q K^T / sqrt(CK) + the invalid-slot bias, (N, P, S*P): one GEMM per object."""
    n, s, p, ck = mem_keys.shape
    q = (query_key / math.sqrt(ck)).reshape(ck, p).t()  # (P, CK): the query rows
    scores = torch.matmul(q, mem_keys.reshape(n, s * p, ck).transpose(1, 2))  # (N, P, S*P)
    bias = ((1.0 - mem_valid) * INVALID_SLOT_BIAS).view(s, 1).expand(s, p).reshape(1, 1, s * p)
    return scores + bias


def affinity_top_k(query_key: torch.Tensor, mem_keys: torch.Tensor, mem_valid: torch.Tensor,
                   top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query_key (1, CK, h, w); mem_keys (N, S, P, CK); mem_valid (S,) 1/0
    -> the k largest affinities (N, P, k), sorted, and their positions in [0, S*P)."""
    return torch.topk(affinity(query_key, mem_keys, mem_valid), top_k, dim=2)


def banked_memory_read(query_key: torch.Tensor, mem_keys: torch.Tensor,
                       mem_values: torch.Tensor, mem_valid: torch.Tensor,
                       top_k: int | None) -> torch.Tensor:
    """query_key (1, CK, h, w); mem_keys (N, S, P, CK); mem_values (N, S, P, CV);
    mem_valid (S,) -> readout (N, CV, h, w), as memory_readout on the same memory."""
    _, _, h, w = query_key.shape
    n, s, p, cv = mem_values.shape
    if top_k is None or top_k >= s * p:  # memory_readout's dense softmax
        weights = F.softmax(affinity(query_key, mem_keys, mem_valid), dim=2)
        out = torch.matmul(weights, mem_values.reshape(n, s * p, cv))  # (N, P, CV)
    else:
        top, index = affinity_top_k(query_key, mem_keys, mem_valid, top_k)
        weights = F.softmax(top, dim=2)
        rows = index + (torch.arange(n, device=index.device) * (s * p)).view(n, 1, 1)  # rows of the (N*S*P, CV) table
        picked = mem_values.reshape(n * s * p, cv)[rows.reshape(-1)].view(n, p, top_k, cv)
        out = torch.matmul(weights.unsqueeze(2), picked).squeeze(2)  # (N, P, CV)
    return out.transpose(1, 2).reshape(n, cv, h, w)
