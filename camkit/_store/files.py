"""Writing a store's files so that a crash leaves either the whole file or none of it, and
checking them when read: CRC-32 checksums, sizes, and errors that name the file.

A shard's files carry a CRC-32 (the checksum of zip, gzip and PNG): it finds
accidental damage (truncation, flipped bits, another file in a file's place)
with certainty for bursts up to 32 bits and with probability 1 - 2^-32
otherwise, and it runs at several gigabytes per second, so that checking every
file costs little (see ``benchmarks/throughput.py``). It is not a defence
against deliberate tampering; nothing in a folder anyone can write is.

Every file is written under a temporary name, flushed to disk (``fsync``), and
renamed; the folder is then flushed too (:func:`sync_folder`), so that after a
power loss the rename is on disk as well, not only the file's bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camkit.errors import CamkitStorageError, CamkitTypeError, CamkitValueError

CHUNK = 1 << 20
"""Bytes read at a time when a file's checksum is computed."""


def output_folder(out: object, name: str = "out") -> Path:
    """``out`` as a folder to write into: a non-empty str or path that is not a file
    (created later if it does not exist). An empty string is refused: it would be the
    current folder, and the files would land among the user's own."""
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise CamkitTypeError(f"{name}: got {out!r}; allowed: a folder's path (a str or Path)")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CamkitValueError(
            f"{name}: {str(folder)!r} is a file; give a folder (created if it does not exist)"
        )
    return folder


class HashingWriter:
    """A binary file that computes the CRC-32 and the size of what is written through it."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._crc = 0
        self.size = 0

    def write(self, data: Any) -> int:
        """Write ``data`` (bytes or a buffer) and fold it into the checksum."""
        view = memoryview(data).cast("B")
        self._crc = zlib.crc32(view, self._crc)
        self.size += len(view)
        return int(self._handle.write(view))

    @property
    def checksum(self) -> str:
        """The CRC-32 of everything written so far, as 8 hex digits."""
        return f"{self._crc:08x}"


def checksum_of(path: Path) -> str:
    """The CRC-32 of the file at ``path``, as 8 hex digits (``OSError`` if it cannot be read)."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at ``path`` (``OSError`` if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, folder: Path, write: Callable[[HashingWriter], Any]) -> str:
    """Write ``path`` through ``write(handle)``: to ``path.tmp``, flushed to disk, then
    renamed to ``path``. Returns the CRC-32 of the bytes written. The caller flushes the
    folder (:func:`sync_folder`) once its renames are done."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            hashing = HashingWriter(handle)
            write(hashing)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise storage_error(error, path, folder) from error
    return hashing.checksum


def sync_folder(folder: Path) -> None:
    """Flush the folder's entries (the renames in it) to disk; a no-op where the operating
    system cannot open a folder (Windows, which writes entries through)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):  # a file system without it
            raise storage_error(error, folder, folder) from error
    finally:
        os.close(descriptor)


def storage_error(error: OSError, path: Path, folder: Path) -> CamkitStorageError:
    """camkit's error for a failed write of ``path``, saying what failed and what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "the folder is not writable"
    else:
        what = f"{type(error).__name__}: {error}"
    return CamkitStorageError(
        f"out: cannot write {str(path)!r} ({what}); the shards finished so far are readable "
        f"with camkit.datasets.MapStore({str(folder)!r}), and a rerun with the same settings "
        f"resumes after them"
    )
