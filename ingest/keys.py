"""Project write keys: issued once, stored only as SHA-256 hashes, compared in constant time.

The store is a JSON file in the data directory; the API re-reads it when it changes, so a key
created with `cosnap-metrics keys create` works at once. A write key can only write events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

KEY_PREFIX = "cmk_"
DEV_KEY_FILE = "dev-write-key"
DEFAULT_PROJECT = "default"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredKey:
    project: str
    lookup: str  # the first characters after the prefix, to find candidates without the secret
    digest: str


class KeyStore:
    """Write keys of every project. `project_for` is called per request and never blocks
    longer than a stat() and, after a change, one small file read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._by_lookup: dict[str, list[StoredKey]] = {}

    def _reload(self) -> None:
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            self._by_lookup, self._mtime_ns = {}, -1
            return
        if mtime == self._mtime_ns:
            return
        entries = json.loads(self._path.read_text())["keys"]
        by_lookup: dict[str, list[StoredKey]] = {}
        for entry in entries:
            stored = StoredKey(entry["project"], entry["lookup"], entry["digest"])
            by_lookup.setdefault(stored.lookup, []).append(stored)
        self._by_lookup, self._mtime_ns = by_lookup, mtime

    def project_for(self, key: str) -> str | None:
        """The project `key` writes to, or None for an unknown key."""
        if not key.startswith(KEY_PREFIX):
            return None
        self._reload()
        digest = _digest(key)
        project = None
        for candidate in self._by_lookup.get(key[len(KEY_PREFIX) : len(KEY_PREFIX) + 8], []):
            if hmac.compare_digest(candidate.digest, digest):
                project = candidate.project
        return project

    def create(self, project: str) -> str:
        """Issue a new write key for `project`; the plaintext is returned once and never stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        entries = json.loads(self._path.read_text())["keys"] if self._path.exists() else []
        entries.append(
            {
                "project": project,
                "lookup": key[len(KEY_PREFIX) : len(KEY_PREFIX) + 8],
                "digest": _digest(key),
                "created_at": datetime.now(UTC).isoformat(),
            }
        )
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": entries}, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self._path)
        return key


def ensure_dev_key(store: KeyStore, data_dir: Path) -> str:
    """The development write key of the embedded default (project `default`), created on first
    run and kept in `<data_dir>/dev-write-key` so that a second run prints the same key."""
    path = data_dir / DEV_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if store.project_for(key) is not None:
            return key
    key = store.create(DEFAULT_PROJECT)
    path.write_text(key + "\n")
    os.chmod(path, 0o600)
    return key
