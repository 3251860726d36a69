"""Kafka topic names (docs/reference.md, "Kafka topics") and how they are provisioned."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "metrics."
# An envelope of 1,000 events (1 MiB of input) plus server fields stays well below this.
MAX_RECORD_BYTES = 4 * 1024 * 1024
# A streams checkpoint holds every open window of a partition (compressed).
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
# Checkpoint partition p holds the state of events partition p, so both counts are this one.
EVENT_PARTITIONS = 6


def min_insync_replicas(replication: int) -> int:
    """The replicas that must have a record before an acks=all write succeeds: a majority of
    `replication` (1 of 1, 2 of 3), so one replica of three may be down and writes go on, and a
    record acknowledged is on two nodes (docs/reference.md, "A Kafka cluster")."""
    return replication // 2 + 1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


@dataclass(frozen=True, slots=True)
class Topics:
    """Public topic names under one prefix; tests use a unique prefix each to stay isolated."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events(self) -> str:
        return f"{self.prefix}events.v1"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter.v1"

    @property
    def aggregates(self) -> str:
        return f"{self.prefix}aggregates.v1"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts.v1"

    @property
    def alert_deliveries(self) -> str:
        """What the notifier did with each alert state change, per target
        (schemas.records.AlertDelivery), for the sink."""
        return f"{self.prefix}alert-deliveries.v1"

    @property
    def alert_acks(self) -> str:
        """Operators' acknowledgements of alerts (schemas.records.AlertAck), for the sink."""
        return f"{self.prefix}alert-acks.v1"

    @property
    def traits(self) -> str:
        """Segment's identify, group and alias calls (schemas.segment.TraitsRecord), for the sink."""
        return f"{self.prefix}traits.v1"

    @property
    def checkpoints(self) -> str:
        """Window state of the streams worker, one compacted partition per events partition."""
        return f"{self.internal}checkpoints"

    @property
    def late(self) -> str:
        """Events read after their window closed, per events record (schemas.records.LateEvents):
        the worker writes them, the sink turns them into correction rows."""
        return f"{self.internal}late"

    @property
    def panes(self) -> str:
        """Each events partition's part of the panes of alert rules spanning partitions, merged
        by one stage (streams/merging.py); one partition."""
        return f"{self.internal}panes"

    @property
    def internal(self) -> str:
        """Prefix of internal topics (Faust changelogs, repartition, leader election)."""
        return f"{self.prefix}internal."

    def specs(self) -> list[TopicSpec]:
        week = str(7 * 24 * 3600 * 1000)
        return [
            TopicSpec(
                self.events,
                EVENT_PARTITIONS,
                {"retention.ms": week, "max.message.bytes": str(MAX_RECORD_BYTES)},
            ),
            TopicSpec(self.dead_letter, 3, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
            TopicSpec(self.aggregates, 6, {"retention.ms": week}),
            TopicSpec(self.alerts, 3, {"retention.ms": str(90 * 24 * 3600 * 1000)}),
            TopicSpec(self.alert_deliveries, 3, {"retention.ms": str(90 * 24 * 3600 * 1000)}),
            TopicSpec(self.alert_acks, 3, {"retention.ms": str(90 * 24 * 3600 * 1000)}),
            TopicSpec(self.traits, 3, {"retention.ms": week}),
            TopicSpec(
                self.late,
                EVENT_PARTITIONS,
                {"retention.ms": week, "max.message.bytes": str(MAX_RECORD_BYTES)},
            ),
            TopicSpec(self.panes, 1, {"retention.ms": str(24 * 3600 * 1000)}),
            TopicSpec(
                self.checkpoints,
                EVENT_PARTITIONS,
                {"cleanup.policy": "compact", "max.message.bytes": str(MAX_CHECKPOINT_BYTES)},
            ),
        ]
