"""A lean reader of the regular files of a local, uncompressed tar file, front to back, for the shards' hot path
(:func:`dataloader.shards.iter_samples`).

Why not ``tarfile`` (which webdataset's tar iterator wraps): its streaming mode builds a ``TarInfo`` per member,
parses every header field and reads through three layers of file objects; on 45 KB JPEGs that cost ~125 us of
CPU a sample (image + label), six times what opening and reading the image as a file costs (~21 us). Here a
member is one 512-byte header (name, size, type and checksum are all that is parsed) and one read of its body
plus the padding before the next header, out of a 1 MiB buffer: ~24 us a sample. It understands what tar
writers put in a shard (ustar and GNU headers, the ustar name prefix, GNU long names, pax ``path``/``size``
records) and skips what is not a regular file, as webdataset does. Anything damaged (a bad checksum, a header
or body cut short) is a ``tarfile.ReadError``, the error ``tarfile`` itself would raise.
"""
from __future__ import annotations

from tarfile import ReadError
from typing import IO, Iterator

BLOCK = 512
BUFFER = 1 << 20
REGULAR = (b"0", b"\0", b"7")
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: left to tarfile, which decompresses them


def is_plain_tar(path: str) -> bool:
    """Whether ``path`` starts like an uncompressed tar (not gzip, bzip2 or xz)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return not head.startswith(COMPRESSED)


def _octal(field: bytes, what: str) -> int:
    """A numeric header field: octal digits (NUL/space padded) or GNU's base-256 (first byte 0x80)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise ReadError(f"invalid {what} field in a tar header ({digits!r})") from None


def _checked(header: bytes) -> None:
    """Raise ReadError unless the header's checksum matches (unsigned, or the signed sum old writers used)."""
    stored = _octal(header[148:156], "checksum")
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored != unsigned:
        signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32
        if stored != signed:
            raise ReadError("bad checksum in a tar header")


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")


def _pax(body: bytes) -> dict[str, str]:
    """The records ``LEN key=value\\n`` of a pax extended header."""
    records, at = {}, 0
    while at < len(body) and body[at:at + 1] != b"\0":
        space = body.index(b" ", at)
        length = int(body[at:space])
        key, _, value = body[space + 1:at + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def _read(f: IO[bytes], size: int) -> bytes:
    data = f.read(size)
    if len(data) < size:
        raise ReadError(f"unexpected end of data ({len(data)} of {size} bytes)")
    return data


def tar_files(path: str) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of every regular file of the local tar ``path``, in file order. The end is two
    zero blocks or the end of the file at a member boundary (as ``tarfile`` reads it)."""
    with open(path, "rb", buffering=BUFFER) as f:
        skip, long_name, pax = 0, None, {}
        while True:
            block = f.read(skip + BLOCK)
            if len(block) < skip + BLOCK:
                if len(block) <= skip:
                    return
                raise ReadError("unexpected end of data in a tar header")
            header = block[skip:]
            if header.count(0) == BLOCK:
                return
            _checked(header)
            kind, size = header[156:157], _octal(header[124:136], "size")
            if "size" in pax:
                size = int(pax["size"])
            body = _read(f, size) if kind in REGULAR or kind in (b"L", b"x") else None
            skip = -size % BLOCK
            if body is None and size:
                skip += size
            if kind in REGULAR:
                name = pax.get("path") or long_name or _name(header)
                long_name, pax = None, {}
                yield name, body
            elif kind == b"L":
                long_name = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax(body)
            else:  # a folder, a link, a global pax header...: no file of a sample
                long_name, pax = None, {}
