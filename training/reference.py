"""PyTorch reference inference: QDMN's methods behind the runtime's backend interface.

The decision logic (memory policy, slot writes, pre/post-processing) is the runtime's
`Segmenter`, so the paper's inference loop exists once; only the graph execution differs. Use
it to check exported graphs (same checkpoint, same decisions) and, with `unbounded=True`, as
the unbounded-memory baseline (no eviction) for benchmarks. Everywhere here `memory_size=None`
means the default bank (the manifest's, else DEFAULT_MEMORY_SIZE), never "unbounded".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.backends.base import Bank, HostBackend
from runtime.core.config import RuntimeConfig, check_threads
from runtime.core.manifest import STRIDE, Manifest, file_sha256, graph_specs
from runtime.core.memory_policy import DEFAULT_MEMORY_SIZE
from runtime.core.quality import DEFAULT_QUALITY_SCORE
from runtime.segmenter import Segmenter
from training.checkpoint import checkpoint_quality_score, load_model
from training.config import ModelConfig
from training.graphs import build_graphs
from training.model import QDMN

# "Unbounded" memory: more dynamic slots than any video has frames. The reference bank stores
# only written slots, so this allocates nothing up front.
UNBOUNDED_MEMORY = 1_000_000


def reference_manifest(cfg: ModelConfig, height: int, width: int, max_objects: int,
                       memory_size: int = DEFAULT_MEMORY_SIZE, **extra: object) -> Manifest:
    """In-memory manifest for the reference (no files); UNBOUNDED_MEMORY for no eviction."""
    specs = graph_specs(height, width, max_objects, memory_size, cfg.key_dim, cfg.value_dim,
                        cfg.feature_dims, cfg.qam_size)
    m = Manifest(height=height, width=width, max_objects=max_objects, memory_size=memory_size,
                 top_k=cfg.top_k, key_dim=cfg.key_dim, value_dim=cfg.value_dim,
                 precision="fp32", graphs=specs, model_config=cfg.to_dict(), **extra)
    m.validate()
    return m


class SparseBank(Bank):
    """Host bank storing only the written slots; memory_read sees the valid ones in slot order.

    Dropping invalid slots is exact: the graphs give them an affinity bias of -1e4, whose exp()
    is 0 in FP32, and the top-k threshold then falls on a valid position or below all of them.
    """

    def __init__(self, manifest: Manifest, source: Mapping[str, np.ndarray]):
        super().__init__(manifest)
        self._slots: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._source = source  # the backend's buffers, where qam leaves mem_key/mem_value

    def _store(self, slot: int) -> None:
        keys, values = (np.stack([self._source[name] for name, t, _ in self.writes
                                  if t == tensor]) for tensor in ("mem_keys", "mem_values"))
        self._slots[slot] = (keys, values)

    def read(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        self._check(slot)
        k, v = self._slots[slot]
        return k.copy(), v.copy()

    def valid_slots(self) -> list[int]:
        return [s for s in sorted(self._slots) if self._valid[s] > 0]

    def inputs(self) -> dict[str, np.ndarray]:
        """The valid slots in the bank layout: keys (N, T, P, CK), values (N, T, P, CV)."""
        slots = self.valid_slots()
        return {"mem_keys": np.stack([self._slots[s][0] for s in slots], 1),
                "mem_values": np.stack([self._slots[s][1] for s in slots], 1),
                "mem_valid": np.ones(len(slots), np.float32)}


class TorchBackend(HostBackend):
    """Runs the exported graphs' own PyTorch modules (training.graphs: the wrappers the
    exporter traces) in FP32 on the model's device (the CPU, or the GPU that trains it);
    tensors cross by the manifest's names and layouts."""

    name = "torch"

    def __init__(self, model: QDMN, manifest: Manifest, *, threads: int | None = None):
        self.model = model.eval()
        if threads is not None:
            # Process-wide in torch. One thread is far faster on a loaded machine: OpenMP
            # workers that wait for a busy core made a 64x96 step 50x slower in our tests.
            torch.set_num_threads(check_threads(threads))
        super().__init__(manifest)
        device = next(model.parameters()).device  # the GPU that trains it, in validation
        self.graphs = {name: g.to(device) for name, g in
                       build_graphs(model, manifest.height, manifest.width).items()}

    def _make_bank(self) -> Bank:
        return SparseBank(self.manifest, self.buffers)

    @torch.inference_mode()
    def _execute(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        device = next(self.model.parameters()).device  # validation during GPU training
        spec = self.manifest.graphs[graph]
        outs = self.graphs[graph](*(torch.from_numpy(inputs[t.name]).to(device)
                                    for t in spec.inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {t.name: o.float().cpu().numpy().copy()  # float(): bf16 under autocast
                for t, o in zip(spec.outputs, outs, strict=True)}

    def run(self, graph: str, feeds: Mapping[str, np.ndarray] | None = None,
            fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if graph != "memory_read":
            return super().run(graph, feeds, fetch)
        # The sparse bank's arrays have as many slots as are valid, not the manifest's S.
        out = self._execute(graph, {"query_key": self.buffers["query_key"],
                                    **self.bank.inputs()})
        self.buffers.update(out)
        return {n: self.buffers[n].copy() for n in fetch}


def reference_segmenter(
    model: QDMN | str | Path, *, manifest: Manifest | None = None,
    size: tuple[int, int] | None = None, max_objects: int | None = None,
    memory_size: int | None = None, unbounded: bool = False,
    config: RuntimeConfig | None = None, checkpoint_sha256: str | None = None,
) -> Segmenter:
    """A Segmenter running the PyTorch model (a QDMN or a checkpoint path) at a fixed size.

    Either `manifest` (an exported one: same size, objects, memory and policy defaults, to
    compare against its graphs) or `size` + `max_objects` (+ memory_size, default
    DEFAULT_MEMORY_SIZE). unbounded=True: no eviction ever (memory grows with the video); it
    excludes memory_size. config.threads, when given, sets torch's (process-wide) thread count.
    """
    if unbounded and memory_size is not None:
        raise ValueError("reference_segmenter: memory_size and unbounded=True exclude each other")
    model, sha, score = _load(model)
    sha = checkpoint_sha256 or sha
    if manifest is not None:
        size = (manifest.height, manifest.width)
        max_objects = manifest.max_objects
        memory_size = manifest.memory_size
        extra = {"mem_every": manifest.mem_every,
                 "quality_threshold": manifest.quality_threshold,
                 "quality_score": manifest.quality_score}
    else:
        extra = {"quality_score": score}
    if size is None or max_objects is None:
        raise ValueError("reference_segmenter: pass manifest=, or size= and max_objects=")
    if unbounded:
        memory_size = UNBOUNDED_MEMORY
    elif memory_size is None:
        memory_size = DEFAULT_MEMORY_SIZE
    ref = reference_manifest(model.cfg, size[0], size[1], max_objects, memory_size,
                             checkpoint_sha256=sha, **extra)
    config = config or RuntimeConfig()
    return Segmenter.from_backend(ref, TorchBackend(model, ref, threads=config.threads), config)


def _load(model: QDMN | str | Path) -> tuple[QDMN, str, str]:
    """The model, its file's sha256 and its gate score (checkpoint_quality_score; the default
    for a model given as an object)."""
    if isinstance(model, QDMN):
        return model.eval(), "", DEFAULT_QUALITY_SCORE
    path = Path(model)
    loaded, meta = load_model(path)
    return loaded, file_sha256(path), checkpoint_quality_score(meta)


class ReferenceSegmenter:
    """The reference with the runtime's `start(frame, mask)` / `step(frame)` API, sized per video.

    The working size is `size`, else the checkpoint's training `image_size`, else the first
    frame's size rounded up to multiples of STRIDE; max_objects defaults to the first mask's object
    count. The inner Segmenter is rebuilt when a new video needs another size or more objects.
    """

    def __init__(self, model: QDMN, *, size: tuple[int, int] | None = None,
                 max_objects: int | None = None, memory_size: int | None = None,
                 unbounded: bool = False, mem_every: int | None = None,
                 quality_threshold: float | None = None, threads: int | None = None,
                 locality: float | None = None, quality_score: str | None = None,
                 checkpoint_sha256: str = ""):
        self.model = model.eval()
        self.size = size
        self.max_objects = max_objects
        self.memory_size = memory_size
        self.unbounded = unbounded
        self.config = RuntimeConfig(mem_every=mem_every, quality_threshold=quality_threshold,
                                    threads=threads, locality=locality,
                                    quality_score=quality_score)
        self.checkpoint_sha256 = checkpoint_sha256
        self.segmenter: Segmenter | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> ReferenceSegmenter:
        model, meta = load_model(path)
        if kwargs.get("size") is None and (meta.get("config") or {}).get("image_size"):
            kwargs["size"] = tuple(meta["config"]["image_size"])
        if kwargs.get("quality_score") is None:
            kwargs["quality_score"] = checkpoint_quality_score(meta)
        return cls(model, checkpoint_sha256=file_sha256(path), **kwargs)

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        size = self.size or tuple(-(-d // STRIDE) * STRIDE for d in frame.shape[:2])
        objects = self.max_objects or max(1, int(np.count_nonzero(np.unique(mask))))
        m = None if self.segmenter is None else self.segmenter.manifest
        if m is None or (m.height, m.width) != size or m.max_objects < objects:
            self.segmenter = reference_segmenter(
                self.model, size=size, max_objects=objects, memory_size=self.memory_size,
                unbounded=self.unbounded, config=self.config,
                checkpoint_sha256=self.checkpoint_sha256)
        return self.segmenter.start(frame, mask)

    def step(self, frame: np.ndarray, *, last: bool = False) -> np.ndarray:
        if self.segmenter is None:
            raise RuntimeError("ReferenceSegmenter.step() before start()")
        return self.segmenter.step(frame, last=last)

    @property
    def last_record(self) -> Any:
        return None if self.segmenter is None else self.segmenter.last_record

    @property
    def last_prob(self) -> np.ndarray | None:
        """(N+1, H, W) probabilities of the last frame, background first."""
        return None if self.segmenter is None else self.segmenter.last_prob


__all__ = [
    "UNBOUNDED_MEMORY",
    "ReferenceSegmenter",
    "TorchBackend",
    "reference_manifest",
    "reference_segmenter",
]
