"""How many replicas an acks=all write needs (schemas/topics.py, `min_insync_replicas`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.topics import min_insync_replicas


@given(st.integers(min_value=1, max_value=99))
def test_a_write_needs_a_majority_of_the_replicas_so_a_minority_may_be_down(replication: int) -> None:
    needed = min_insync_replicas(replication)
    assert 1 <= needed <= replication
    assert needed > replication - needed  # two acknowledged sets always share a replica
    assert replication - needed == (replication - 1) // 2  # the most that may be down, writes going on


def test_three_replicas_need_two() -> None:
    assert [min_insync_replicas(r) for r in (1, 2, 3, 5)] == [1, 2, 2, 3]
