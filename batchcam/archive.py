"""Records back from a GPU machine: ``python -m batchcam unpack ARCHIVE`` (chapter 7, "run it yourself").

``gpu-run`` packs the records it made into ``records.tar.gz`` (:mod:`batchcam.gpu`); :func:`unpack`
adds them to ``results/`` only when the whole archive checks out:

* only the members it expects: ``runs/<run_id>.json``, ``runs/<run_id>.tensors.pt`` and
  ``bench/bench-*.json``, as regular files (the folders ``runs`` and ``bench`` aside), each under
  its size cap (``MAX_JSON_BYTES``, ``MAX_TENSORS_BYTES``; ``MAX_TOTAL_BYTES`` for all together).
  The archive is read as one stream whose uncompressed length is capped too, and a member is
  refused by its header, before its data is read: a huge or endless member costs nothing;
* nothing outside ``results/``: no absolute name, no ``..``, no link, and a record's
  ``tensors.file`` names its own tensors file and nothing else: ``<run_id>.<sha12>.tensors.pt``
  (``sha12``: the first 12 hex digits of its ``tensors.sha256``) or, in older records,
  ``<run_id>.tensors.pt``;
* every hash: each tensors file against its record's ``tensors.sha256``, and each record that
  carries ``record_sha256`` against its canonical JSON (:mod:`batchcam.digest`);
* all or nothing: everything is checked before anything is written; the files are then written to
  a temporary folder inside ``results/`` and moved into place (tensors before their record), and a
  failed move puts back what it replaced. An existing file is replaced only with ``force``; the
  tensors file of a replaced record goes with it.

Anything wrong raises :class:`ArchiveError`, a ``ValueError``: the command prints one line and
exits with code 2.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any, Union

from .digest import record_hash_ok
from .results import RecordExistsError, results_root, validate_record
from .staleness import stale_records

__all__ = ["ArchiveError", "MAX_JSON_BYTES", "MAX_TENSORS_BYTES", "MAX_TOTAL_BYTES", "MAX_MEMBERS", "read_members",
           "own_tensors_file", "verify_members", "unpack", "add_unpack_arguments", "run_unpack"]

MAX_JSON_BYTES = 2 * 2**20  # one record (a run's JSON is about 50 KiB)
MAX_TENSORS_BYTES = 8 * 2**20  # one tensors file (about 60 KiB at 28 px, 200 KiB at 56 px)
MAX_TOTAL_BYTES = 16 * 2**20  # all members together, uncompressed
MAX_MEMBERS = 1024
#: The uncompressed stream: the members plus their headers (pax headers for long names) and padding.
MAX_STREAM_BYTES = MAX_TOTAL_BYTES + 4096 * MAX_MEMBERS + 2**16
FOLDERS = ("runs", "bench")
#: A run id as ``TrainConfig.run_id`` writes it: readable parts, the device type, 8 hex digits of hash.
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}-(?:cpu|cuda)-[0-9a-f]{8}"
RUN_MEMBER = re.compile(rf"runs/(?P<run_id>{RUN_ID})(?:(?:\.(?P<sha12>[0-9a-f]{{12}}))?\.tensors\.pt|\.json)")
BENCH_MEMBER = re.compile(r"bench/bench-[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}\.json")
EXPECTED = "runs/<run_id>.json, runs/<run_id>[.<sha12>].tensors.pt and bench/bench-*.json"
PathLike = Union[str, Path]


class ArchiveError(ValueError):
    """A truncated, corrupt or hostile archive, or records that do not verify (chapter 7)."""


class _StreamTooLong(Exception):
    """Raised inside tarfile's reads; not a TarError, so tarfile does not swallow it."""


class _Capped:
    """A read-only stream that raises once more than ``limit`` bytes were read from ``fileobj``."""

    def __init__(self, fileobj: Any, limit: int) -> None:
        self.fileobj, self.limit, self.seen = fileobj, limit, 0

    def read(self, n: int = -1) -> bytes:
        data = self.fileobj.read(self.limit + 1 - self.seen if n is None or n < 0 else n)
        self.seen += len(data)
        if self.seen > self.limit:
            raise _StreamTooLong
        return data


def _kind(member: tarfile.TarInfo) -> str:
    for test, name in ((member.issym, "symbolic link"), (member.islnk, "hard link"), (member.ischr, "device"),
                       (member.isblk, "device"), (member.isfifo, "FIFO"), (member.issparse, "sparse file")):
        if test():
            return name
    return f"tar entry of type {member.type!r}"


def _cap(name: str) -> int:
    return MAX_TENSORS_BYTES if name.endswith(".tensors.pt") else MAX_JSON_BYTES


def _check_header(member: tarfile.TarInfo, total: int) -> str:
    """``"folder"``, ``"record"`` or ``"junk"`` for a member's header; raises on a hostile one."""
    name = member.name
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise ArchiveError(f"unsafe member name {name!r} (absolute, or with '.', '..' or '\\'); refusing the archive")
    if member.isdir():
        return "folder" if name in FOLDERS else "junk"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise ArchiveError(f"member {name!r} is a {_kind(member)}, not a regular file; refusing the archive")
    what = "record" if RUN_MEMBER.fullmatch(name) or BENCH_MEMBER.fullmatch(name) else "junk"
    if what == "record" and member.size > _cap(name):
        raise ArchiveError(f"member {name!r} has {member.size} bytes, over the cap of {_cap(name)} "
                           "for its kind; refusing the archive")
    if total > MAX_TOTAL_BYTES:
        raise ArchiveError(f"the members add up to more than {MAX_TOTAL_BYTES} bytes (at {name!r}); "
                           "refusing the archive")
    return what


def read_members(archive: PathLike) -> dict[str, bytes]:
    """``{name: bytes}`` of every record in ``archive`` (a tar.gz), each header checked before its data is
    read (chapter 7); raises :class:`ArchiveError` on anything unexpected, truncated or over a cap."""
    archive = Path(archive)
    files: dict[str, bytes] = {}
    junk: list[str] = []
    total = 0
    try:
        if archive.stat().st_size > MAX_STREAM_BYTES:
            raise ArchiveError(f"{archive.stat().st_size} bytes, more than an archive of records may "
                               f"have ({MAX_STREAM_BYTES}); refusing it")
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            stream = _Capped(gz, MAX_STREAM_BYTES)
            tar = tarfile.open(fileobj=stream, mode="r|")
            for i, member in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise ArchiveError(f"more than {MAX_MEMBERS} members; refusing the archive")
                total += member.size if member.isreg() else 0
                what = _check_header(member, total)
                if what == "junk":
                    junk.append(member.name)
                elif what == "record":
                    if member.name in files:
                        raise ArchiveError(f"member {member.name!r} appears twice; refusing the archive")
                    data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
                    files[member.name] = data
            while stream.read(2**16):  # to the end: gzip checks its length and CRC there (truncation)
                pass
    except _StreamTooLong:
        raise ArchiveError(f"{archive} unpacks to more than {MAX_STREAM_BYTES} bytes; refusing it") from None
    except ArchiveError as exc:
        raise ArchiveError(f"{archive}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArchiveError(f"{archive} is not a readable tar.gz archive: truncated or corrupt ({why})") from None
    if junk:
        more = f" and {len(junk) - 5} more" if len(junk) > 5 else ""
        raise ArchiveError(f"{archive}: unexpected entries {junk[:5]}{more}; an archive of gpu-run holds only "
                           f"{EXPECTED}")
    return files


def _json(name: str, data: bytes) -> dict:
    def refuse(token: str):
        raise ValueError(f"non-finite number {token}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise ArchiveError(f"{name}: not a valid JSON record ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise ArchiveError(f"{name}: a record must be a JSON object, got {type(obj).__name__}")
    if record_hash_ok(obj) is False:
        raise ArchiveError(f"{name}: record_sha256 does not match the record's content (edited after it was "
                           "written, or damaged); refusing the archive")
    return obj


def own_tensors_file(run_id: str, tensors: Any) -> bool:
    """Whether a record's ``tensors`` entry names its own file: ``<run_id>.<sha12>.tensors.pt`` (the first 12
    hex digits of ``tensors.sha256``) or the older ``<run_id>.tensors.pt``; nothing else (chapter 7)."""
    if not isinstance(tensors, dict) or not isinstance(tensors.get("sha256"), str):
        return False
    return tensors.get("file") in (f"{run_id}.tensors.pt", f"{run_id}.{tensors['sha256'][:12]}.tensors.pt")


def verify_members(files: dict[str, bytes]) -> None:
    """Check the records :func:`read_members` returned (chapter 7): JSON, ``record_sha256``, each run's
    schema and id, its tensors file (its own name, in the archive, matching ``tensors.sha256``) and no
    tensors file without its record; raises :class:`ArchiveError`."""
    runs: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        match = RUN_MEMBER.fullmatch(name)
        if not match:
            _json(name, data)
            continue
        entry = runs.setdefault(match["run_id"], {"tensors": {}})
        if name.endswith(".json"):
            entry["json"] = data
        else:
            entry["tensors"][name.split("/", 1)[1]] = data
    for run_id, entry in sorted(runs.items()):
        name = f"runs/{run_id}.json"
        if "json" not in entry:
            raise ArchiveError(f"runs/{sorted(entry['tensors'])[0]} comes without its record {name}")
        record = _json(name, entry["json"])
        try:
            validate_record(record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArchiveError(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if record["run_id"] != run_id:
            raise ArchiveError(f"{name}: the record's run_id is {record['run_id']!r}, not the file's name")
        tensors = record["tensors"]
        if not own_tensors_file(run_id, tensors):
            file = tensors.get("file") if isinstance(tensors, dict) else None
            raise ArchiveError(f"{name}: tensors.file is {file!r}; a record may name only its own "
                               f"{run_id}[.<sha12>].tensors.pt; refusing the archive")
        if tensors["file"] not in entry["tensors"]:
            raise ArchiveError(f"{name}: its tensors file runs/{tensors['file']} is not in the archive")
        if hashlib.sha256(entry["tensors"][tensors["file"]]).hexdigest() != tensors["sha256"]:
            raise ArchiveError(f"runs/{tensors['file']}: tensors do not match the record (tensors.sha256); "
                               "damaged or edited")
        others = sorted(set(entry["tensors"]) - {tensors["file"]})
        if others:
            raise ArchiveError(f"runs/{others[0]} comes without its record (runs/{run_id}.json names "
                               f"{tensors['file']})")


def _replaced_tensors(dest: Path, names: list[str]) -> list[str]:
    """The tensors files of the records in ``dest`` that ``names`` replace, when named otherwise."""
    out = []
    for name in (n for n in names if n.startswith("runs/") and n.endswith(".json")):
        try:
            old = json.loads((dest / name).read_text())["tensors"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if own_tensors_file(Path(name).stem, old) and f"runs/{old['file']}" not in names:
            out.append(f"runs/{old['file']}")
    return [n for n in out if (dest / n).is_file()]


def _move_in(staging: Path, dest: Path, names: list[str], remove: list[str]) -> None:
    """Move ``staging/name`` to ``dest/name`` for each name, then set aside each of ``remove``; on an
    error put everything back as it was, then raise."""
    moved, replaced, backup = [], [], staging / ".replaced"

    def set_aside(name: str) -> None:
        (backup / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(dest / name, backup / name)
        replaced.append(name)

    try:
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                set_aside(name)
            os.replace(staging / name, target)
            moved.append(name)
        for name in remove:
            set_aside(name)
    except OSError:
        for name in reversed(moved):
            (dest / name).unlink(missing_ok=True)
        for name in replaced:
            os.replace(backup / name, dest / name)
        raise


def unpack(archive: PathLike, dest: PathLike, force: bool = False) -> list[str]:
    """Verify ``archive`` (a ``records.tar.gz`` of ``gpu-run``) and add its records to ``dest``
    (``results/``); chapter 7. All or nothing: raises :class:`ArchiveError` (nothing written) on a bad
    archive, :class:`~batchcam.results.RecordExistsError` when a file exists and ``force`` is false.
    Returns the member names added, tensors before their records."""
    archive, dest = Path(archive), Path(dest)
    files = read_members(archive)
    try:
        verify_members(files)
    except ArchiveError as exc:
        raise ArchiveError(f"{archive}: {exc}") from None
    names = sorted(files, key=lambda n: (n.endswith(".json"), n))
    existing = [n for n in names if (dest / n).exists() or (dest / n).is_symlink()]
    if existing and not force:
        raise RecordExistsError(f"{dest / existing[0]} exists ({len(existing)} file(s) would be replaced); "
                                "pass --force to replace them")
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        for name in names:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(files[name])
        _move_in(staging, dest, names, _replaced_tensors(dest, names))
    except OSError as exc:
        raise ArchiveError(f"could not add the records to {dest} (nothing was changed): {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def add_unpack_arguments(p) -> None:
    """The ``unpack`` flags on the argparse parser ``p`` (chapter 7)."""
    p.add_argument("archive", help="records.tar.gz from gpu-run")
    p.add_argument("--dest", default=None, help="results folder (default: the committed results/)")
    p.add_argument("--force", action="store_true", help="replace existing files")


def run_unpack(args) -> int:
    """``python -m batchcam unpack ARCHIVE``: :func:`unpack` into ``results/`` and print the count (chapter 7)."""
    dest = Path(args.dest) if args.dest else results_root("runs").parent
    if not Path(args.archive).is_file():
        raise ValueError(f"{args.archive}: no such file")
    added = unpack(Path(args.archive), dest, args.force)
    print(f"added {len(added)} files to {dest}")
    stale = {s["run_id"]: s["reason"] for s in stale_records(dest / "runs")}
    for name in (n for n in added if n.startswith("runs/") and n.endswith(".json")):
        if Path(name).stem in stale:  # the record stays; list-runs --stale and chapter 7 flag it
            print(f"warning: {name}: {stale[Path(name).stem]} (not HEAD's code)")
    return 0
