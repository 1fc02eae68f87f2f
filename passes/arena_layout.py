"""Helpers of plan-memory: the offsets of the arena's storages (step 4 of plan_memory.py's doc): best fit,
tried with a few orderings, the smallest arena wins."""
from __future__ import annotations


def layout(live: list) -> tuple[str, int]:
    """Give every storage in `live` (objects with first, last, asize, offset) its offset; returns the name
    of the ordering used and the arena size."""
    orders = {
        "size": sorted(live, key=lambda s: (-s.asize, s.first, s.last)),
        "first": sorted(live, key=lambda s: (s.first, -s.asize)),
        "area": sorted(live, key=lambda s: (-s.asize * (s.last - s.first + 1), s.first)),
    }
    best_name, best_top, best_offsets = "", None, None
    for name, order in orders.items():
        top = _place(live, order)
        if best_top is None or top < best_top:
            best_name, best_top, best_offsets = name, top, {id(s): s.offset for s in live}
    for s in live:
        s.offset = best_offsets[id(s)]
    return best_name, best_top or 0


def _place(storages: list, order: list) -> int:
    """Best-fit offsets in the given order; returns the arena size."""
    placed: list = []
    top = 0
    for s in order:
        conflicts = sorted((p for p in placed if not (p.first > s.last or s.first > p.last)),
                           key=lambda p: p.offset)
        best = None  # (gap size, offset)
        end = 0
        for p in conflicts:
            gap = p.offset - end
            if gap >= s.asize and (best is None or gap < best[0]):
                best = (gap, end)
            end = max(end, p.offset + p.asize)
        s.offset = best[1] if best is not None else end
        top = max(top, s.offset + s.asize)
        placed.append(s)
    return top


def max_live(storages: list) -> int:
    """The largest total size of storages alive at one node (intervals are inclusive)."""
    events = []
    for s in storages:
        events.append((s.first, 0, s.asize))  # starts sort before ends at the same node
        events.append((s.last, 1, -s.asize))
    cur = best = 0
    for _, _, d in sorted(events):
        cur += d
        best = max(best, cur)
    return best
