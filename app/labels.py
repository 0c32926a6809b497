"""The masks a session holds for every frame, kept compressed in memory: a label map is mostly
runs of one value, so a long video's masks take little room, and storing one costs well under a
millisecond, next to nothing beside a frame of the model."""

from __future__ import annotations

import threading
import zlib

import numpy as np

_LEVEL = 1  # the fastest zlib level already shrinks label maps ~100x


class FrameLabels:
    """Frame index -> (H, W) uint8 object ids, for frames that have a result; thread-safe (the
    propagation thread writes while page requests read)."""

    def __init__(self, height: int, width: int):
        self.shape = (height, width)
        self._data: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def __setitem__(self, index: int, labels: np.ndarray) -> None:
        if labels.shape != self.shape:
            raise ValueError(f"labels {labels.shape} for frames of {self.shape}")
        data = zlib.compress(np.ascontiguousarray(labels, np.uint8).tobytes(), _LEVEL)
        with self._lock:
            self._data[index] = data

    def get(self, index: int) -> np.ndarray | None:
        with self._lock:
            data = self._data.get(index)
        if data is None:
            return None
        return np.frombuffer(zlib.decompress(data), np.uint8).reshape(self.shape)

    def labels(self, index: int) -> np.ndarray:
        """The frame's labels, empty (all background) where it has none yet."""
        got = self.get(index)
        return np.zeros(self.shape, np.uint8) if got is None else got.copy()

    def indices(self) -> list[int]:
        with self._lock:
            return sorted(self._data)
