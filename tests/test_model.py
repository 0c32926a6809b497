"""The PyTorch QDMN: official parameter layout, shapes, QAM range, checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO
from training.checkpoint import CheckpointError, load_model, save_weights
from training.config import ConfigError, ModelConfig
from training.model import QDMN, memory_readout, normalize_uint8

OFFICIAL = REPO.parent / "shared" / "spec" / "official-qdmn-state-dict.json"


@pytest.fixture(scope="module")
def light() -> QDMN:
    torch.manual_seed(0)
    return QDMN(ModelConfig.light()).eval()


def test_official_key_and_shape_list():
    if not OFFICIAL.is_file():
        pytest.skip("official state-dict listing not available")
    spec = json.loads(OFFICIAL.read_text())
    own = {k: list(v.shape) for k, v in QDMN(ModelConfig()).state_dict().items()}
    assert own == spec["keys"]
    assert sum(torch.Size(s).numel() for s in own.values()) == spec["num_params"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_forward_shapes(light: QDMN, n: int):
    h, w = 64, 112
    image = normalize_uint8(torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8))
    masks = torch.rand(1, n, h, w)
    cfg = light.cfg
    with torch.no_grad():
        k, v, q = light.encode_memory(image, masks)
        qk, qv, f8, f4 = light.encode_query(image, masks)
        mk, mv = torch.stack([k, k], 1), torch.stack([v, v], 1)
        readout = light.read_memory(qk, mk, mv, torch.ones(1, 2), top_k=cfg.top_k)
        _, prob = light.decode(readout, qv, f8, f4, torch.ones(1, n))
    assert k.shape == (1, n, cfg.key_dim, h // 16, w // 16)
    assert v.shape == (1, n, cfg.value_dim, h // 16, w // 16)
    assert q.shape == (1, n)
    assert qk.shape == (1, cfg.key_dim, h // 16, w // 16)
    assert f8.shape[-2:] == (h // 8, w // 8) and f4.shape[-2:] == (h // 4, w // 4)
    assert readout.shape == (1, n, cfg.value_dim, h // 16, w // 16)
    assert prob.shape == (1, n + 1, h, w)
    torch.testing.assert_close(prob.sum(1), torch.ones(1, h, w))


def test_qam_score_in_unit_interval(light: QDMN):
    torch.manual_seed(1)
    image = normalize_uint8(torch.randint(0, 256, (4, 48, 80, 3), dtype=torch.uint8))
    masks = (torch.rand(4, 2, 48, 80) > 0.5).float()
    with torch.no_grad():
        _, _, q = light.encode_memory(image * 50, masks)  # extreme inputs still land in [0, 1]
    assert ((q >= 0) & (q <= 1)).all()


def test_padded_objects_get_no_probability(light: QDMN):
    h, w = 48, 80
    image = normalize_uint8(torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8))
    masks = torch.zeros(1, 3, h, w)
    masks[:, 0, 10:30, 10:40] = 1
    with torch.no_grad():
        k, v, _ = light.encode_memory(image, masks)
        qk, qv, f8, f4 = light.encode_query(image, masks)
        r = light.read_memory(qk, k[:, None], v[:, None], torch.ones(1, 1), 50)
        _, prob = light.decode(r, qv, f8, f4, torch.tensor([[1.0, 0.0, 0.0]]))
    assert prob[:, 2:].max() < 1e-5


def test_invalid_slots_are_ignored():
    torch.manual_seed(2)
    qk = torch.randn(1, 8, 3, 4)
    mk, mv = torch.randn(1, 3, 2, 8, 3, 4), torch.randn(1, 3, 2, 6, 3, 4)
    valid = torch.tensor([[1.0, 0.0, 1.0]])
    garbage_k, garbage_v = mk.clone(), mv.clone()
    garbage_k[:, 1] = 1e3
    garbage_v[:, 1] = -1e3
    for top_k in (None, 5):
        want = memory_readout(qk, mk[:, [0, 2]], mv[:, [0, 2]], torch.ones(1, 2), top_k)
        got = memory_readout(qk, garbage_k, garbage_v, valid, top_k)
        torch.testing.assert_close(got, want)


def test_top_k_keeps_exactly_k_positions():
    torch.manual_seed(3)
    qk = torch.randn(1, 4, 2, 2)
    mk, mv = torch.randn(1, 5, 1, 4, 2, 2), torch.eye(20).view(1, 20, 5, 2, 2)
    mv = mv.permute(0, 2, 1, 3, 4).unsqueeze(2)  # value = one-hot of the memory position
    out = memory_readout(qk, mk, mv, torch.ones(1, 5), top_k=3)
    weights = out.view(20, 4)  # (memory position, query position)
    assert ((weights > 0).sum(0) == 3).all()
    torch.testing.assert_close(weights.sum(0), torch.ones(4))


def test_config_typo_is_named():
    with pytest.raises(ConfigError, match="key_dimm"):
        ModelConfig.from_dict({"key_dimm": 3})
    with pytest.raises(ConfigError, match="backbone"):
        ModelConfig(backbone="vgg")


def _official_state(single_object: bool = False) -> dict[str, torch.Tensor]:
    state = QDMN(ModelConfig(score_activation="relu")).state_dict()
    if single_object:
        state["mask_rgb_encoder.conv1.weight"] = state["mask_rgb_encoder.conv1.weight"][:, :4]
    return state


def test_official_checkpoint_loads_with_module_prefix_and_single_object(tmp_path):
    state = _official_state(single_object=True)
    path = tmp_path / "ckpt.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model, meta = load_model(path)
    assert meta["official"] and model.cfg.score_activation == "relu"
    w = model.state_dict()["mask_rgb_encoder.conv1.weight"]
    torch.testing.assert_close(w[:, :4], state["mask_rgb_encoder.conv1.weight"])
    assert (w[:, 4] == 0).all()


def test_missing_keys_are_listed(tmp_path):
    state = _official_state()
    del state["score.fc2.weight"], state["aspp.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: aspp\.conv1\.weight, score\.fc2\.weight"):
        load_model(path)


def test_not_a_qdmn_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not of a QDMN network"):
        load_model(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_model(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth")


def test_project_checkpoint_roundtrip_fp16(tmp_path, light: QDMN):
    path = tmp_path / "light.pth"
    save_weights(light, path, {"config": {"model": light.cfg.to_dict(), "image_size": [64, 112]}},
                 half=True)
    model, meta = load_model(path)
    assert model.cfg == light.cfg and meta["config"]["image_size"] == [64, 112]
    for k, v in light.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=2e-3, rtol=2e-3)


def test_sigmoid_score_head_starts_unsaturated():
    """The official fc init saturates a sigmoid head on real-scale features (it never learns)."""
    torch.manual_seed(4)
    model = QDMN(ModelConfig.light()).eval()
    image = normalize_uint8(torch.randint(0, 256, (2, 64, 112, 3), dtype=torch.uint8))
    with torch.no_grad():
        _, _, q = model.encode_memory(image, torch.rand(2, 1, 64, 112))
    torch.testing.assert_close(q, torch.full_like(q, 0.5))
