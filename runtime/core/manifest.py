"""The manifest: the one contract between the exporter and the runtime (torch-free).

The exporter writes `manifest.json` next to the graphs; the runtime reads it and nothing
else, so every shape the runtime allocates comes from here.

Graph I/O (N = max_objects, S = capacity = memory_size + 2, CK/CV = key/value dims,
h x w = H/STRIDE x W/STRIDE = H/16 x W/16, P = h*w positions, C16 = the value encoder's f16
width, q = qam_size;
all float32 unless noted, FP16/INT8 graphs keep FP32 I/O):

    encoder      image (1,H,W,3) uint8 RGB, prev_prob (N,H,W)
                 -> query_key (1,CK,h,w), query_value (1,CV,h,w), f8 (1,C8,H/8,W/8), f4 (1,C4,H/4,W/4)
    qam          image (1,H,W,3) uint8 RGB, masks (N,H,W)
                 -> mem_key_i (P,CK), mem_value_i (P,CV) for each object i < N,
                    quality_features (N,C16,q,q)
    quality      quality_features -> quality (N,)   QAM score head, only for insertion candidates
    memory_read  query_key, mem_keys (N,S,P,CK), mem_values (N,S,P,CV), mem_valid (S,)
                 -> readout (N,CV,h,w)
    decoder      readout, query_value, f8, f4, object_valid (N,)
                 -> prob (N+1,H,W)   background first, soft-aggregated

The memory bank is stored in the layout memory_read consumes (BANK_AXES: object, slot,
position, channel): per object, the keys of all slots form one (S*P, CK) matrix, so the read
transposes nothing. A slot write stores each object's qam output `mem_key_i`/`mem_value_i` -
one contiguous (P, C) chunk, `bank_chunk` - in place; device backends bind those outputs
straight into the bank.

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

from runtime.core.errors import QDMNRuntimeError, TooManyObjectsError
from runtime.core.memory_policy import DEFAULT_MEM_EVERY, DEFAULT_QUALITY_THRESHOLD, bank_capacity
from runtime.core.quality import DEFAULT_QUALITY_SCORE, QUALITY_SCORES

STRIDE = 16  # keys/values are at 1/16 of the input: H and W must be multiples of it
# 2: sha256 per graph (and per built engine); 3: bank (object, slot, position, channel), QAM
# score head split out
SCHEMA_VERSION = 3
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("encoder", "qam", "quality", "memory_read", "decoder")
PRECISIONS = ("fp32", "fp16", "int8")
BANK_AXES = ("object", "slot", "position", "channel")  # mem_keys / mem_values layout


def slot_writes(max_objects: int) -> tuple[tuple[str, str, int], ...]:
    """(qam output, bank tensor, object) for every chunk a slot write stores."""
    return tuple((f"{kind}_{i}", bank, i) for kind, bank in (("mem_key", "mem_keys"),
                                                              ("mem_value", "mem_values"))
                 for i in range(max_objects))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file: how a manifest names the checkpoint its graphs were exported from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ManifestError(QDMNRuntimeError, ValueError):
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
    height: int, width: int, max_objects: int, memory_size: int, key_dim: int, value_dim: int,
    feature_dims: tuple[int, int, int], qam_size: int, files: dict[str, str] | None = None,
) -> dict[str, GraphSpec]:
    """The graphs' I/O for one static configuration (see the module docstring)."""
    n, s = max_objects, bank_capacity(memory_size)
    h, w = height // STRIDE, width // STRIDE
    p = h * w
    c16, c8, c4 = feature_dims
    files = files or {g: f"{g}.onnx" for g in GRAPH_NAMES}

    def t(name: str, *shape: int, dtype: str = "float32") -> TensorSpec:
        return TensorSpec(name, tuple(shape), dtype)

    image = t("image", 1, height, width, 3, dtype="uint8")
    qk, qv = t("query_key", 1, key_dim, h, w), t("query_value", 1, value_dim, h, w)
    f8, f4 = t("f8", 1, c8, height // 8, width // 8), t("f4", 1, c4, height // 4, width // 4)
    readout = t("readout", n, value_dim, h, w)
    features = t("quality_features", n, c16, qam_size, qam_size)
    dims = {"mem_key": key_dim, "mem_value": value_dim}
    chunks = tuple(t(name, p, dims[name.rsplit("_", 1)[0]]) for name, _, _ in slot_writes(n))
    return {
        "encoder": GraphSpec(files["encoder"], (image, t("prev_prob", n, height, width)),
                             (qk, qv, f8, f4)),
        "qam": GraphSpec(files["qam"], (image, t("masks", n, height, width)),
                         (*chunks, features)),
        "quality": GraphSpec(files["quality"], (features,), (t("quality", n),)),
        "memory_read": GraphSpec(
            files["memory_read"],
            (qk, t("mem_keys", n, s, p, key_dim), t("mem_values", n, s, p, value_dim),
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
    mem_every: int = DEFAULT_MEM_EVERY
    quality_threshold: float = DEFAULT_QUALITY_THRESHOLD
    # the gate's score (runtime.core.quality): "qam" for an official checkpoint, whose QAM head the
    # paper trained and evaluated alone; DEFAULT_QUALITY_SCORE for this project's models
    quality_score: str = DEFAULT_QUALITY_SCORE
    opset: int = 17
    checkpoint_sha256: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    normalisation: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] | None = None  # versions + GPU the engines were built for
    bank_axes: tuple[str, ...] = BANK_AXES
    schema_version: int = SCHEMA_VERSION

    @property
    def capacity(self) -> int:
        return bank_capacity(self.memory_size)

    @property
    def first_slot(self) -> int:
        return 0

    @property
    def temp_slot(self) -> int:
        return self.capacity - 1

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.height // STRIDE, self.width // STRIDE

    def bank_chunk(self, tensor: str, obj: int, slot: int) -> tuple[int, int]:
        """(element offset, element count) of object `obj`'s chunk of `slot` in bank tensor
        `tensor` (mem_keys | mem_values): where a slot write stores that qam output."""
        n, s, p, c = self.graphs["memory_read"].input(tensor).shape
        if not (0 <= obj < n and 0 <= slot < s):
            raise IndexError(f"object {obj} / slot {slot} outside the bank's {n} x {s}")
        return (obj * s + slot) * p * c, p * c

    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema {self.schema_version}, runtime expects "
                                f"{SCHEMA_VERSION}: re-export the graphs")
        if self.height % STRIDE or self.width % STRIDE or self.height <= 0 or self.width <= 0:
            raise ManifestError(f"size {self.height}x{self.width} is not a positive multiple of "
                                f"{STRIDE}")
        if tuple(self.bank_axes) != BANK_AXES:
            raise ManifestError(f"bank layout {tuple(self.bank_axes)}, runtime expects "
                                f"{BANK_AXES}: re-export the graphs")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"precision {self.precision!r} not in {PRECISIONS}")
        if self.quality_score not in QUALITY_SCORES:
            raise ManifestError(f"quality_score {self.quality_score!r} not in {QUALITY_SCORES}")
        missing = [g for g in GRAPH_NAMES if g not in self.graphs]
        if missing:
            raise ManifestError(f"manifest lacks graphs {missing}")
        h, w = self.feature_size
        n, s = self.max_objects, self.capacity
        expect = {
            ("encoder", "image"): (1, self.height, self.width, 3),
            ("encoder", "prev_prob"): (n, self.height, self.width),
            ("qam", "masks"): (n, self.height, self.width),
            ("memory_read", "mem_keys"): (n, s, h * w, self.key_dim),
            ("memory_read", "mem_values"): (n, s, h * w, self.value_dim),
            ("memory_read", "mem_valid"): (s,),
            ("decoder", "object_valid"): (n,),
        }
        for (graph, name), shape in expect.items():
            got = self.graphs[graph].input(name).shape
            if got != shape:
                raise ManifestError(f"{graph}.{name} has shape {got}, expected {shape} from the "
                                    "manifest's size/objects/memory_size")
        for name, bank, _ in slot_writes(n):
            got = self.graphs["qam"].output(name).shape
            if got != self.graphs["memory_read"].input(bank).shape[2:]:
                raise ManifestError(f"qam.{name} has shape {got}, not one chunk of {bank}")
        prob = self.graphs["decoder"].output("prob").shape
        if prob != (n + 1, self.height, self.width):
            raise ManifestError(f"decoder.prob has shape {prob}, expected {(n + 1, self.height, self.width)}")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if not isinstance(d, dict):
            raise ManifestError(f"malformed manifest: a JSON object expected, got {type(d).__name__}")
        try:
            d = dict(d)
            d["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
            if "bank_axes" in d:
                d["bank_axes"] = tuple(d["bank_axes"])
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d) - known)
            if unknown:
                raise ManifestError(f"unknown manifest field(s) {unknown}")
            m = cls(**d)
            m.validate()  # a field of the wrong type fails here as TypeError/ValueError
        except ManifestError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ManifestError(f"malformed manifest: {e}") from None
        return m

    def check_object_count(self, n: int, what: str = "the first mask") -> None:
        """Refuse (TooManyObjectsError) more objects than the graphs were exported for."""
        if n > self.max_objects:
            raise TooManyObjectsError(
                f"{n} objects in {what}, but the graphs were exported for at most "
                f"{self.max_objects}: re-export with `python export/to_onnx.py CKPT --out DIR "
                f"--max-objects {n}`")

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
        except ValueError as e:  # not JSON, or not text (UnicodeDecodeError)
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
