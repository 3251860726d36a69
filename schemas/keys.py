"""The shape of a write key: what the ingest API issues and what logs and reports must not hold."""

from __future__ import annotations

import re

KEY_PREFIX = "cmk_"
# A write key (or anything presented as one) in text: what logs and error reports must not hold.
KEY_PATTERN = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]+")
