"""``python -m batchcam unpack ARCHIVE`` against good, truncated, corrupt and hostile archives (chapter 7).

Every archive is built here with ``tarfile`` in ``tmp_path``: a good one the way ``gpu-run`` packs
it (``batchcam.gpu._pack``), then one defect at a time. A bad archive exits 2 with one line and
leaves ``results/`` as it was; a good one lands whole. A 300 MB member is only a header (its data
never exists): it must be refused by the header, before anything is read.
"""

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from batchcam import cli, gpu
from batchcam.results import is_complete, write_run

BENCH = "bench/bench-cuda-20261130T013839Z.json"


def _digest(record: dict) -> str:
    """``record_sha256`` as defined for records (written out here, so the test also pins the definition)."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
                          ).hexdigest()


def _seal(record: dict) -> dict:
    return {**record, "record_sha256": _digest(record)}


@pytest.fixture
def work(tmp_path, make_record):
    """Two run records (the second surely with ``record_sha256``) and a benchmark record, as gpu-run leaves
    them: ``[tensors, json, tensors, json, bench]``."""
    runs, bench = tmp_path / "work" / "runs", tmp_path / "work" / "bench"
    paths = []
    for seed in (0, 1):
        record, tensors = make_record(seed=seed)
        path = write_run(record, tensors, runs)
        if seed == 1:
            path.write_text(json.dumps(_seal(json.loads(path.read_text())), indent=1))
        paths += [runs / json.loads(path.read_text())["tensors"]["file"], path]
    bench.mkdir(parents=True)
    (bench / BENCH.split("/")[1]).write_text(json.dumps(_seal({"kind": "bench", "cam": [], "wall_s": 1.5})))
    return paths + [bench / BENCH.split("/")[1]]


@pytest.fixture
def good(work, tmp_path):
    return gpu._pack(work, tmp_path / "out")


def _members(archive) -> dict:
    """``{name: bytes}`` of an archive's files."""
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _build(path, files=None, extra=()):
    """A tar.gz of ``files`` ({name: bytes}) followed by ``extra`` raw ``(TarInfo, data or None)`` entries."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name, kind=tarfile.REGTYPE, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


def _flip(data: bytes) -> bytes:
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def dest(tmp_path):
    """A results folder that already holds one record, so 'nothing changed' is checked on a real folder."""
    root = tmp_path / "results"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "kept.json").write_text("{}")
    return root


@pytest.fixture
def refused(usage_error, dest):
    """``refused(archive, *needles)``: exit 2, one line with every needle, and ``dest`` unchanged."""
    def check(archive, *needles):
        before = {p: p.read_bytes() if p.is_file() else None for p in dest.rglob("*")}
        line, seconds = usage_error(["unpack", str(archive), "--dest", str(dest)], *needles)
        assert {p: p.read_bytes() if p.is_file() else None for p in dest.rglob("*")} == before, line
        return line, seconds
    return check


# --------------------------------------------------------------------------- the good archive


def test_a_good_archive_lands_whole(good, work, dest, capsys):
    assert cli.main(["unpack", str(good), "--dest", str(dest)]) == 0
    assert "added 5 files" in capsys.readouterr().out
    for path in work:
        assert (dest / path.parent.name / path.name).read_bytes() == path.read_bytes()
    for json_path in work[1:4:2]:
        assert is_complete(json_path.stem, dest / "runs")
    assert sorted(p.name for p in dest.iterdir()) == ["bench", "runs"]  # no staging left


def test_folder_entries_are_allowed(work, tmp_path, dest, capsys):
    files = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in work}
    archive = _build(tmp_path / "dirs.tar.gz", files, extra=[(_info("runs", tarfile.DIRTYPE), None),
                                                            (_info("bench", tarfile.DIRTYPE), None)])
    assert cli.main(["unpack", str(archive), "--dest", str(dest)]) == 0
    assert len(_files(dest)) == 6


def test_existing_records_are_replaced_only_with_force(good, dest, refused, capsys):
    assert cli.main(["unpack", str(good), "--dest", str(dest)]) == 0
    refused(good, "exists", "--force")
    assert cli.main(["unpack", str(good), "--dest", str(dest), "--force"]) == 0


# --------------------------------------------------------------------------- hostile archives


def test_a_300_mb_member_is_refused_by_its_header(good, tmp_path, refused):
    """Only the header of the member is written, then the stream ends: nothing may try to read 300 MB."""
    run_id = next(n for n in _members(good) if n.endswith(".json"))[5:-5]
    for name, needle in ((f"runs/{run_id}.tensors.pt", "over the cap"), (f"runs/{run_id}.json", "over the cap"),
                         ("runs/blob.bin", "more than 16777216 bytes")):
        path = tmp_path / "big.tar.gz"
        with gzip.open(path, "wb") as gz:
            gz.write(_info(name, size=300_000_000).tobuf(tarfile.PAX_FORMAT) + b"\0" * 4096)
        _, seconds = refused(path, name, needle)
        assert seconds < 5


def test_a_member_just_over_its_cap_is_refused(good, tmp_path, refused):
    files = _members(good)
    name = next(n for n in files if n.endswith(".json"))
    files[name] = files[name] + b" " * (2 * 2**20)  # valid JSON, over 2 MiB
    refused(_build(tmp_path / "fat.tar.gz", files), name, "over the cap")


@pytest.mark.parametrize("junk", ["notes/evil.sh", "runs/README.txt", "runs/.DS_Store", "bench/faithfulness.json",
                                  "runs/sub/x.json", "results/runs/a-cpu-1234abcd.json", "runs/x-cpu-1234abcd.pt"])
def test_junk_files_are_refused(good, tmp_path, refused, junk):
    files = {**_members(good), junk: b"{}"}
    refused(_build(tmp_path / "junk.tar.gz", files), "unexpected entries", junk)


@pytest.mark.parametrize("file", ["../../etc/hostname", "/etc/hostname", "OTHER", "OTHER.tensors.pt",
                                  "runs/OWN.tensors.pt", "OWN.0123456789ab.tensors.pt", "OWN.json"])
def test_a_tensors_file_not_its_own_is_refused(good, tmp_path, refused, file):
    files = _members(good)
    names = sorted(n for n in files if n.endswith(".json") and n.startswith("runs/"))
    name, other = names[0], names[1]
    record = json.loads(files[name])
    record["tensors"]["file"] = file.replace("OWN", record["run_id"]).replace("OTHER", Path(other).stem)
    if "record_sha256" in record:  # the hash is right: the path is what must be refused
        record = _seal(record)
    files[name] = json.dumps(record).encode()
    refused(_build(tmp_path / "escape.tar.gz", files), "tensors.file", record["tensors"]["file"])


def test_legacy_and_content_named_tensors_files_are_accepted(good, tmp_path, dest, capsys):
    """``<run_id>.tensors.pt`` (the committed records) and ``<run_id>.<sha12>.tensors.pt``."""
    files = _members(good)
    for name in [n for n in files if n.startswith("runs/") and n.endswith(".json")]:
        record = json.loads(files[name])
        for file in (f"{record['run_id']}.tensors.pt", f"{record['run_id']}.{record['tensors']['sha256'][:12]}"
                                                        ".tensors.pt"):
            data = files.pop(f"runs/{record['tensors']['file']}")
            record["tensors"]["file"] = file
            record = _seal(record)
            files[name], files[f"runs/{file}"] = json.dumps(record).encode(), data
            archive = _build(tmp_path / "named.tar.gz", files)
            assert cli.main(["unpack", str(archive), "--dest", str(dest), "--force"]) == 0, capsys.readouterr()
            assert is_complete(record["run_id"], dest / "runs")
            # the replaced record's tensors file went with it
            assert sorted(p.name for p in (dest / "runs").glob(f"{record['run_id']}*")) == sorted(
                [f"{record['run_id']}.json", file])


@pytest.mark.parametrize("kind, what", [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
                                        (tarfile.CHRTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")])
def test_links_and_devices_are_refused(good, tmp_path, refused, kind, what):
    name = next(n for n in _members(good) if n.endswith(".json"))
    member = _info(name, kind, linkname="/etc/passwd")
    refused(_build(tmp_path / "link.tar.gz", extra=[(member, None)]), name, what)
    # also after good members: the whole archive is refused
    refused(_build(tmp_path / "link2.tar.gz", _members(good), extra=[(_info("runs/a-cpu-1234abcd.json", kind,
                                                                          linkname="x"), None)]), what)


@pytest.mark.parametrize("name", ["/tmp/evil-cpu-1234abcd.json", "runs/../../evil-cpu-1234abcd.json",
                                  "../runs/evil-cpu-1234abcd.json", "./runs/evil-cpu-1234abcd.json",
                                  "runs//evil-cpu-1234abcd.json"])
def test_absolute_and_dotted_names_are_refused(good, tmp_path, refused, name):
    refused(_build(tmp_path / "abs.tar.gz", {**_members(good), name: b"{}"}), "unsafe member name")
    assert not (tmp_path / "evil-cpu-1234abcd.json").exists()


def test_a_duplicate_member_is_refused(good, tmp_path, refused):
    files = _members(good)
    name = next(iter(files))
    refused(_build(tmp_path / "dup.tar.gz", files, extra=[(_info(name, size=len(files[name])), files[name])]),
            "appears twice")


def test_a_stream_longer_than_its_cap_is_refused(good, refused, monkeypatch):
    import batchcam.archive

    cap = good.stat().st_size + 100  # the file passes; what it unpacks to does not
    monkeypatch.setattr(batchcam.archive, "MAX_STREAM_BYTES", cap)
    refused(good, f"unpacks to more than {cap} bytes")


# --------------------------------------------------------------------------- truncated, corrupt, tampered


def test_a_truncated_archive_is_refused(good, tmp_path, refused):
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 12, 30):
        (tmp_path / "cut.tar.gz").write_bytes(data[:cut])
        refused(tmp_path / "cut.tar.gz", "truncated or corrupt")


def test_junk_bytes_and_a_flipped_byte_are_refused(good, tmp_path, refused):
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    refused(tmp_path / "junk.tar.gz", "not a readable tar.gz archive")
    (tmp_path / "flip.tar.gz").write_bytes(_flip(good.read_bytes()))
    refused(tmp_path / "flip.tar.gz", "not a readable tar.gz archive")


def test_a_tampered_number_breaks_record_sha256(good, tmp_path, refused):
    files = _members(good)
    name = next(n for n in files if n.endswith(".json") and b"record_sha256" in files[n])
    text = files[name].decode()
    assert '"accuracy": 0.9' in text
    files[name] = text.replace('"accuracy": 0.9', '"accuracy": 0.95', 1).encode()
    refused(_build(tmp_path / "edited.tar.gz", files), name, "record_sha256 does not match")
    bench = {**_members(good), BENCH: _members(good)[BENCH].replace(b"1.5", b"1.25")}
    refused(_build(tmp_path / "bench.tar.gz", bench), BENCH, "record_sha256 does not match")


def test_tensors_must_match_and_come_with_their_record(good, tmp_path, refused):
    files = _members(good)
    tensors = next(n for n in files if n.endswith(".tensors.pt"))
    refused(_build(tmp_path / "t.tar.gz", {**files, tensors: _flip(files[tensors])}), "tensors do not match")
    refused(_build(tmp_path / "orphan.tar.gz", {tensors: files[tensors]}), "without its record")
    run_id = tensors.rsplit("/", 1)[1].split(".")[0]
    other = f"runs/{run_id}.tensors.pt" if f"runs/{run_id}.tensors.pt" not in files else \
        f"runs/{run_id}.0123456789ab.tensors.pt"  # a second tensors file beside the record's own
    refused(_build(tmp_path / "extra.tar.gz", {**files, other: b"x"}), other, "without its record")
    record = f"runs/{run_id}.json"
    refused(_build(tmp_path / "alone.tar.gz", {record: files[record]}), "is not in the archive")
    renamed = {k.replace("-cpu-", "-x-cpu-"): v for k, v in files.items() if k.startswith("runs/")}
    refused(_build(tmp_path / "renamed.tar.gz", renamed), "not the file's name")


def test_one_bad_member_among_good_ones_lands_nothing(good, tmp_path, refused):
    files = _members(good)
    files["runs/zz-cpu-0000abcd.json"] = b'{"schema_version": 2, "accuracy": NaN}'
    refused(_build(tmp_path / "mixed.tar.gz", files), "runs/zz-cpu-0000abcd.json")


def test_a_failed_move_puts_everything_back(good, dest, monkeypatch, capsys):
    import batchcam.archive

    assert cli.main(["unpack", str(good), "--dest", str(dest)]) == 0
    for p in dest.rglob("*.json"):
        if p.name != "kept.json":
            p.write_bytes(p.read_bytes() + b" ")  # edited locally: --force will replace them
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    real, calls = os.replace, []

    def fail_on_the_fifth(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(batchcam.archive.os, "replace", fail_on_the_fifth)
    assert cli.main(["unpack", str(good), "--dest", str(dest), "--force"]) == 2
    err = capsys.readouterr().err
    assert "nothing was changed" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in dest.iterdir()) == ["bench", "runs"]  # no staging folder left


def test_caps_are_module_constants():
    import batchcam.archive as A

    assert (A.MAX_JSON_BYTES, A.MAX_TENSORS_BYTES, A.MAX_TOTAL_BYTES) == (2 * 2**20, 8 * 2**20, 16 * 2**20)
    assert A.MAX_STREAM_BYTES > A.MAX_TOTAL_BYTES
    assert gpu.unpack is A.unpack and gpu.run_unpack is A.run_unpack  # the old import path still works


def test_record_sha256_definition():
    from batchcam.digest import canonical_sha256, record_hash_ok

    record = {"b": [1, 2.5, "é"], "a": {"y": None, "x": True}}
    assert canonical_sha256(record) == hashlib.sha256('{"a":{"x":true,"y":null},"b":[1,2.5,"é"]}'.encode()
                                                      ).hexdigest()
    sealed = {**record, "record_sha256": canonical_sha256(record)}
    assert canonical_sha256(sealed) == canonical_sha256(record) and record_hash_ok(sealed) is True
    assert record_hash_ok(record) is None and record_hash_ok({**sealed, "a": 1}) is False

