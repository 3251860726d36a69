"""The shape of the keys the pipeline issues (write keys for the ingest API, read keys for
analysts' ClickHouse clients): what logs and error reports must not hold."""

from __future__ import annotations

import re

KEY_PREFIX = "cmk_"
READ_KEY_PREFIX = "cmr_"
# A key (or anything presented as one) in text: what logs and error reports must not hold.
KEY_PATTERN = re.compile(r"cm[kr]_[A-Za-z0-9_-]+")
