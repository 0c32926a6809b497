"""The dense correspondence loss: its targets follow the warp, and the keys can learn from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import ONE, TWO, require_real_frames

from training.checkpoint import load_model
from training.correspondence import correspondence_loss, flow_matches, match_targets
from training.data import load_sequences
from training.model import freeze_batchnorm, normalize_uint8

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "qdmn-light.pth"


def test_identity_warp_matches_every_cell_to_itself():
    target, inside = match_targets(torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]), 4, 6)
    assert inside.all()
    torch.testing.assert_close(target[0], torch.eye(24), atol=1e-6, rtol=0)


def test_shift_by_one_cell_moves_the_target_and_drops_cells_from_outside():
    h, w = 4, 6
    # Output point -> input point shifted one cell right: warped cell (i, j) shows original (i, j+1).
    theta = torch.tensor([[[1.0, 0, 2 / w], [0, 1, 0]]])
    target, inside = match_targets(theta, h, w)
    cells = torch.arange(h * w).view(h, w)
    assert not inside[0].view(h, w)[:, -1].any() and inside[0].view(h, w)[:, :-1].all()
    best = target[0].argmax(1).view(h, w)
    assert torch.equal(best[:, :-1], cells[:, 1:])
    torch.testing.assert_close(target[0].sum(1), torch.ones(h * w))
    # Half a cell: the match is split between the two neighbours.
    half, _ = match_targets(torch.tensor([[[1.0, 0, 1 / w], [0, 1, 0]]]), h, w)
    torch.testing.assert_close(half[0, 0, :2], torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)


def test_keys_learn_to_match_on_a_real_frame(davis_root):
    """The shipped model with its two key projections reset to near zero (uniform read weights,
    the loss at chance: the log of the number of memory cells): training only those on the loss
    takes it well below chance, so the gradient reaches both sides of the affinity and the
    targets can be learnt."""
    seq = load_sequences(davis_root, [ONE], (128, 224))[0]
    image = normalize_uint8(torch.from_numpy(seq.frames[:2]))
    masks = torch.from_numpy((seq.labels[:2] == 1).astype(np.float32))[:, None]
    torch.manual_seed(0)
    model = load_model(SHIPPED)[0].train()
    freeze_batchnorm(model)
    for p in model.parameters():
        p.requires_grad_(False)
    keys = [p for n, p in model.named_parameters()
            if n.startswith(("kv_q_f16.key_proj", "kv_m_f16.key_proj"))]
    assert len(keys) == 4
    with torch.no_grad():
        for p in keys:  # near-zero keys: uniform read weights, the loss at chance
            p.normal_(0, 1e-4)
            p.requires_grad_(True)
    opt = torch.optim.Adam(keys, lr=2e-4)
    losses = []
    for _ in range(25):
        mem_key = model.memory_kv(image, masks)[0][:, 0]
        loss = correspondence_loss(model, image, masks, mem_key)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    chance = np.log(8 * 14)
    assert abs(losses[0] - chance) < 0.05, losses
    assert np.mean(losses[-3:]) < 0.7 * chance, losses


def test_shipped_keys_match_their_object_well_above_chance(davis_root):
    """key_match_shares (scripts/key_matching.py) on the demo clips: the shipped model's top-20 memory matches of
    each object's query cells fall on that object far more often than chance."""
    require_real_frames()
    from training.data import load_sequence
    from training.validation import key_match_shares

    model = load_model(SHIPPED)[0].eval()
    for name in (ONE, TWO):
        video = load_sequence(davis_root, name)
        rows = key_match_shares(model, video, (240, 432), (1, 5, 20), 20)
        assert {r["object"] for r in rows} == set(range(1, video.num_objects + 1))
        for obj in {r["object"] for r in rows}:
            share = np.mean([r["share"] for r in rows if r["object"] == obj])
            chance = rows[[r["object"] for r in rows].index(obj)]["chance"]
            assert share > 2 * chance, (name, obj, share, chance)


def test_flow_matches_find_a_known_shift_on_a_real_frame(davis_root):
    """A real frame and the same frame moved 16 px (one cell) right and 8 px down: every query
    cell whose source is in view matches the cell it came from, and cells that show content
    absent from the memory frame are not trusted."""
    frame = load_sequences(davis_root, [ONE], (192, 320))[0].frames[0]
    moved = np.zeros_like(frame)
    moved[8:, 16:] = frame[:-8, :-16]
    uv, valid = flow_matches(moved, frame, 16)
    h, w = 192 // 16, 320 // 16
    u, v = uv[:, 0].reshape(h, w), uv[:, 1].reshape(h, w)
    ok = valid.reshape(h, w)
    inner = ok[2:-2, 3:-2]
    assert inner.mean() > 0.8, ok.astype(int)
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    np.testing.assert_allclose(u[2:-2, 3:-2][inner], (cols - 1)[2:-2, 3:-2][inner], atol=0.15)
    np.testing.assert_allclose(v[2:-2, 3:-2][inner], (rows - 0.5)[2:-2, 3:-2][inner], atol=0.15)
    assert not ok[:, 0].any()  # the first column shows the black border, not in the memory
