"""The lean local tar reader (dataloader/tar_stream.py) against the standard library's tarfile as reference: the
same regular files, names and bytes in every tar format and with what a tar may hold besides files; a damaged
header or a cut body is a ReadError, which the shards turn into one line naming the shard. And the part files'
cutting and parallel writing (dataloader/parts.py) that the shard and parquet writers share."""
from __future__ import annotations

import io
import tarfile

import pytest

from dataloader.shards import ShardError, iter_samples
from dataloader.tar_stream import is_plain_tar, tar_files


def make_tar(path, fmt: int, mode: str = "w") -> None:
    """Regular files of several sizes (0, around a block, a long name, non-ASCII), a folder, a link."""
    members = {"a.cls": b"1", "a.png": b"x" * 511, "b/c.png": b"y" * 512, "b/c.cls": b"2", "empty.txt": b"",
               "deep/" + "d" * 120 + "/e.jpg": b"z" * 1025, "ünï.cls": b"3"}
    with tarfile.open(path, mode, format=fmt) as tar:
        tar.addfile(_dir("b"))
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(body), 1_700_000_000
            tar.addfile(info, io.BytesIO(body))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tar.addfile(link)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def reference(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r|*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_files_as_tarfile(tmp_path, fmt):
    path = tmp_path / "s.tar"
    make_tar(path, fmt)  # the long name: ustar's prefix field, GNU's long-name member, a pax header
    expected = reference(path)
    assert len(expected) == 7 and is_plain_tar(str(path))
    assert list(tar_files(str(path))) == expected


def test_end_of_file_at_a_member_boundary_ends_the_tar(tmp_path):
    path = tmp_path / "s.tar"
    make_tar(path, tarfile.GNU_FORMAT)
    data = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:3 * 512])  # a.cls: header + body, no end blocks
    assert list(tar_files(str(tmp_path / "cut.tar"))) == reference(tmp_path / "cut.tar") == [("a.cls", b"1")]


@pytest.mark.parametrize("damage", ["checksum", "body", "header"])
def test_damage_is_a_read_error(tmp_path, damage):
    path = tmp_path / "s.tar"
    make_tar(path, tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    if damage == "checksum":
        data[512 + 10] ^= 0xFF  # a name byte of a.cls's header (the folder b's is first)
    # the cuts: inside a.png's body, inside b/c.png's header
    cut = {"checksum": len(data), "body": 512 * 3 + 100, "header": 512 * 4 + 100}[damage]
    (tmp_path / "bad.tar").write_bytes(bytes(data[:cut]))
    with pytest.raises(tarfile.ReadError):
        list(tar_files(str(tmp_path / "bad.tar")))
    with pytest.raises(ShardError, match=r"bad\.tar: not a readable tar file .* truncated or damaged"):
        list(iter_samples(str(tmp_path / "bad.tar")))


def test_a_compressed_shard_is_read_through_webdataset(tmp_path):
    path = tmp_path / "s.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, body in {"k.png": b"\x89PNG", "k.cls": b"4"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    assert not is_plain_tar(str(path))
    assert list(iter_samples(str(path))) == [("k", b"\x89PNG", 4)]


def test_two_files_with_one_suffix_are_one_message(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("k.png", "k.cls", "k.PNG"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(ShardError, match=r"dup\.tar: .*duplicate file name.*every file of a sample needs its own"):
        list(iter_samples(str(path)))


def test_parts_are_cut_by_the_records_alone_and_written_in_order():
    """dataloader/parts.py by hand: limits of 3 records / 10 bytes (+1 a record) and a record over the limit on
    its own; results in the parts' order whatever the job count; a writer's error reaches the caller."""
    from dataloader.parts import cut_parts, write_parts
    records = [(f"k{i}", b"x" * size, 0) for i, size in enumerate([2, 2, 2, 2, 4, 4, 12, 1])]
    parts = list(cut_parts(records, max_bytes=10, max_samples=3, overhead=1))
    assert [[key for key, _, _ in part] for part in parts] == [["k0", "k1", "k2"], ["k3", "k4"], ["k5"], ["k6"], ["k7"]]
    for jobs in (1, 3):
        got = write_parts(iter(parts), lambda i, part: (i, len(part)), jobs)
        assert got == [(0, 3), (1, 2), (2, 1), (3, 1), (4, 1)]

    def failing(i, part):
        if i == 2:
            raise OSError("disk full")
        return i
    with pytest.raises(OSError, match="disk full"):
        write_parts(iter(parts), failing, 2)
