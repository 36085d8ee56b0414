"""Atomic file writes: the one way this project writes a file a user keeps.

Every writer goes through a hidden temporary file in the target's own folder (``.<name>.tmp-<pid>``),
which is flushed and fsynced, then renamed over the target with ``os.replace`` and the folder synced. A
kill, a full disk or an exception at any moment leaves either the old file or the new one, never half
of one, and the temporary file is removed on every way out (KeyboardInterrupt included). A process that
is SIGKILLed leaves its temporary file behind; :func:`remove_stale_temporaries` cleans those up by the
same name pattern. Scratch folders (:func:`temp_dir`) are named the same way, so it finds them too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

logger = logging.getLogger(__name__)

TEMP_PATTERN = ".*.tmp-*"  # what temp_path names look like, for a glob that cleans up after killed writers
_OWNER = re.compile(r"\.tmp-(\d+)")  # the pid in a temp_path / temp_dir name


def temp_path(path: str | Path) -> Path:
    """The temporary file a write of ``path`` goes through first (hidden, in the same folder, per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def temp_dir(path: str | Path) -> Iterator[Path]:
    """A scratch folder for the work that writes ``path``, made in ``path``'s own folder and named like its
    temporary file (``.<name>.tmp-<pid>-<random>``, so that :func:`remove_stale_temporaries` finds it
    when a kill leaves it behind); removed with its contents when the block ends in any way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{temp_path(path).name}-", dir=path.parent) as tmp:
        yield Path(tmp)


def temp_owner(path: str | Path) -> int | None:
    """The pid of the process that made the temporary file or folder ``path`` (None for another name)."""
    pids = _OWNER.findall(Path(path).name)
    return int(pids[-1]) if pids else None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path, dead_owners_only: bool = False) -> list[Path]:
    """Delete the temporary files and scratch folders that killed writers left in ``folder`` (named as
    :func:`temp_path` and :func:`temp_dir` name them; each can be a whole checkpoint or export).

    Without ``dead_owners_only``, every one goes: call it so only while holding the folder's lock (no
    other writer is running). With it, only those whose pid (in the name) is no longer a live process, and
    never this process's own: for folders that several processes may write at once (exports)."""
    removed = []
    for tmp in sorted(Path(folder).glob(TEMP_PATTERN)):
        owner = temp_owner(tmp)
        if dead_owners_only and (owner is None or owner == os.getpid() or process_alive(owner)):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
        else:
            continue
        removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted save in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed


def fsync_dir(folder: str | Path) -> None:
    """Persist a folder's entries (a rename is durable only once its folder is synced)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | Path, previous: str | Path | None = None) -> Iterator[Path]:
    """Yield the temporary path for a writer that wants a file name (``torch.jit.save``, ``savefig``,
    ``os.link``); when the block ends normally the file there is fsynced and renamed to ``path``.

    Writers that pick a format from the name's suffix must be told the format: the temporary name ends in
    ``.tmp-<pid>``. With ``previous``, an existing ``path`` is first kept there (a backup of the file being
    replaced; see :func:`_keep_copy`). On any exception, KeyboardInterrupt included, the temporary file is
    removed and ``path`` is left as it was. ``path`` exists at every moment of the write once it existed:
    a signal that interrupts between the backup and the rename leaves the old file at both names.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        if previous is not None and path.exists():
            _keep_copy(path, Path(previous))
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    fsync_dir(path.parent)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Make ``target`` (a new name) the file at ``source`` without writing its bytes again: a hard link, or
    a copy where the file system has none (some network or FAT file systems). Safe for files that are only
    ever replaced (a new file renamed over the name), never written in place, as every file written here."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _keep_copy(path: Path, previous: Path) -> None:
    """Make ``previous`` hold ``path``'s file, atomically, while ``path`` stays in place. Moving ``path`` to
    ``previous`` instead would leave no file at ``path`` until the new one is renamed there: a SIGTERM
    between the two renames (a run stopping mid-save) lost ``last.pth``."""
    with atomic_path(previous) as tmp:
        link_or_copy(path, tmp)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, previous: str | Path | None = None,
                 **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` made atomic: yield the open temporary file; on a normal exit it is flushed,
    fsynced and renamed to ``path`` (see :func:`atomic_path` for ``previous`` and the failure cases).
    ``mode`` is ``"w"`` or ``"wb"``; ``open_kwargs`` (``newline``, ``encoding``) go to ``open``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, previous=previous) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2, **dumps_kwargs: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(data, indent=indent, **dumps_kwargs))


def save_image_atomic(image: Any, path: str | Path, **save_kwargs: Any) -> Path:
    """``image.save(path)`` for a PIL image, atomically; the format comes from ``path``'s suffix (PNG without
    one) since the temporary name has none. Returns ``path``."""
    path = Path(path)
    from PIL import Image
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)
    return path


def replace_folder(new: str | Path, target: str | Path) -> Path:
    """Put the complete folder ``new`` (made beside ``target``, e.g. in a :func:`temp_dir`) at ``target`` by
    renames: an existing ``target`` is first renamed to a hidden temporary name, then removed, so the name
    never holds half of either folder (between the two renames it holds neither). Returns ``target``."""
    new, target = Path(new), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{temp_path(target).name}-old")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
    return target


def move_into_place(pairs: Sequence[tuple[str | Path, str | Path]]) -> None:
    """Rename each complete ``(source, target)`` file in the order given (each rename atomic on its own) and
    sync the targets' folders: for a set of files whose last one vouches for the others (a sidecar), so that a
    kill between two renames leaves no voucher beside a half-replaced set."""
    for source, target in pairs:
        os.replace(source, target)
    for folder in {Path(target).parent for _, target in pairs}:
        fsync_dir(folder)


def file_sha256(path: str | Path) -> str:
    """The sha256 of the file at ``path`` (hex), read in 1 MiB chunks: what a sidecar records so that a reader can
    check that the file beside it is the one written with it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()
