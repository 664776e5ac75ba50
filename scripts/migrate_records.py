"""One-off migration (chapter 7): add ``record_sha256`` to every committed record that lacks it.

    python scripts/migrate_records.py [--root results]

A record's ``record_sha256`` is the SHA-256 of its canonical JSON without that field
(``batchcam.digest``). It detects corruption and accidental edits, not deliberate tampering:
whoever edits a number can recompute the hash. Run records (``runs/*.json``) and benchmark
records (``bench/*.json``) are rewritten atomically, in the layout ``batchcam.results`` writes
(indent 1, keys in their order, the new field last); nothing else in them changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batchcam._helpers import atomic_write_json  # noqa: E402
from batchcam.digest import RECORD_HASH_FIELD, canonical_sha256, with_hash  # noqa: E402


def migrate(root: Path) -> tuple[int, int]:
    """Add the field where missing; return (records changed, records already hashed)."""
    changed = kept = 0
    for path in sorted([*root.glob("runs/*.json"), *root.glob("bench/*.json")]):
        record = json.loads(path.read_text())
        if RECORD_HASH_FIELD in record:
            if record[RECORD_HASH_FIELD] != canonical_sha256(record):
                sys.exit(f"{path}: record_sha256 does not match its content; not touching it")
            kept += 1
            continue
        atomic_write_json(path, with_hash(record))
        changed += 1
    return changed, kept


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "results")
    args = parser.parse_args()
    changed, kept = migrate(args.root)
    print(f"{changed} records given record_sha256, {kept} already had it")
