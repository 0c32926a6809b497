"""Which frames the memory bank keeps (QDMN, ECCV 2022, Sec. 3.2-3.3 and Algorithm 1).

Pure Python over slot metadata: no arrays, no backend. The runtime asks for a decision per frame
and writes the frame's key/value into the slot the decision names.

Slots: 0 holds the first frame (permanent), 1..memory_size the long-term frames, `temp_slot`
the previous frame while it is not a long-term memory (the official code's `prev_in_mem`).

Semantics follow the official inference loop: a frame is a *candidate* once it is at least
`mem_every` frames after the last inserted frame (or the first frame), and it is *accepted* when
its normalised quality score is >= `quality_threshold` (sigma; the paper says >=, the official
code >). Accepted frames get consecutive insertion indices j (the first frame is j = 1). When all
dynamic slots are full, the entry k minimising S_k^A + exp(-|j - k|) is evicted (ties: the
oldest, i.e. smallest k) and its slot is reused.

Given frames (masks a user or a dataset gives on frames after the first, `pin`) are references
like the first frame: each takes a dynamic slot (a free one, else Algorithm 1's choice) and is
pinned there, never evicted, while it is one of the `max_pinned` newest given frames; an older
one is demoted to an ordinary entry (score 1, its own index) that Algorithm 1 may evict. So the
bank stays the graphs' fixed size however many frames are given, and at least one dynamic slot
always stays free for the frames the gate accepts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# The paper's memory settings (Sec. 4.1, the official inference code): the exporter writes them
# into the manifest, and a RuntimeConfig may override them per run.
DEFAULT_MEMORY_SIZE = 25  # beta: dynamic (long-term) slots
DEFAULT_MEM_EVERY = 5  # min frames between two long-term insertions
DEFAULT_QUALITY_THRESHOLD = 0.8  # sigma: min normalised quality score of an inserted frame
# Normalised scores are >= 0 (sigmoid or ReLU head over a positive first-frame score, times a
# confidence in [0, 1]), so sigma = 0 accepts every candidate frame: the predecessors' (STM,
# STCN) "every mem_every-th frame", and a full bank whatever the weights' scores.
ACCEPT_ALL = 0.0
FIXED_SLOTS = 2  # besides the dynamic slots: the first frame's and the temp (previous) slot
MAX_PINNED = 8  # given frames held as references at once (at most memory_size - 1)


def bank_capacity(memory_size: int) -> int:
    """Slots of a bank with `memory_size` dynamic slots (the graphs' S = beta + 2)."""
    return memory_size + FIXED_SLOTS


@dataclass(frozen=True)
class MemoryEntry:
    """One frame held in a memory slot."""

    slot: int
    frame: int
    index: int  # j, the insertion index (first frame = 1)
    score: float  # normalised quality score S^A (1.0 for the first frame)
    pinned: bool = False  # a given frame still held as a reference: never evicted


@dataclass(frozen=True)
class Decision:
    """Where frame `frame` goes. `slot` is a dynamic slot when accepted, else the temp slot."""

    frame: int
    score: float
    candidate: bool  # far enough from the last insertion to be considered
    accepted: bool  # written as a long-term memory (the temp slot is then emptied)
    slot: int
    index: int | None  # insertion index j when accepted
    evicted: MemoryEntry | None  # the long-term entry whose slot was reused
    given: bool = False  # a given frame, pinned as a reference (`MemoryPolicy.pin`)
    demoted: int | None = None  # the given frame this one's arrival made an ordinary entry

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = _json_float(self.score)
        if self.evicted is not None:
            d["evicted"]["score"] = _json_float(self.evicted.score)
        return d


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def reference_score(entry: MemoryEntry, j: int) -> float:
    """S^R_k = S^A_k + S^C_k with the temporal consistency S^C_k = exp(-|j - k|) (Eq. 4)."""
    return entry.score + math.exp(-abs(j - entry.index))


def choose_eviction(entries: Iterable[MemoryEntry], j: int) -> MemoryEntry:
    """The long-term entry with the lowest reference score for new index j; ties -> oldest."""
    return min(entries, key=lambda e: (reference_score(e, j), e.index))


class MemoryPolicy:
    """Insertion/eviction decisions for one video; call `start` once, then `decide` per frame."""

    def __init__(self, memory_size: int, mem_every: int, quality_threshold: float, *,
                 first_slot: int = 0, temp_slot: int | None = None,
                 max_pinned: int = MAX_PINNED):
        if memory_size < 1:
            raise ValueError(f"memory_size={memory_size}: need at least one dynamic slot")
        if mem_every < 1:
            raise ValueError(f"mem_every={mem_every}: expected >= 1")
        self.memory_size = memory_size
        self.mem_every = mem_every
        self.quality_threshold = float(quality_threshold)
        self.first_slot = first_slot
        self.max_pinned = max(0, min(max_pinned, memory_size - 1))
        self.dynamic_slots = range(first_slot + 1, first_slot + 1 + memory_size)
        last_slot = first_slot + bank_capacity(memory_size) - 1
        self.temp_slot = last_slot if temp_slot is None else temp_slot
        if self.temp_slot in self.dynamic_slots or self.temp_slot == first_slot:
            raise ValueError(f"temp_slot={self.temp_slot} collides with the first/dynamic slots")
        self._first: MemoryEntry | None = None
        self._entries: dict[int, MemoryEntry] = {}  # slot -> entry, dynamic slots only
        self._temp_frame: int | None = None
        self._last_inserted = 0
        self._last_frame = 0
        self._next_index = 2

    def start(self, frame: int = 0) -> Decision:
        """The annotated first frame: slot `first_slot`, never evicted; resets the policy."""
        self._first = MemoryEntry(self.first_slot, frame, 1, 1.0, pinned=True)
        self._entries.clear()
        self._temp_frame = None
        self._last_inserted = self._last_frame = frame
        self._next_index = 2
        return Decision(frame, 1.0, True, True, self.first_slot, 1, None)

    def is_candidate(self, frame: int) -> bool:
        """Whether `frame` (the next one to decide) may enter the long-term memory: only then
        does `decide` look at its score, so the caller may skip computing it otherwise."""
        return frame - self._last_inserted >= self.mem_every

    def decide(self, frame: int, score: float) -> Decision:
        """Decide for frame `frame` (after the previous ones) with normalised score `score`
        (any value, e.g. NaN, when the frame is not a candidate)."""
        if self._first is None:
            raise RuntimeError("MemoryPolicy.decide() before start()")
        if frame <= self._last_frame:
            raise ValueError(f"frame {frame} is not after the last decided frame {self._last_frame}")
        self._last_frame = frame
        score = float(score)
        candidate = self.is_candidate(frame)
        # NaN compares False: a frame with an undefined score is never memorised.
        if not (candidate and score >= self.quality_threshold):
            self._temp_frame = frame
            return Decision(frame, score, candidate, False, self.temp_slot, None, None)
        j, slot, evicted = self._insert(frame, score, pinned=False)
        return Decision(frame, score, True, True, slot, j, evicted)

    def pin(self, frame: int) -> Decision:
        """A given frame (its mask given, not predicted): a reference with score 1, pinned in a
        dynamic slot; the oldest pinned frame is demoted when max_pinned are pinned already.
        With max_pinned 0 (a single dynamic slot) it is an ordinary entry."""
        if self._first is None:
            raise RuntimeError("MemoryPolicy.pin() before start()")
        if frame <= self._last_frame:
            raise ValueError(f"frame {frame} is not after the last decided frame {self._last_frame}")
        self._last_frame = frame
        demoted = None
        pinned = sorted((e for e in self._entries.values() if e.pinned), key=lambda e: e.index)
        if self.max_pinned and len(pinned) >= self.max_pinned:
            old = pinned[0]
            self._entries[old.slot] = MemoryEntry(old.slot, old.frame, old.index, old.score)
            demoted = old.frame
        j, slot, evicted = self._insert(frame, 1.0, pinned=self.max_pinned > 0)
        return Decision(frame, 1.0, True, True, slot, j, evicted, True, demoted)

    def _insert(self, frame: int, score: float, *, pinned: bool
                ) -> tuple[int, int, MemoryEntry | None]:
        j = self._next_index
        self._next_index += 1
        evicted = None
        if len(self._entries) < self.memory_size:
            # Slots fill in order and a freed slot is reused at once, so the free one is next.
            slot = self.dynamic_slots[len(self._entries)]
        else:
            evicted = choose_eviction((e for e in self._entries.values() if not e.pinned), j)
            slot = evicted.slot
        self._entries[slot] = MemoryEntry(slot, frame, j, score, pinned)
        self._last_inserted = frame
        self._temp_frame = None
        return j, slot, evicted

    @property
    def first(self) -> MemoryEntry | None:
        return self._first

    @property
    def entries(self) -> tuple[MemoryEntry, ...]:
        """The long-term entries, in slot order."""
        return tuple(self._entries[s] for s in sorted(self._entries))

    @property
    def temp_frame(self) -> int | None:
        """The frame held in the temp slot, or None when it is empty."""
        return self._temp_frame

    def __len__(self) -> int:
        """Frames in memory (first + long-term), the temporary previous frame excluded."""
        return (self._first is not None) + len(self._entries)

    def contents(self) -> dict[int, int]:
        """slot -> frame for every occupied slot (the run log's view of the bank)."""
        out = {} if self._first is None else {self._first.slot: self._first.frame}
        out.update({s: e.frame for s, e in sorted(self._entries.items())})
        if self._temp_frame is not None:
            out[self.temp_slot] = self._temp_frame
        return out
