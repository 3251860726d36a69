"""kafka-python's KafkaConsumer in a consumer group, with a rejoin that a poll's timeout cut short
finished at the next poll.

kafka-python 3.0.12 runs a rejoin (JoinGroup, then SyncGroup) as a task on its I/O thread, and a
`poll()` whose timeout runs out leaves the task going. Only a later `poll()` that finds the group
still needing a rejoin collects the task's result, marks the member stable and turns its
heartbeat back on. When the rejoin was for changed metadata (the group's leader assigned on
metadata that lacked a subscribed topic, as a first join often does, or partitions were added),
the task's own assignment removes that reason, so no later `poll()` collects it: the member stays
"rebalancing" with its heartbeat off, every commit is refused (RebalanceInProgressError), and the
broker drops it from the group after the session timeout while it goes on fetching. The
notifier's commits were refused for minutes under the test suite's load (docs/findings.md,
"A rejoin left half done").

And a later `poll()` that does find a rejoin needed does not collect a task that finished
meanwhile: it sends a new JoinGroup. A consumer whose polls are shorter than a join's round trips
never joins.

`GroupConsumer.poll` therefore, when it finds the member left "rebalancing" with nothing to
rejoin for, asks for the rejoin again, and while a rejoin is needed first waits for it (up to
`REJOIN_WAIT_MS`) before polling as asked.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

log = logging.getLogger("cosnap.kafka")
# How long a poll waits for a rejoin before it polls: a join's JoinGroup and SyncGroup round trips
# take ~10 ms on loopback and up to ~1 s on two busy cores. A rejoin that waits longer for other
# members is finished by a later poll. A stop asked meanwhile waits as long.
REJOIN_WAIT_MS = 3_000


class GroupConsumer(KafkaConsumer):  # type: ignore[misc]  # kafka-python has no type hints
    """A KafkaConsumer (same arguments) whose poll() finishes a rejoin left half done."""

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        coordinator: Any = self._coordinator
        join = coordinator._join_task
        left_half_done = join is None or join.is_done
        if coordinator.rebalance_in_progress() and left_half_done and not coordinator.need_rejoin():
            log.warning("group %s: a rejoin was left half done; joining again", coordinator.group_id)
            coordinator.request_rejoin()
        if coordinator.need_rejoin():
            coordinator.ensure_active_group(timeout_ms=REJOIN_WAIT_MS)
        polled: dict[TopicPartition, list[ConsumerRecord]] = super().poll(
            timeout_ms=timeout_ms, max_records=max_records, update_offsets=update_offsets
        )
        return polled
