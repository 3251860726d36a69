"""bench/ingest: the ingest API against itself with producing switched off."""
