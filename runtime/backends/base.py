"""The one backend interface every inference library implements, and the host (numpy) base.

A backend owns one buffer per tensor name (names are shared between graphs, so an encoder
output such as `query_key` is bound as the memory_read input of the same name) plus the memory
bank. The segmenter drives it with `run(graph, feeds, fetch)`: `feeds` are host arrays copied
into the named buffers, every other input is whatever the buffer holds (an earlier graph's
output, or the bank), and only the names in `fetch` come back to the host. Nothing is
allocated or concatenated per frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.core.errors import EngineMismatchError
from runtime.core.manifest import GRAPH_NAMES, Manifest, TensorSpec, slot_writes

BANK_TENSORS = ("mem_keys", "mem_values", "mem_valid")  # memory_read inputs held by the bank


def tensor_specs(manifest: Manifest) -> dict[str, TensorSpec]:
    """Every tensor of the graphs by name, checking that shared names agree."""
    specs: dict[str, TensorSpec] = {}
    for g in GRAPH_NAMES:
        graph = manifest.graphs[g]
        for t in (*graph.inputs, *graph.outputs):
            seen = specs.setdefault(t.name, t)
            if (seen.shape, seen.dtype) != (t.shape, t.dtype):
                raise EngineMismatchError(
                    f"tensor {t.name!r} is {seen.shape} {seen.dtype} in one graph but "
                    f"{t.shape} {t.dtype} in {g}: the manifest is inconsistent, re-export")
    return specs


class Bank(ABC):
    """Preallocated memory slots in the layout memory_read consumes (manifest.BANK_AXES):
    keys (N,S,P,CK), values (N,S,P,CV), valid (S,) float32.

    Slot writes store the *last qam outputs* (`mem_key_i`/`mem_value_i`, one chunk per object
    i); writing a slot other than the temp slot also empties the temp slot (the frame just
    memorised was the previous frame it staged).
    """

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.capacity = manifest.capacity
        self.temp_slot = manifest.temp_slot
        self.writes = slot_writes(manifest.max_objects)  # (qam output, bank tensor, object)
        self._valid = np.zeros(self.capacity, np.float32)

    @property
    def valid(self) -> np.ndarray:
        """(S,) float32 copy, 1 = the slot holds a frame (logical slot order)."""
        return self._valid.copy()

    def write(self, slot: int) -> None:
        """Store the last qam mem_key/mem_value into `slot` and mark it valid."""
        self._check(slot)
        self._store(slot)
        self._valid[slot] = 1.0
        if slot != self.temp_slot:
            self._valid[self.temp_slot] = 0.0
        self._valid_changed()

    def invalidate(self, slot: int) -> None:
        self._check(slot)
        self._valid[slot] = 0.0
        self._valid_changed()

    def reset(self) -> None:
        self._valid[:] = 0.0
        self._valid_changed()

    @abstractmethod
    def read(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of a slot's keys (N,P,CK) and values (N,P,CV) (tests, debugging)."""

    @abstractmethod
    def _store(self, slot: int) -> None: ...

    def _valid_changed(self) -> None:
        """Device banks upload the valid vector lazily; host banks read `_valid` directly."""

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.capacity:
            raise IndexError(f"slot {slot} outside the bank's {self.capacity} slots")


class Backend(ABC):
    """One inference library running the graphs of a manifest on static buffers."""

    name: str = "?"

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.specs = tensor_specs(manifest)

    bank: Bank

    @abstractmethod
    def run(self, graph: str, feeds: Mapping[str, np.ndarray] | None = None,
            fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run `graph`. feeds: host arrays for some of its inputs (copied in); returns host
        arrays for the `fetch` names (owned by the caller). Synchronous."""

    def next_qam_lasts(self, lasting: bool) -> None:
        """Whether the next `qam` run's keys and values may stay in the memory bank for many
        frames (the default: the annotated frame, a candidate for the long-term memory) or for
        one frame only (the temporary slot). A backend with a faster, less exact mode may use it
        for the latter; the rest ignore this."""

    def describe(self) -> dict[str, Any]:
        """What run.json records about the backend."""
        return {"name": self.name}

    def close(self) -> None:
        """Release sessions/engines/device memory (idempotent)."""

    def __enter__(self) -> Backend:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_feed(self, name: str, array: np.ndarray) -> np.ndarray:
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(f"no tensor named {name!r} in the graphs")
        a = np.asarray(array)
        if a.shape != spec.shape:
            raise ValueError(f"{name}: got shape {a.shape}, the graphs expect {spec.shape}")
        return np.ascontiguousarray(a, dtype=spec.dtype)


class HostBank(Bank):
    """The bank as preallocated numpy arrays (CPU backends)."""

    def __init__(self, manifest: Manifest, source: Mapping[str, np.ndarray]):
        super().__init__(manifest)
        spec = manifest.graphs["memory_read"]
        self.arrays = {t: np.zeros(spec.input(t).shape, np.float32)
                       for t in ("mem_keys", "mem_values")}
        self._source = source  # the backend's buffers, where qam leaves its outputs

    def _store(self, slot: int) -> None:
        for name, tensor, obj in self.writes:
            self.arrays[tensor][obj, slot] = self._source[name]

    def read(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        self._check(slot)
        return (self.arrays["mem_keys"][:, slot].copy(),
                self.arrays["mem_values"][:, slot].copy())

    def inputs(self) -> dict[str, np.ndarray]:
        return {**self.arrays, "mem_valid": self._valid}


class HostBackend(Backend):
    """Backends whose graphs take and return numpy arrays: implement `_execute` only."""

    def __init__(self, manifest: Manifest):
        super().__init__(manifest)
        self.buffers: dict[str, np.ndarray] = {
            n: np.zeros(s.shape, s.dtype) for n, s in self.specs.items() if n not in BANK_TENSORS
        }
        self.bank = self._make_bank()

    def _make_bank(self) -> Bank:
        return HostBank(self.manifest, self.buffers)

    @abstractmethod
    def _execute(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on host arrays; return fresh output arrays by name."""

    def run(self, graph: str, feeds: Mapping[str, np.ndarray] | None = None,
            fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        spec = self.manifest.graphs[graph]
        for name, array in (feeds or {}).items():
            self.buffers[name] = self._check_feed(name, array).copy()
        names = [t.name for t in spec.inputs]
        bank = self.bank.inputs() if set(names) & set(BANK_TENSORS) else {}  # type: ignore
        inputs = {n: bank[n] if n in bank else self.buffers[n] for n in names}
        outputs = self._execute(graph, inputs)
        for t in spec.outputs:
            out = outputs[t.name]
            if out.shape != t.shape:
                raise EngineMismatchError(f"{graph}.{t.name} returned {out.shape}, manifest "
                                          f"says {t.shape}")
            # _execute returns fresh arrays, so keeping references is safe and copy-free.
            self.buffers[t.name] = out
        return {n: self.buffers[n].copy() for n in fetch}
