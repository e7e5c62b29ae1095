"""stl_sort leaves equal elements where GCC's std::sort does: checked against std::sort itself, compiled
here, on rows full of ties (the order Triton's classification gives equal scores)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tritonflow.serving.stl_sort import stl_sort

# Each input line: n values; each output line: the indices 0..n-1 as std::sort orders them by `v[a] > v[b]`,
# the comparison Triton's classification uses.
PROGRAM = r"""
#include <algorithm>
#include <iostream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>
int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::vector<int> v;
    for (int x; in >> x;) v.push_back(x);
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&v](size_t a, size_t b) { return v[a] > v[b]; });
    for (size_t i : idx) std::cout << i << ' ';
    std::cout << '\n';
  }
}
"""


@pytest.fixture(scope="module")
def std_sort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build the std::sort reference")
    folder = tmp_path_factory.mktemp("stl")
    (folder / "sort.cc").write_text(PROGRAM)
    subprocess.run([compiler, "-O1", "-o", str(folder / "sort"), str(folder / "sort.cc")], check=True)
    return folder / "sort"


def rows() -> list[list[int]]:
    """Sizes around the 16-element insertion sort threshold and well past it, few distinct values."""
    rng = random.Random(13)
    found = [[rng.randrange(distinct) for _ in range(n)] for n in range(40) for distinct in (1, 2, 3, 8)]
    found += [
        [rng.randrange(distinct) for _ in range(n)] for n in (50, 100, 257, 1000) for distinct in (2, 5, 40)
    ]
    found += [list(range(n)) for n in (17, 100)] + [list(range(n, 0, -1)) for n in (17, 100)]
    found += [row for n in (64, 200, 1000) for row in (killer(n), [v // 3 for v in killer(n)])]
    return found


def killer(n: int) -> list[int]:
    """Values that drive median-of-three quicksort past its depth limit, into the heapsort
    (McIlroy's adversary, "A Killer Adversary for Quicksort"): values fixed as the sort compares."""
    gas, solid, candidate = n, [0], [0]
    value = [gas] * n

    def greater(x: int, y: int) -> bool:
        if value[x] == gas and value[y] == gas:
            value[x if x == candidate[0] else y] = solid[0]
            solid[0] += 1
        if value[x] == gas:
            candidate[0] = x
        elif value[y] == gas:
            candidate[0] = y
        return value[x] > value[y]

    stl_sort(list(range(n)), greater)
    return value


def test_equal_elements_end_where_std_sort_leaves_them(std_sort: Path) -> None:
    inputs = rows()
    text = "".join(" ".join(map(str, row)) + "\n" for row in inputs)
    answer = subprocess.run([str(std_sort)], input=text, capture_output=True, text=True, check=True)
    expected = [[int(i) for i in line.split()] for line in answer.stdout.splitlines()]
    assert len(expected) == len(inputs)
    for row, wanted in zip(inputs, expected, strict=True):
        order = list(range(len(row)))
        stl_sort(order, lambda i, j, row=row: row[i] > row[j])
        assert order == wanted, row
