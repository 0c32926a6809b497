"""Model configuration: everything a checkpoint needs to rebuild its network."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Backbone = Literal["resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]

# Feature widths (f16, f8, f4) each backbone trunk produces.
BACKBONE_DIMS: dict[str, tuple[int, int, int]] = {
    "resnet50": (1024, 512, 256),
    "efficientnet_lite0": (112, 40, 24),
    "efficientnet_lite1": (112, 40, 24),
    "efficientnet_lite2": (120, 48, 24),
}


class ConfigError(ValueError):
    """A configuration names an unknown field or holds an invalid value."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a QDMN network.

    The defaults are the official QDMN (ResNet-50, 104.6M parameters); `light()` is the
    CPU-friendly variant this project trains.
    """

    backbone: Backbone = "resnet50"
    key_dim: int = 128
    value_dim: int = 512
    aspp_dim: int = 256
    decoder_dims: tuple[int, int, int] = (512, 256, 256)  # compress, up_16_8, up_8_4 outputs
    score_dim: int = 256
    score_hidden: int = 1024
    qam_size: int = 24  # value-encoder f16 is resized to qam_size^2 before the score head
    # Official checkpoints were trained with a final ReLU; models trained here use a sigmoid so
    # the score lives in [0, 1] as the paper describes.
    score_activation: Literal["sigmoid", "relu"] = "sigmoid"
    value_encoder_channels: int = 5  # RGB + own mask + other objects (4 = single-object ckpt)
    top_k: int = 50

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_DIMS:
            raise ConfigError(
                f"model.backbone={self.backbone!r}: expected one of {sorted(BACKBONE_DIMS)}"
            )
        if self.score_activation not in ("sigmoid", "relu"):
            raise ConfigError(f"model.score_activation={self.score_activation!r}: sigmoid|relu")
        if self.qam_size % 2:
            raise ConfigError(f"model.qam_size={self.qam_size} must be even (stride-2 conv)")
        object.__setattr__(self, "decoder_dims", tuple(self.decoder_dims))

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        return BACKBONE_DIMS[self.backbone]

    @classmethod
    def light(cls) -> ModelConfig:
        return cls(
            backbone="efficientnet_lite0",
            key_dim=64,
            value_dim=128,
            aspp_dim=64,
            decoder_dims=(128, 64, 48),
            score_dim=64,
            score_hidden=256,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data, "model")


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from `data`, naming any unknown field (config typos fail loudly)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        nested = _dataclass_type(f)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _dataclass_type(f: dataclasses.Field) -> type | None:
    t = f.type
    if isinstance(t, str):
        t = _DATACLASS_REGISTRY.get(t)
    return t if dataclasses.is_dataclass(t) else None


_DATACLASS_REGISTRY: dict[str, type] = {"ModelConfig": ModelConfig}


def register_dataclass(cls: type) -> type:
    """Let `from_dict` resolve string annotations naming `cls` (postponed annotations)."""
    _DATACLASS_REGISTRY[cls.__name__] = cls
    return cls


__all__ = ["BACKBONE_DIMS", "ConfigError", "ModelConfig", "field", "from_dict", "register_dataclass"]
