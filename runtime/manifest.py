"""The manifest: the one contract between the exporter and the runtime (torch-free).

The exporter writes `manifest.json` next to the four graphs; the runtime reads it and nothing
else, so every shape the runtime allocates comes from here.

Graph I/O (N = max_objects, S = capacity = memory_size + 2, CK/CV = key/value dims,
h x w = H/16 x W/16; all float32 unless noted, FP16/INT8 graphs keep FP32 I/O):

    encoder      image (1,H,W,3) uint8 RGB, prev_prob (N,H,W)
                 -> query_key (1,CK,h,w), query_value (1,CV,h,w), f8 (1,C8,H/8,W/8), f4 (1,C4,H/4,W/4)
    qam          image (1,H,W,3) uint8 RGB, masks (N,H,W)
                 -> mem_key (N,CK,h,w), mem_value (N,CV,h,w), quality (N,)
    memory_read  query_key, mem_keys (S,N,CK,h,w), mem_values (S,N,CV,h,w), mem_valid (S,)
                 -> readout (N,CV,h,w)
    decoder      readout, query_value, f8, f4, object_valid (N,)
                 -> prob (N+1,H,W)   background first, soft-aggregated

Memory slots: 0 = first frame (permanent), 1..memory_size = dynamic, S-1 = previous frame
(temporary). Images are normalised inside the graphs (ImageNet mean/std on RGB / 255).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: sha256 per graph (and per built engine)
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("encoder", "qam", "memory_read", "decoder")
PRECISIONS = ("fp32", "fp16", "int8")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file: how a manifest names the checkpoint its graphs were exported from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ManifestError(ValueError):
    """The engine directory or its manifest is missing, malformed or inconsistent."""


def verify_sha256(path: Path, expected: str | None, data: bytes | None = None) -> None:
    """Refuse a graph/engine file whose sha256 is not the one the manifest recorded for it
    (a corrupted or replaced file may still parse and run, giving wrong masks)."""
    if not expected:
        raise ManifestError(f"the manifest records no sha256 for {path.name} (written by an older "
                            "version): re-export (and rebuild engines) to check it")
    got = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    if got != expected:
        raise ManifestError(f"{path} is corrupted or was changed after export: its sha256 "
                            f"{got[:12]}... is not the manifest's {expected[:12]}...; re-export it")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" | "uint8"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), shape=tuple(int(s) for s in d["shape"]),
                   dtype=str(d["dtype"]))


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str = ""  # of `file`, recorded by the exporter, checked by Manifest.load
    engine: str | None = None  # serialized TensorRT engine, once built
    engine_sha256: str | None = None  # of `engine`, checked when the engine is loaded

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, self.file)

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, self.file)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            file=str(d["file"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            sha256=str(d.get("sha256", "")),
            engine=d.get("engine"),
            engine_sha256=d.get("engine_sha256"),
        )


def graph_specs(
    height: int, width: int, max_objects: int, capacity: int, key_dim: int, value_dim: int,
    feature_dims: tuple[int, int, int], files: dict[str, str] | None = None,
) -> dict[str, GraphSpec]:
    """The four graphs' I/O for one static configuration (see the module docstring)."""
    n, s = max_objects, capacity
    h, w = height // 16, width // 16
    _, c8, c4 = feature_dims
    files = files or {g: f"{g}.onnx" for g in GRAPH_NAMES}

    def t(name: str, *shape: int, dtype: str = "float32") -> TensorSpec:
        return TensorSpec(name, tuple(shape), dtype)

    image = t("image", 1, height, width, 3, dtype="uint8")
    qk, qv = t("query_key", 1, key_dim, h, w), t("query_value", 1, value_dim, h, w)
    f8, f4 = t("f8", 1, c8, height // 8, width // 8), t("f4", 1, c4, height // 4, width // 4)
    readout = t("readout", n, value_dim, h, w)
    return {
        "encoder": GraphSpec(files["encoder"], (image, t("prev_prob", n, height, width)),
                             (qk, qv, f8, f4)),
        "qam": GraphSpec(files["qam"], (image, t("masks", n, height, width)),
                         (t("mem_key", n, key_dim, h, w), t("mem_value", n, value_dim, h, w),
                          t("quality", n))),
        "memory_read": GraphSpec(
            files["memory_read"],
            (qk, t("mem_keys", s, n, key_dim, h, w), t("mem_values", s, n, value_dim, h, w),
             t("mem_valid", s)),
            (readout,)),
        "decoder": GraphSpec(files["decoder"], (readout, qv, f8, f4, t("object_valid", n)),
                             (t("prob", n + 1, height, width),)),
    }


def _find(specs: tuple[TensorSpec, ...], name: str, where: str) -> TensorSpec:
    for s in specs:
        if s.name == name:
            return s
    raise ManifestError(f"{where} has no tensor named {name!r}")


@dataclass(frozen=True)
class Manifest:
    height: int
    width: int
    max_objects: int
    memory_size: int  # beta: dynamic slots
    top_k: int
    key_dim: int
    value_dim: int
    precision: str
    graphs: dict[str, GraphSpec]
    mem_every: int = 5
    quality_threshold: float = 0.8
    opset: int = 17
    checkpoint_sha256: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    normalisation: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] | None = None  # versions + GPU the engines were built for
    schema_version: int = SCHEMA_VERSION

    @property
    def capacity(self) -> int:
        return self.memory_size + 2

    @property
    def first_slot(self) -> int:
        return 0

    @property
    def temp_slot(self) -> int:
        return self.capacity - 1

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.height // 16, self.width // 16

    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema {self.schema_version}, runtime expects "
                                f"{SCHEMA_VERSION}: re-export the graphs")
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ManifestError(f"size {self.height}x{self.width} is not a positive multiple of 16")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"precision {self.precision!r} not in {PRECISIONS}")
        missing = [g for g in GRAPH_NAMES if g not in self.graphs]
        if missing:
            raise ManifestError(f"manifest lacks graphs {missing}")
        h, w = self.feature_size
        n, s = self.max_objects, self.capacity
        expect = {
            ("encoder", "image"): (1, self.height, self.width, 3),
            ("encoder", "prev_prob"): (n, self.height, self.width),
            ("qam", "masks"): (n, self.height, self.width),
            ("memory_read", "mem_keys"): (s, n, self.key_dim, h, w),
            ("memory_read", "mem_values"): (s, n, self.value_dim, h, w),
            ("memory_read", "mem_valid"): (s,),
            ("decoder", "object_valid"): (n,),
        }
        for (graph, name), shape in expect.items():
            got = self.graphs[graph].input(name).shape
            if got != shape:
                raise ManifestError(f"{graph}.{name} has shape {got}, expected {shape} from the "
                                    "manifest's size/objects/memory_size")
        prob = self.graphs["decoder"].output("prob").shape
        if prob != (n + 1, self.height, self.width):
            raise ManifestError(f"decoder.prob has shape {prob}, expected {(n + 1, self.height, self.width)}")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            d = dict(d)
            d["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d) - known)
            if unknown:
                raise ManifestError(f"unknown manifest field(s) {unknown}")
            m = cls(**d)
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"malformed manifest: {e}") from None
        m.validate()
        return m

    @classmethod
    def load(cls, engine_dir: str | Path) -> Manifest:
        """Read and validate `engine_dir/manifest.json`; check that every graph file exists and
        has the sha256 recorded at export (engines are checked when a backend loads them)."""
        engine_dir = Path(engine_dir)
        path = engine_dir / MANIFEST_NAME
        if not engine_dir.is_dir():
            raise ManifestError(f"engine dir not found: {engine_dir}")
        if not path.is_file():
            raise ManifestError(f"{engine_dir} has no {MANIFEST_NAME}: export a checkpoint with "
                                "`python export/to_onnx.py CKPT --out DIR` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON: {e}") from None
        m = cls.from_dict(data)
        for name, g in m.graphs.items():
            if not (engine_dir / g.file).is_file():
                raise ManifestError(f"{name} graph file {engine_dir / g.file} is missing")
            verify_sha256(engine_dir / g.file, g.sha256)
        return m

    def save(self, engine_dir: str | Path) -> Path:
        self.validate()
        path = Path(engine_dir) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path
