"""The assignment solver behind track association and event scoring, against brute force."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.vision.assignment import linear_sum_assignment


def brute_force(cost: np.ndarray) -> float:
    """The least total cost of assigning min(n, m) pairs, by trying every assignment."""
    n, m = cost.shape
    if n <= m:
        return min(sum(cost[i, p[i]] for i in range(n)) for p in permutations(range(m), n))
    return brute_force(cost.T)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)),
              elements=st.floats(-100, 100, allow_nan=False, width=32)))
def test_assignment_is_optimal_and_one_to_one(cost: np.ndarray) -> None:
    rows, cols = linear_sum_assignment(cost)
    assert len(rows) == min(cost.shape)
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    assert list(rows) == sorted(rows)
    assert cost[rows, cols].sum() == pytest.approx(brute_force(cost), abs=1e-6)


def test_empty_and_bad_costs() -> None:
    rows, cols = linear_sum_assignment(np.zeros((0, 3)))
    assert len(rows) == len(cols) == 0
    with pytest.raises(ValueError, match="finite"):
        linear_sum_assignment(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros(3))
