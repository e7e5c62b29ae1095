"""GCC libstdc++'s std::sort, step for step: the order Triton gives equal elements, which no stable sort has.

std::sort is an introsort (median-of-three quicksort down to 16 elements, heapsort past a depth
limit) finished by an insertion sort; equal elements end up where its swaps leave them. Triton's
classification ranks an output's columns with it, so only a faithful copy answers ties as Triton
does. Slow (Python): for the few rows where the order of equal elements shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Less = Callable[[Any, Any], bool]
THRESHOLD = 16  # libstdc++'s _S_threshold


def stl_sort(items: list[Any], less: Less) -> None:
    """Sort `items` in place as std::sort(begin, end, less) does."""
    if len(items) > 1:
        _introsort_loop(items, 0, len(items), 2 * (len(items).bit_length() - 1), less)
        _final_insertion_sort(items, 0, len(items), less)


def _introsort_loop(a: list[Any], first: int, last: int, depth: int, less: Less) -> None:
    while last - first > THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, less)
            return
        depth -= 1
        cut = _partition_pivot(a, first, last, less)
        _introsort_loop(a, cut, last, depth, less)
        last = cut


def _partition_pivot(a: list[Any], first: int, last: int, less: Less) -> int:
    mid = first + (last - first) // 2
    _median_to_first(a, first, first + 1, mid, last - 1, less)
    lo, hi, pivot = first + 1, last, a[first]
    while True:
        while less(a[lo], pivot):
            lo += 1
        hi -= 1
        while less(pivot, a[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _median_to_first(a: list[Any], result: int, x: int, y: int, z: int, less: Less) -> None:
    if less(a[x], a[y]):
        pick = y if less(a[y], a[z]) else z if less(a[x], a[z]) else x
    else:
        pick = x if less(a[x], a[z]) else z if less(a[y], a[z]) else y
    a[result], a[pick] = a[pick], a[result]


def _final_insertion_sort(a: list[Any], first: int, last: int, less: Less) -> None:
    end = min(last, first + THRESHOLD)
    for i in range(first + 1, end):  # __insertion_sort
        if less(a[i], a[first]):
            a[first : i + 1] = [a[i], *a[first:i]]
        else:
            _linear_insert(a, i, less)
    for i in range(end, last):  # __unguarded_insertion_sort
        _linear_insert(a, i, less)


def _linear_insert(a: list[Any], last: int, less: Less) -> None:
    value = a[last]
    while less(value, a[last - 1]):
        a[last] = a[last - 1]
        last -= 1
    a[last] = value


def _heap_sort(a: list[Any], first: int, last: int, less: Less) -> None:
    """std::__partial_sort(first, last, last): make_heap, then sort_heap."""
    n = last - first
    for parent in range((n - 2) // 2, -1, -1):
        _adjust_heap(a, first, parent, n, a[first + parent], less)
    while n > 1:
        n -= 1
        value, a[first + n] = a[first + n], a[first]
        _adjust_heap(a, first, 0, n, value, less)


def _adjust_heap(a: list[Any], base: int, hole: int, n: int, value: Any, less: Less) -> None:
    top, child = hole, hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if less(a[base + child], a[base + child - 1]):
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # __push_heap
    while hole > top and less(a[base + parent], value):
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = value
