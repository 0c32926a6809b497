"""Memory policy (Algorithm 1 + the official candidate rule): unit and property tests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.memory_policy import Decision, MemoryPolicy, choose_eviction

scores = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
runs = st.tuples(
    st.integers(1, 5),  # memory_size
    st.integers(1, 4),  # mem_every
    st.sampled_from([0.0, 0.8, 1.0]),  # quality threshold
    st.lists(st.tuples(st.integers(1, 3), scores), min_size=1, max_size=60),  # (gap, score)
)


def play(memory_size: int, mem_every: int, thr: float,
         steps: list[tuple[int, float]]) -> tuple[MemoryPolicy, list[Decision]]:
    p = MemoryPolicy(memory_size, mem_every, thr)
    out = [p.start(0)]
    frame = 0
    for gap, score in steps:
        frame += gap
        out.append(p.decide(frame, score))
    return p, out


def brute_force(memory_size: int, mem_every: int, thr: float,
                steps: list[tuple[int, float]]) -> list[tuple[int, bool, int | None]]:
    """Algorithm 1 written out independently: Memory = {j: score}, evict argmin S + e^-|j-k|."""
    memory: dict[int, float] = {}
    j, last, frame = 1, 0, 0
    out = []
    for gap, score in steps:
        frame += gap
        if frame - last >= mem_every and score >= thr:
            j += 1
            evicted = None
            if len(memory) >= memory_size:
                best = math.inf
                for k in sorted(memory):  # oldest first: strict < keeps the oldest on ties
                    r = memory[k] + math.exp(-abs(j - k))
                    if r < best:
                        best, evicted = r, k
                del memory[evicted]
            memory[j] = score
            last = frame
            out.append((frame, True, evicted))
        else:
            out.append((frame, False, None))
    return out


@settings(max_examples=300, deadline=None)
@given(runs)
def test_matches_algorithm_1(run):
    memory_size, mem_every, thr, steps = run
    _, decisions = play(memory_size, mem_every, thr, steps)
    got = [(d.frame, d.accepted, d.evicted.index if d.evicted else None) for d in decisions[1:]]
    assert got == brute_force(memory_size, mem_every, thr, steps)


@settings(max_examples=300, deadline=None)
@given(runs)
def test_invariants(run):
    memory_size, mem_every, thr, steps = run
    p = MemoryPolicy(memory_size, mem_every, thr)
    first = p.start(0)
    assert first.slot == 0 and first.accepted
    frame = 0
    seen_slots: set[int] = set()
    for gap, score in steps:
        frame += gap
        d = p.decide(frame, score)
        assert len(p.entries) <= memory_size
        assert p.first is not None and p.first.frame == 0 and p.contents()[0] == 0
        assert d.evicted is None or d.evicted.frame != 0
        slots = [e.slot for e in p.entries]
        assert len(set(slots)) == len(slots) and all(1 <= s <= memory_size for s in slots)
        if d.accepted:
            assert d.slot in slots and p.temp_frame is None
            assert d.evicted is None or d.evicted.slot == d.slot
            seen_slots.add(d.slot)
        else:
            assert d.slot == p.temp_slot == memory_size + 1 and p.temp_frame == frame
        # the gap rule: accepted frames are >= mem_every apart
    accepted = [e.frame for e in sorted(p.entries, key=lambda e: e.index)]
    assert all(b - a >= mem_every for a, b in zip([0, *accepted], accepted))


@settings(max_examples=100, deadline=None)
@given(runs)
def test_deterministic(run):
    _, a = play(*run)
    _, b = play(*run)
    assert a == b


def test_official_candidate_and_threshold_rules():
    p = MemoryPolicy(3, mem_every=5, quality_threshold=0.8)
    p.start(0)
    d = p.decide(4, 5.0)
    assert not d.candidate and not d.accepted and d.slot == 4  # too soon: temp slot
    d = p.decide(5, 0.79)
    assert d.candidate and not d.accepted  # low quality
    d = p.decide(6, 0.8)  # >= sigma (the paper), 6 frames after the first
    assert d.accepted and d.slot == 1 and d.index == 2
    assert not p.decide(10, 1.0).candidate  # 4 frames after frame 6
    assert p.decide(11, 1.0).slot == 2
    assert p.contents() == {0: 0, 1: 6, 2: 11}


def test_eviction_prefers_low_quality_then_old():
    p = MemoryPolicy(2, mem_every=1, quality_threshold=0.0)
    p.start(0)
    p.decide(1, 0.9)  # j=2, slot 1
    p.decide(2, 0.3)  # j=3, slot 2
    d = p.decide(3, 1.0)  # j=4: S_R(2) = 0.9 + e^-2, S_R(3) = 0.3 + e^-1 = 0.668 -> evict j=3
    assert d.evicted is not None and d.evicted.index == 3 and d.slot == 2
    # equal scores: the temporal term makes the oldest the cheapest
    p = MemoryPolicy(2, 1, 0.0)
    p.start(0)
    p.decide(1, 1.0)
    p.decide(2, 1.0)
    d = p.decide(3, 1.0)
    assert d.evicted.frame == 1 and d.slot == 1


def test_ties_go_to_the_oldest():
    from runtime.core.memory_policy import MemoryEntry

    a, b = MemoryEntry(1, 10, 2, 0.5), MemoryEntry(2, 20, 4, 0.5)
    # j = 3 is equidistant from indices 2 and 4: same reference score
    assert choose_eviction([b, a], 3) is a


def test_nan_score_never_accepted_and_bad_use_rejected():
    p = MemoryPolicy(2, 1, 0.0)
    with pytest.raises(RuntimeError):
        p.decide(1, 1.0)
    p.start(0)
    assert not p.decide(1, float("nan")).accepted
    with pytest.raises(ValueError):
        p.decide(1, 1.0)  # not after the last decided frame
    with pytest.raises(ValueError):
        MemoryPolicy(0, 1, 0.8)


def test_unbounded_is_cheap():
    p = MemoryPolicy(1_000_000, 1, 0.0)
    p.start(0)
    for f in range(1, 200):
        assert p.decide(f, 1.0).evicted is None
    assert len(p) == 200


def test_decision_json():
    p = MemoryPolicy(1, 1, 0.0)
    p.start(0)
    p.decide(1, 1.0)
    d = p.decide(2, float("inf")).to_dict()
    assert d["score"] is None and d["evicted"]["frame"] == 1
