"""Stale records: is the code that made a record still the code that computes HEAD's numbers? (chapter 7)

Two tests, in order. The source: ``provenance.code_hashes`` fingerprints the syntax tree of every file
in ``provenance.RESULT_FILES`` (the import closure of training and evaluation, found by an AST walk, so a
new helper module is never forgotten); a record whose fingerprints equal HEAD's is current. The
behaviour: a source change that leaves every number the same (a refactor, an option off by default) is
recognised by the probes of ``batchcam.behaviour`` kept in ``results/behaviour.json``: the record is
current when its code's probe and HEAD's agree for its model.

This module sits beside the probes, above storage: ``batchcam.results`` reads and writes records and
knows nothing of code versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Union

from .behaviour import code_key, same_behaviour
from .provenance import LEGACY_RESULT_FILES, RESULT_FILES, code_hashes, git
from .results import load_record, results_root

__all__ = ["load_behaviour", "pack_behaviour", "stale_records", "probe_for"]

PathLike = Union[str, Path]


def load_behaviour(path: Optional[PathLike] = None) -> dict:
    """``results/behaviour.json``: ``{code_key: {model or "data": {name: number}}}``, each code version's
    probe (``batchcam.behaviour``, ``scripts/fingerprint.py``); ``{}`` when absent (chapter 7)."""
    path = Path(path) if path is not None else results_root("runs").parent / "behaviour.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    if set(data) == {"code", "probes"}:  # pack_behaviour's form: each distinct probe stored once
        return {key: data["probes"][digest] for key, digest in data["code"].items()}
    return data


def pack_behaviour(entries: dict) -> dict:
    """``{code_key: probe}`` as stored in ``results/behaviour.json``: ``{"code": {code_key: digest}, "probes":
    {digest: probe}}``, so that code versions with the same numbers (most of them) share one copy of their
    6 000-odd numbers; :func:`load_behaviour` reads both forms (chapter 7)."""
    code, probes = {}, {}
    for key, probe in sorted(entries.items()):
        digest = hashlib.sha256(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:16]
        code[key], probes[digest] = digest, probe
    return {"code": code, "probes": probes}


def probe_for(hashes: dict, behaviour: dict, legacy: bool = True) -> Optional[dict]:
    """The probe of the code version ``hashes`` describes (chapter 7): keyed by its fingerprints of
    ``RESULT_FILES``, or (``legacy``), for a version probed before the import closure, of
    ``LEGACY_RESULT_FILES``. HEAD's probe is looked up without ``legacy``: it must be keyed by every file."""
    for files in (RESULT_FILES, LEGACY_RESULT_FILES)[:2 if legacy else 1]:
        entry = behaviour.get(code_key({f: hashes.get(f) for f in files}))
        if entry:
            return entry
    if legacy:  # probed when the import closure had fewer files: key it by the files that version had
        entry = behaviour.get(code_key({f: h for f in RESULT_FILES if (h := hashes.get(f)) is not None}))
        if entry:
            return entry
    return None


def _hashes_of(prov: dict, by_commit: dict) -> tuple[Optional[dict], Optional[str]]:
    """A record's fingerprints of every ``RESULT_FILES`` entry and the reason it has none."""
    commit, hashes = prov.get("git_commit"), prov.get("code_sha256")
    if hashes:
        missing = set(RESULT_FILES) - set(hashes)
        if missing and commit:  # files the record's code list did not have: its commit's
            if commit not in by_commit:
                known = git("cat-file", "-e", f"{commit}^{{commit}}") is not None
                by_commit[commit] = code_hashes(commit) if known else None
            hashes = {**(by_commit[commit] or {}), **hashes}
        return hashes, None
    if not commit:
        return None, "no commit recorded"
    if prov.get("git_dirty"):
        return None, "made from a dirty tree"
    if commit not in by_commit:
        known = git("cat-file", "-e", f"{commit}^{{commit}}") is not None
        by_commit[commit] = code_hashes(commit) if known else None
    if by_commit[commit] is None:
        return None, f"commit {commit[:9]} is not in this repository"
    return {**by_commit[commit], **code_hashes(commit, LEGACY_RESULT_FILES)}, None


def stale_records(root: Optional[PathLike] = None) -> list[dict]:
    """Records whose code changed since they were made: ``[{"run_id", "commit", "reason"}]`` (chapter 7).

    A record is current when its fingerprints (``code_sha256``; files it lacks, and every file of an
    older record without fingerprints, from its clean commit through git) equal HEAD's for every
    ``RESULT_FILES`` entry, whatever its git metadata says (a lent GPU machine copies the working tree
    with stale metadata), or when the code changed but computes the same numbers: the behaviour probes
    of its code and of HEAD's agree for its model. An older record is also stale when it was made from a
    dirty tree or names no commit (or one this repository lacks).
    """
    root = Path(root) if root is not None else results_root("runs")
    out, by_commit, head, behaviour = [], {}, None, load_behaviour()
    for path in sorted(root.glob("*.json")):
        try:
            record = load_record(path)
        except (OSError, ValueError):
            continue
        prov = record["provenance"]
        hashes, reason = _hashes_of(prov, by_commit)
        if hashes:
            head = head or code_hashes("HEAD")
            changed = [f for f in RESULT_FILES if hashes.get(f) != head[f]]
            probes = [probe_for(hashes, behaviour), probe_for(head, behaviour, legacy=False)] if changed else []
            if changed and not (all(probes) and same_behaviour(*probes, record["config"].get("model", ""))):
                reason = "changed since: " + ", ".join(changed)
        if reason:
            out.append({"run_id": path.stem, "commit": prov.get("git_commit"), "reason": reason})
    return out
