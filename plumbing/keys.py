"""Projects and their write keys: issued once, stored only as SHA-256 hashes, compared in
constant time; each project lists the browser origins allowed to post its events (CORS). A
project may also hold the client secrets of its Sentry integrations, which verify Sentry's
webhooks: an HMAC key must be kept itself, so these are stored as they are (the file is 0600).

The store is a JSON file in the data directory; the API re-reads it when it changes, so a key
created with `cosnap-metrics keys create` works at once. A write key can only write events.
Writers take an exclusive lock (`<store>.lock`, flock) around read-modify-write, so concurrent
`keys create` never lose a key; the new store replaces the old in one step (a reader sees one
or the other), mode 0600.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plumbing.private_files import private_dir, replace_private
from schemas.keys import KEY_PREFIX, READ_KEY_PREFIX

DEV_KEY_FILE = "dev-write-key"
DEV_READ_KEY_FILE = "dev-read-key"
DEV_SENTRY_SECRET_FILE = "dev-sentry-secret"  # noqa: S105  # a file name, not a secret
DEFAULT_PROJECT = "default"
# The embedded default accepts browser pages served from this machine.
DEV_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://localhost", "http://127.0.0.1")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lookup(key: str) -> str:
    """The first characters after the prefix: finds candidates without revealing the secret."""
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]


@dataclass(frozen=True, slots=True)
class WriteKey:
    """An authenticated key: its project, and a non-secret id (for rate limits and logs)."""

    project: str
    key_id: str


@dataclass(frozen=True, slots=True)
class ReadKey:
    """An authenticated read key: the one project whose rows it may read, and a non-secret id."""

    project: str
    key_id: str


@dataclass(frozen=True, slots=True)
class _StoredKey:
    project: str
    key_id: str
    digest: str
    read: bool  # a read key (analysts' ClickHouse clients); else a write key (the ingest API)


class KeyStore:
    """Write keys and project origins. `authenticate` and the origin checks are called per request
    and cost a stat() and, after a change of the file, one small read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._version: tuple[int, int] = (-1, -1)  # the file's inode and mtime when last read
        self._by_lookup: dict[str, list[_StoredKey]] = {}
        self._origins: dict[str, tuple[str, ...]] = {}
        self._sentry: dict[str, tuple[str, ...]] = {}

    def _read(self) -> dict[str, Any]:
        if not self._path.exists():
            return {"keys": [], "projects": {}, "sentry": []}
        data: dict[str, Any] = json.loads(self._path.read_text())
        data.setdefault("projects", {})
        data.setdefault("sentry", [])
        return data

    def _reload(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._by_lookup, self._origins, self._sentry, self._version = {}, {}, {}, (-1, -1)
            return
        version = (stat.st_ino, stat.st_mtime_ns)  # a write replaces the file: a new inode
        if version == self._version:
            return
        data = self._read()
        by_lookup: dict[str, list[_StoredKey]] = {}
        for entry in data["keys"]:
            by_lookup.setdefault(entry["lookup"], []).append(
                _StoredKey(entry["project"], entry["lookup"], entry["digest"], entry.get("scope") == "read")
            )
        self._origins = {name: tuple(p.get("origins", ())) for name, p in data["projects"].items()}
        sentry: dict[str, tuple[str, ...]] = {}
        for entry in data["sentry"]:
            sentry[entry["project"]] = (*sentry.get(entry["project"], ()), entry["secret"])
        self._sentry = sentry
        self._by_lookup, self._version = by_lookup, version

    def _find(self, key: str, prefix: str, read: bool) -> _StoredKey | None:
        if not key.startswith(prefix):
            return None
        self._reload()
        digest = _digest(key)
        found = None
        for candidate in self._by_lookup.get(_lookup(key), []):
            if hmac.compare_digest(candidate.digest, digest) and candidate.read == read:
                found = candidate
        return found

    def authenticate(self, key: str) -> WriteKey | None:
        """The project and id of write key `key`, or None for an unknown key (a read key too)."""
        found = self._find(key, KEY_PREFIX, read=False)
        return None if found is None else WriteKey(found.project, found.key_id)

    def authenticate_read(self, project: str, key: str) -> ReadKey | None:
        """The read key `key` if it reads `project`; None for an unknown key, a write key, or a
        read key of another project."""
        found = self._find(key, READ_KEY_PREFIX, read=True)
        if found is None or not hmac.compare_digest(found.project.encode(), project.encode()):
            return None
        return ReadKey(found.project, found.key_id)

    def origin_allowed(self, origin: str, project: str | None = None) -> bool:
        """Whether a browser page at `origin` may post for `project` (any project when None).
        Patterns are shell-style: `https://*.cosnap.ai`, `http://localhost:*`."""
        self._reload()
        projects = self._origins.values() if project is None else [self._origins.get(project, ())]
        return any(fnmatch.fnmatchcase(origin, pattern) for patterns in projects for pattern in patterns)

    def sentry_secrets(self, project: str) -> tuple[str, ...]:
        """The client secrets of `project`'s Sentry integrations (none for an unknown project)."""
        self._reload()
        return self._sentry.get(project, ())

    def add_sentry_secret(self, project: str, secret: str | None = None) -> str:
        """Keep the client secret of a Sentry integration of `project`: `secret` as Sentry shows it,
        or a new one (64 hex digits, as Sentry's) when None. Returns the secret."""
        secret = secret or secrets.token_hex(32)
        with self._locked():
            data = self._read()
            data["sentry"].append(
                {"project": project, "secret": secret, "created_at": datetime.now(UTC).isoformat()}
            )
            replace_private(self._path, json.dumps(data, indent=2))
        return secret

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive against every other writer of this store, in any process, until exit."""
        private_dir(self._path.parent)
        lock = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
            yield
        finally:
            os.close(fd)

    def create(self, project: str, origins: tuple[str, ...] = (), *, read: bool = False) -> str:
        """Issue a new write key for `project` (adding `origins` to the project's allowed origins),
        or with `read` a read key that reads `project`'s rows only; the plaintext is returned once
        and never stored."""
        key = (READ_KEY_PREFIX if read else KEY_PREFIX) + secrets.token_urlsafe(24)
        with self._locked():
            data = self._read()
            data["keys"].append(
                {
                    "project": project,
                    "lookup": _lookup(key),
                    "digest": _digest(key),
                    "scope": "read" if read else "write",
                    "created_at": datetime.now(UTC).isoformat(),
                }
            )
            entry = data["projects"].setdefault(project, {"origins": []})
            entry["origins"] = sorted(set(entry.get("origins", [])) | set(origins))
            replace_private(self._path, json.dumps(data, indent=2))
        return key


def ensure_dev_key(store: KeyStore, data_dir: Path) -> str:
    """The development write key of the embedded default (project `default`, pages on this
    machine allowed), created on first run and kept in `<data_dir>/dev-write-key` (0600, written
    whole before it takes its name)."""
    path = data_dir / DEV_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if store.authenticate(key) is not None:
            return key
    key = store.create(DEFAULT_PROJECT, DEV_ORIGINS)
    replace_private(private_dir(data_dir) / DEV_KEY_FILE, key + "\n")
    return key


def ensure_dev_read_key(store: KeyStore, data_dir: Path) -> str:
    """The development read key of the embedded default (reads project `default`), created on
    first run and kept in `<data_dir>/dev-read-key` (0600), as the write key is."""
    path = data_dir / DEV_READ_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if store.authenticate_read(DEFAULT_PROJECT, key) is not None:
            return key
    key = store.create(DEFAULT_PROJECT, read=True)
    replace_private(private_dir(data_dir) / DEV_READ_KEY_FILE, key + "\n")
    return key


def ensure_dev_sentry_secret(store: KeyStore, data_dir: Path) -> str:
    """The development Sentry client secret of the embedded default (project `default`), created
    on first run and kept in `<data_dir>/dev-sentry-secret` (0600), as the write key is."""
    path = data_dir / DEV_SENTRY_SECRET_FILE
    if path.exists():
        secret = path.read_text().strip()
        if secret in store.sentry_secrets(DEFAULT_PROJECT):
            return secret
    secret = store.add_sentry_secret(DEFAULT_PROJECT)
    replace_private(private_dir(data_dir) / DEV_SENTRY_SECRET_FILE, secret + "\n")
    return secret
