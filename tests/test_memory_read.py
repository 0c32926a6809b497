"""The deployed memory read (training/memory_read.py) against training.model.memory_readout.

Same selection: the top-k positions equal the reference's (computed in float64) except where
the k-th and (k+1)-th affinities tie within SELECTION_TOL or a few float32 ulps of them (float32
products summed in another order differ by a few ulps, so such near-ties may go either way). Same readout: within
READOUT_TOL of memory_readout on the same memory, in PyTorch and as an ONNX graph.
"""

from __future__ import annotations

import io
import math
import warnings

import hypothesis.strategies as st
import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings

from training.memory_read import affinity_top_k, banked_memory_read
from training.model import INVALID_SLOT_BIAS, memory_readout

SELECTION_TOL = 1e-4  # |affinity - k-th largest| below which a swapped position is a tie
READOUT_TOL = (1e-5, 1e-5)  # atol, rtol * max|readout|


def memory(n: int, s: int, h: int, w: int, ck: int, cv: int, seed: int, scale: float = 3.0
           ) -> tuple[torch.Tensor, ...]:
    """query_key (1, CK, h, w), bank keys (N, S, P, CK) and values (N, S, P, CV): keys scaled
    so affinities are ~10, as for trained keys."""
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(1, ck, h, w, generator=g)
    keys = torch.randn(n, s, h * w, ck, generator=g) * scale
    values = torch.randn(n, s, h * w, cv, generator=g)
    return qk, keys, values


def model_layout(bank: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bank (N, S, P, C) -> memory_readout's (1, S, N, C, h, w)."""
    return bank.permute(1, 0, 3, 2).unflatten(3, (h, w))[None]


def reference_affinity(qk: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """(N, P, S*P) float64 affinity with the invalid-slot bias, as memory_readout defines it."""
    n, s, p, ck = keys.shape
    q = qk.double().reshape(ck, p).T / math.sqrt(ck)
    a = torch.einsum("qc,nkc->nqk", q, keys.double().reshape(n, s * p, ck))
    bias = ((1.0 - valid.double()) * INVALID_SLOT_BIAS).repeat_interleave(p)
    return (a + bias).numpy()


def assert_same_selection(affinity: np.ndarray, index: np.ndarray, k: int) -> None:
    """index (N, P, k): the k largest of each affinity row, up to near-ties at the threshold."""
    order = np.argsort(-affinity, axis=-1, kind="stable")
    kth = np.take_along_axis(affinity, order[..., k - 1:k], -1)[..., 0]
    for row in np.ndindex(affinity.shape[:-1]):
        want, got = set(order[row][:k].tolist()), set(index[row].tolist())
        assert len(got) == k
        swapped = np.array(sorted(want ^ got), dtype=int)
        # Where k reaches into invalid slots (affinity ~ -1e4, zero weight) a float32 ulp is
        # ~1e-3, so a tie is a few ulps of the k-th value, not an absolute 1e-4.
        tol = max(SELECTION_TOL, 4 * float(np.spacing(np.float32(abs(kth[row])))))
        assert (np.abs(affinity[row][swapped] - kth[row]) <= tol).all(), (
            row, sorted(want - got), sorted(got - want))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), s=st.integers(1, 5), h=st.integers(1, 4), w=st.integers(1, 5),
       k=st.sampled_from([1, 3, 8, 50]), seed=st.integers(0, 2**16),
       valid_bits=st.integers(1, 2**5 - 1))
def test_same_selection_and_readout_as_reference(n, s, h, w, k, seed, valid_bits):
    qk, keys, values = memory(n, s, h, w, ck=8, cv=5, seed=seed)
    valid = torch.tensor([float(valid_bits >> i & 1) for i in range(s)])
    valid[0] = 1.0  # slot 0 (the first frame) is always valid
    p = h * w
    if k < s * p:
        _, index = affinity_top_k(qk, keys, valid, k)
        assert_same_selection(reference_affinity(qk, keys, valid), index.numpy(), k)
    got = banked_memory_read(qk, keys, values, valid, k)
    want = memory_readout(qk, model_layout(keys, h, w), model_layout(values, h, w), valid[None],
                          k)[0]
    atol = READOUT_TOL[0] + READOUT_TOL[1] * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


class TopKGraph(torch.nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, query_key, mem_keys, mem_valid):
        return affinity_top_k(query_key, mem_keys, mem_valid, self.k)[1]


@pytest.mark.parametrize("n, s, k", [(1, 27, 50), (2, 7, 50), (2, 3, 5)])
def test_onnx_graph_selects_the_same_positions(n, s, k):
    """The exported TopK (ONNX Runtime's kernel, 240x432 features: P = 15 x 27) picks the
    reference's positions, including with invalid slots holding large garbage keys."""
    h, w, ck = 15, 27, 64
    qk, keys, _ = memory(n, s, h, w, ck=ck, cv=1, seed=s)
    valid = torch.ones(s)
    valid[1::3] = 0.0
    keys[:, 1::3] *= 10  # garbage in the invalid slots has large affinities
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(TopKGraph(k).eval(), (qk, keys, valid), buf, dynamo=False,
                          opset_version=17, input_names=["query_key", "mem_keys", "mem_valid"],
                          output_names=["index"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (index,) = sess.run(None, {"query_key": qk.numpy(), "mem_keys": keys.numpy(),
                               "mem_valid": valid.numpy()})
    assert_same_selection(reference_affinity(qk, keys, valid), index, k)
