"""Stale records: is the code that made a record still the code that computes HEAD's numbers? (chapter 7)

Two tests, in order. The source: ``provenance.code_hashes`` fingerprints the syntax tree of every file
in ``provenance.RESULT_FILES`` (the import closure of training and evaluation, found by an AST walk, so a
new helper module is never forgotten); a record whose fingerprints equal HEAD's is current. The
behaviour: a source change that leaves every number the same (a refactor, an option off by default) is
recognised by the probes of ``batchcam.behaviour`` kept in ``results/behaviour.json``: the record is
current when its code's probe and HEAD's agree for its model.

A probe is a fact about a code version *on one CPU model*: another CPU model rounds float32 training
differently (chapter 7 measures it), so two probes are compared only when the same CPU model made both.
An entry is keyed by the code key, or by ``"<code key>@<CPU model>"`` when that code was probed again on
another CPU model; the probe names its CPU model under ``versions.cpu`` (probes stored before it did were
all made on :data:`LEGACY_PROBE_CPU`). ``scripts/fingerprint.py --commit`` probes an older version on
this machine's CPU model when only another has probed it.

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

__all__ = ["load_behaviour", "pack_behaviour", "stale_records", "probes_for", "probe_cpu", "LEGACY_PROBE_CPU"]

PathLike = Union[str, Path]

#: The CPU model of every probe stored before probes named theirs (``git log results/behaviour.json``:
#: all made in sessions on this CPU model).
LEGACY_PROBE_CPU = "Intel(R) Xeon(R) Processor"


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


def probe_cpu(probe: dict) -> str:
    """The CPU model that made ``probe`` (``versions.cpu``; :data:`LEGACY_PROBE_CPU` if unnamed) (chapter 7)."""
    return (probe.get("versions") or {}).get("cpu") or LEGACY_PROBE_CPU


def _by_cpu(behaviour: dict, key: str) -> dict[str, dict]:
    """The probes of one code version, by the CPU model that made them."""
    out = {}
    if behaviour.get(key):
        out[probe_cpu(behaviour[key])] = behaviour[key]
    for name, probe in behaviour.items():
        if name.startswith(key + "@") and probe:
            out[name[len(key) + 1:]] = probe
    return out


def probes_for(hashes: dict, behaviour: dict, legacy: bool = True) -> dict[str, dict]:
    """The probes of the code version ``hashes`` describes, by CPU model (chapter 7): keyed by its
    fingerprints of ``RESULT_FILES``, or (``legacy``), for a version probed before the import closure, of
    ``LEGACY_RESULT_FILES``. HEAD's probes are looked up without ``legacy``: they must be keyed by every file."""
    for files in (RESULT_FILES, LEGACY_RESULT_FILES)[:2 if legacy else 1]:
        found = _by_cpu(behaviour, code_key({f: hashes.get(f) for f in files}))
        if found:
            return found
    if legacy:  # probed when the import closure had fewer files: key it by the files that version had
        return _by_cpu(behaviour, code_key({f: h for f in RESULT_FILES if (h := hashes.get(f)) is not None}))
    return {}


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


def _changed_behaviour(changed: list[str], mine: dict, heads: dict, model: str) -> Optional[str]:
    """Why a record whose code changed is stale, or None when the probes of its code and of HEAD's, made on
    one CPU model, agree for its model."""
    common = sorted(set(mine) & set(heads))
    if common and all(same_behaviour(mine[cpu], heads[cpu], model) for cpu in common):
        return None
    reason = "changed since: " + ", ".join(changed)
    if mine and heads and not common:
        reason += (f" (its code was probed on {', '.join(sorted(mine))} only, HEAD's on {', '.join(sorted(heads))}:"
                   " probe both on one CPU model, scripts/fingerprint.py --commit)")
    return reason


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
    out, by_commit, head, heads, behaviour = [], {}, None, None, load_behaviour()
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
            if changed:
                heads = heads if heads is not None else probes_for(head, behaviour, legacy=False)
                reason = _changed_behaviour(changed, probes_for(hashes, behaviour), heads,
                                            record["config"].get("model", ""))
        if reason:
            out.append({"run_id": path.stem, "commit": prov.get("git_commit"), "reason": reason})
    return out
