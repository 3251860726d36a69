"""The ingest API with producing switched off: same validation, same code path, no Kafka.

Run by bench/ingest as the baseline; never part of the product (a 202 without a write).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import uvicorn

from ingest.app import create_app
from schemas.settings import IngestSettings


class NullProducer:
    """Acknowledges every record at once without writing it anywhere."""

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        acked: asyncio.Future[None],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        acked.set_result(None)

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        return None

    def ready(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        return None


if __name__ == "__main__":
    settings = IngestSettings()
    uvicorn.run(
        create_app(settings, producer=NullProducer()),
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_level="warning",
        access_log=False,
    )
