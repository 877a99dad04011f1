"""Duplicate ``custom_id`` detection in bounded memory, for request sets of tens of millions.

A Python ``set`` of id strings costs roughly 100 bytes per id; here each id is kept as an
8-byte BLAKE2b digest in sorted numpy ``uint64`` runs (a small log-structured merge: a new run
is merged into the previous one while that one is not larger, so there are at most about
log2(n / batch) runs and each digest is copied O(log n) times). 10 million ids take 80 MB, plus
one transient copy of the largest run while it is merged.

Collisions of 64-bit digests are not confirmed against the original strings: among 10 million
distinct ids the chance that any two share a digest is about n² / 2⁶⁵ ≈ 3·10⁻⁶, and the cost of
that rare event is one row reported as a duplicate. Keeping the strings to confirm would defeat
the purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np
import numpy.typing as npt


def digests(keys: Sequence[str]) -> npt.NDArray[np.uint64]:
    """The 8-byte BLAKE2b digests of ``keys`` as a ``uint64`` array, in order."""
    raw = b"".join(
        blake2b(k.encode("utf-8", "surrogatepass"), digest_size=8).digest() for k in keys
    )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)


class DuplicateDetector:
    """Remembers every key it was given and says which new keys were already seen.

    Keys are fed in stream order, batch by batch; within a batch the first occurrence wins.
    """

    def __init__(self) -> None:
        self._runs: list[npt.NDArray[np.uint64]] = []

    def __len__(self) -> int:
        return sum(int(run.size) for run in self._runs)

    def add(self, keys: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Record ``keys`` and flag the repeats.

        :param keys: the next keys of the stream.
        :return: a boolean array, ``True`` where the key equals one given earlier (in an earlier
            call, or earlier in this batch).
        """
        values = digests(keys)
        n = values.size
        seen = np.zeros(n, dtype=bool)
        if n == 0:
            return seen
        # Within the batch: a stable sort keeps equal digests in stream order, so every member
        # of a group of equals except the first is a repeat.
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        repeat = np.empty(n, dtype=bool)
        repeat[0] = False
        np.equal(ordered[1:], ordered[:-1], out=repeat[1:])
        seen[order[repeat]] = True
        known = np.zeros(n, dtype=bool)  # already in a stored run
        for run in self._runs:
            pos = np.searchsorted(run, ordered)
            np.minimum(pos, run.size - 1, out=pos)
            known |= run[pos] == ordered
        seen[order[known]] = True
        # Store each new digest once, so runs stay disjoint and memory is 8 bytes per id.
        self._push(ordered[~(repeat | known)])
        return seen

    def _push(self, run: npt.NDArray[np.uint64]) -> None:
        if run.size == 0:
            return
        self._runs.append(run)
        while len(self._runs) > 1 and self._runs[-2].size <= self._runs[-1].size:
            newer = self._runs.pop()
            older = self._runs.pop()
            merged = np.concatenate((older, newer))
            # Two sorted runs: numpy's stable sort (timsort for 64-bit keys) merges them in O(n).
            merged.sort(kind="stable")
            self._runs.append(merged)
