"""A real Alertmanager for the tests: Debian's `prometheus-alertmanager` (installed by
`make alertmanager`) on a free loopback port, clustering off."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cosnap_metrics.processes import spawn, stop
from tests.conftest import free_port, wait_for


@contextmanager
def running_alertmanager(config: Path, workdir: Path) -> Iterator[str]:
    """Alertmanager with the configuration file `config`, its data and log in `workdir`, until
    the block ends; yields its base URL once it is ready."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is not installed; `make test` installs Debian's package")
    url = f"http://127.0.0.1:{free_port()}"
    log = workdir / "alertmanager.log"
    with log.open("ab") as out:
        process = spawn(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--cluster.listen-address=",
            ],
            stdout=out,
        )

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(ready, 30), log.read_text()
        yield url
    finally:
        stop(process, timeout=10)
