"""The SHA-256 of a record's content, stored in the record itself (chapter 7, "records").

A record (a run's JSON, a benchmark record) may carry ``record_sha256``: the SHA-256 of its
canonical JSON without that field, so an edited number shows up when ``unpack`` checks an archive
(:mod:`batchcam.archive`). Canonical: ``json.dumps(record_without_the_field, sort_keys=True,
separators=(",", ":"), ensure_ascii=False).encode()`` (UTF-8). Standard library only, so every
module, and a reader without torch, can use it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

__all__ = ["RECORD_HASH_FIELD", "canonical_bytes", "canonical_sha256", "record_hash_ok", "with_hash"]

RECORD_HASH_FIELD = "record_sha256"


def canonical_bytes(record: dict) -> bytes:
    """The canonical JSON (UTF-8) of ``record`` without its ``record_sha256`` field (chapter 7)."""
    body = {k: v for k, v in record.items() if k != RECORD_HASH_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_sha256(record: dict) -> str:
    """Hex SHA-256 of :func:`canonical_bytes`: the value of a record's ``record_sha256`` (chapter 7)."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def with_hash(record: dict) -> dict:
    """``record`` without any old ``record_sha256`` and with the one of its content, last (chapter 7): what
    every record writer stores."""
    body = {k: v for k, v in record.items() if k != RECORD_HASH_FIELD}
    return {**body, RECORD_HASH_FIELD: canonical_sha256(body)}


def record_hash_ok(record: dict) -> Optional[bool]:
    """None when ``record`` has no ``record_sha256``; else whether it matches the content (chapter 7)."""
    if RECORD_HASH_FIELD not in record:
        return None
    return record[RECORD_HASH_FIELD] == canonical_sha256(record)
