"""Batch order and packing for training: deterministic per (seed, epoch), no padding wasted.

An optimiser step takes ``batch_size`` examples (OpenAI's meaning of batch size). The training
loop draws random batches (``epoch_batches(..., group=1)``) and packs each step's examples back
to back into rows under a token budget (``pack_groups``), so lengths need not match; on a CPU
the step's examples are first split into one group of nearly equal cost per worker
(``balanced_split``), each packed on its own. Padded batches (DPO pairs) are cut by
``micro_batches`` under a padded-token budget; ``group > 1`` would sort mega-batches of
``group`` steps by length so that similar lengths share a batch. The order depends only on
``(seed, epoch)``, which makes resume skip exactly the batches already seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def epoch_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                  group: int = 16) -> list[list[int]]:
    """Example indices per optimiser step for one epoch (the last batch may be smaller).

    >>> epoch_batches([5, 1, 9, 3], 2, seed=0, epoch=0, group=4)
    [[1, 3], [0, 2]]
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = max(1, group) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def micro_batches(indices: Sequence[int], lengths: Sequence[int], token_budget: int
                  ) -> list[list[int]]:
    """Split one step's examples into micro-batches whose padded size fits ``token_budget``.

    Gradients are accumulated over micro-batches, so memory stays bounded for long examples
    while the optimiser step still sees the whole batch.

    >>> micro_batches([0, 1, 2], [10, 10, 30], 40)
    [[0, 1], [2]]
    """
    ordered = sorted(indices, key=lambda i: lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in ordered:
        longest = max([lengths[j] for j in cur] + [lengths[i]])
        if cur and longest * (len(cur) + 1) > token_budget:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def pack_groups(indices: Sequence[int], lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Split one step's examples into packed micro-batches of at most ``token_budget`` tokens.

    First-fit decreasing: few, full rows (large matmuls), an example longer than the budget
    alone in its row. Packed rows carry no padding, so lengths need not be similar.

    >>> pack_groups([0, 1, 2, 3], [10, 30, 25, 5], 40)
    [[1, 0], [2, 3]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(token_budget - lengths[i])
    return rows


def balanced_split(costs: Sequence[float], groups: int) -> list[list[int]]:
    """Split item indices ``0..len(costs)-1`` into ``groups`` sets of nearly equal summed cost,
    each in increasing index order, so that as many workers finish a step's share together.

    Largest first onto the lightest set, then, while it narrows the gap between the heaviest
    and the lightest set, the best single move or pairwise swap between those two. Deterministic:
    ties go to the lower index. A set may be empty when there are fewer items than groups.

    >>> balanced_split([5, 4, 3, 3, 3], 2)
    [[0, 1], [2, 3, 4]]
    """
    sets: list[list[int]] = [[] for _ in range(max(1, groups))]
    load = [0.0] * len(sets)
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        g = min(range(len(sets)), key=lambda k: (load[k], k))
        sets[g].append(i)
        load[g] += costs[i]
    for _ in range(4 * len(costs)):
        hi = max(range(len(sets)), key=lambda k: (load[k], -k))
        lo = min(range(len(sets)), key=lambda k: (load[k], k))
        shift = _best_shift(sets[hi], sets[lo], costs, load[hi] - load[lo])
        if shift is None:
            break
        i, j = shift  # i leaves the heaviest set; j (if any) leaves the lightest for it
        sets[hi].remove(i)
        sets[lo].append(i)
        if j is not None:
            sets[lo].remove(j)
            sets[hi].append(j)
        delta = costs[i] - (costs[j] if j is not None else 0.0)
        load[hi] -= delta
        load[lo] += delta
    return [sorted(s) for s in sets]


def _best_shift(hi: list[int], lo: list[int], costs: Sequence[float], gap: float
                ) -> tuple[int, int | None] | None:
    """The move (``(i, None)``) or swap (``(i, j)``) between the heaviest set ``hi`` and the
    lightest ``lo`` that leaves the smallest gap between them, if it is smaller than ``gap``."""
    best, best_gap = None, gap
    options = [(i, None) for i in hi] + [(i, j) for i in hi for j in lo]
    for i, j in sorted(options, key=lambda o: (o[0], -1 if o[1] is None else o[1])):
        delta = costs[i] - (costs[j] if j is not None else 0.0)
        new_gap = abs(gap - 2 * delta)
        if delta > 0 and new_gap < best_gap - 1e-9:
            best, best_gap = (i, j), new_gap
    return best
