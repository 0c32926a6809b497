"""Loading and saving QDMN weights: this project's checkpoints and official `ckpt.pth` files."""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from runtime.core.quality import DEFAULT_QUALITY_SCORE
from training.config import ConfigError, ModelConfig
from training.model import QDMN


class CheckpointError(ValueError):
    """The file is not a usable QDMN checkpoint."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely (`weights_only=True`) and report unreadable files clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise here
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError,
            IndexError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise CheckpointError(_why_unreadable(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


# What torch's weights-only loader rebuilds: tensors, storages and ordered dicts.
_SAFE_MODULES = ("torch", "collections")


def _why_unreadable(path: Path, error: BaseException) -> str:
    """One line in our words for a file torch.load(weights_only=True) refused: not a
    checkpoint at all, a pickle that would import code (refused), or torch's own reason
    (never its advice to load with weights_only=False)."""
    if path.stat().st_size == 0:
        return f"{path} is empty: not a PyTorch checkpoint"
    names = _pickled_globals(path)
    if names is None:
        return f"{path} is not a PyTorch checkpoint (not a torch.save archive or pickle)"
    unsafe = sorted({n for n in names if n.split(".")[0] not in _SAFE_MODULES})
    if unsafe:
        return (f"refused: {path} would import {', '.join(unsafe[:3])} when unpickled (code, "
                "not weights); only tensors and plain containers are loaded: save the weights "
                "with torch.save(model.state_dict(), ...)")
    reason = str(error).split("WeightsUnpickler error:")[-1]
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()
             and "weights_only" not in ln and "torch.load" not in ln]
    return f"{path} is not a readable PyTorch checkpoint: {lines[0] if lines else type(error).__name__}"


def _pickled_globals(path: Path) -> list[str] | None:
    """module.name of every global the checkpoint's pickle(s) would import, read without
    unpickling; None when the file is neither torch's zip format nor a pickle."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkls = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pkls:
                return None
            data = z.read(pkls[0])
    else:
        data = path.read_bytes()
    if data[:1] != b"\x80":  # PROTO: every pickle torch writes starts with it
        return None
    names: list[str] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # legacy files hold several pickles in a row
            strings: list[str] = []
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
            if stream.tell() < len(data) and data[stream.tell():stream.tell() + 1] != b"\x80":
                break  # tensor bytes follow the pickles in legacy files
    except (ValueError, EOFError, pickle.PickleError, UnicodeDecodeError):
        return names or None
    return names


def official_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """Official checkpoints carry no config: they are ResNet-50 QDMNs with a ReLU score."""
    conv1 = state.get("mask_rgb_encoder.conv1.weight")
    channels = 5 if conv1 is None else int(conv1.shape[1])
    # Single-object checkpoints (4 channels) are padded to 5 below, as the official loader does.
    return ModelConfig(score_activation="relu", value_encoder_channels=max(channels, 5))


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state(model: QDMN, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load `state`, with one error listing every missing/unexpected/mismatched key."""
    state = _strip_module_prefix(dict(state))
    own = model.state_dict()
    conv1 = "mask_rgb_encoder.conv1.weight"
    if conv1 in state and conv1 in own and state[conv1].shape[1] + 1 == own[conv1].shape[1]:
        pad = torch.zeros_like(own[conv1][:, :1])
        state[conv1] = torch.cat([state[conv1], pad], 1)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        def show(items: list[str]) -> str:
            return ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
        parts = [f"{source} does not match the QDMN model ({model.cfg.backbone}):"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if wrong:
            parts.append(f"shape mismatches: {show(wrong)}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_model(path: str | Path) -> tuple[QDMN, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights (eval mode, FP32).

    Returns the model and the checkpoint's metadata (everything but the tensors).
    """
    obj = read_checkpoint(path)
    if "model" in obj and "config" in obj:
        try:
            cfg = ModelConfig.from_dict(obj["config"]["model"])
        except (ConfigError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: bad model config in checkpoint: {e}") from None
        state = obj["model"]
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer")}
    elif any(k.split(".")[-1] in ("weight", "bias") for k in obj):
        if not any("rgb_encoder" in k for k in obj):
            raise CheckpointError(f"{path} is a state dict, but not of a QDMN network "
                                  "(no rgb_encoder/mask_rgb_encoder weights)")
        state = obj
        cfg = official_config(_strip_module_prefix(obj))
        meta = {"config": {"model": cfg.to_dict()}, "official": True}
    else:
        raise CheckpointError(f"{path} is neither a QDMN training checkpoint (model+config) nor "
                              "an official QDMN state dict")
    model = QDMN(cfg)
    load_state(model, state, str(path))
    return model.eval(), meta


def checkpoint_quality_score(meta: dict[str, Any]) -> str:
    """The memory gate's score for a loaded checkpoint (runtime.core.quality): the paper's QAM score
    for an official one, whose head the paper trained and evaluated alone; QAM x the decoder's
    confidence for this project's models, whose heads do not rank their own masks on unseen
    videos (docs/training-log.md)."""
    return "qam" if meta.get("official") else DEFAULT_QUALITY_SCORE


def save_weights(model: QDMN, path: str | Path, meta: dict[str, Any], half: bool = False) -> None:
    """Write a shippable checkpoint: weights (optionally FP16) + config, no optimizer."""
    state = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    torch.save({"model": state, **meta}, path)
